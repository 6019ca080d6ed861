"""Procedural text-to-image scenes: coloured shapes on a 3x3 grid, captioned from a small grammar.

The data set flux-mini is trained on, and the ground truth a prompt-adherence metric compares against. Every
scene is a pure function of a numpy ``Generator``; a batch is a pure function of its seed.

Grammar (every word is in ``TINY_VOCAB``)::

    caption := part ("and" part)* "on a" background "background"
    part    := "a" size colour shape ("at the" | "in the") position
    e.g.  "a large red circle at the top left and a small blue square at the bottom right on a striped background"

Scenes hold 1..4 non-overlapping shapes (circle, square, triangle) at distinct grid cells. Shapes are drawn at
diameters of 6 / 10 / 16 px (small / medium / large) at 32x32, scaled with the image size; large shapes are
pulled inwards to stay inside the image. Backgrounds are flat (black, gray, white; never the colour of a shape
on it), a vertical gray gradient, or gray horizontal stripes.

Held-out split: a (colour, shape, position) triple is *held out* when ``crc32("colour shape position") % 8 == 0``
(27 of the 216 triples; see :data:`HELDOUT_TRIPLES`). ``split="train"`` never produces a held-out triple;
``split="heldout"`` scenes contain at least one. Every word and every (colour, shape) pair is still seen in
training, so the held-out split measures compositional generalisation, not unknown words.

Complexity buckets: ``simple`` = one shape on a flat background; ``complex`` = 3+ shapes, or 2+ shapes on a
textured (gradient/striped) background; ``medium`` = the rest.

Detail grades (issue 19: prompts whose detail differs the way real prompts do). :attr:`Scene.grade` reads any
scene's detail: ``4`` = 6-8 shapes or a *fine* texture (``pinstriped``: 1 px stripes at 32x32; ``checkered``: 2 px
checks); ``3`` = 4-5 shapes, or 2+ shapes on stripes; ``1`` = one medium or large shape on a flat background;
``2`` = the rest. :func:`sample_graded` draws a scene of one grade from the *graded grammar*: up to
:data:`GRADED_MAX_SHAPES` shapes (all small from 6 on) and the backgrounds :data:`GRADED_BACKGROUNDS`. The graded
grammar's words are :data:`GRADED_VOCAB` (``TINY_VOCAB`` + the two fine textures, appended so old word ids keep
their rows); its longest caption (8 shapes, 4 of them at corners) has 71 words, so a text encoder that reads it
needs ``max_length`` >= :data:`GRADED_MAX_WORDS`. Nothing here changes today's grammar: without ``grade=`` every
scene, caption and seed-determined batch is what it always was. :func:`graded_scenes` is the graded held-out /
calibration split: grades in turn, deterministic from a seed, optionally restricted to a model's words and caption
length.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from ..models.vocab import FINE_TEXTURE_WORDS, GRADED_MAX_WORDS, GRADED_VOCAB, TINY_VOCAB  # noqa: F401 (re-exported)

SHAPES = ("circle", "square", "triangle")
COLOURS = {  # sRGB in [0, 1]
    "red": (0.90, 0.10, 0.10), "green": (0.10, 0.75, 0.20), "blue": (0.15, 0.30, 0.95),
    "yellow": (0.95, 0.90, 0.10), "purple": (0.60, 0.20, 0.80), "orange": (1.00, 0.55, 0.05),
    "white": (0.97, 0.97, 0.97), "black": (0.03, 0.03, 0.03),
}
SIZES = {"small": 6 / 32, "medium": 10 / 32, "large": 16 / 32}  # diameter as a fraction of the image side
POSITIONS = {  # name -> (row, col) on the 3x3 grid
    "top left": (0, 0), "top": (0, 1), "top right": (0, 2),
    "left": (1, 0), "center": (1, 1), "right": (1, 2),
    "bottom left": (2, 0), "bottom": (2, 1), "bottom right": (2, 2),
}
FLAT_BACKGROUNDS = {"black": (0.0, 0.0, 0.0), "gray": (0.5, 0.5, 0.5), "white": (1.0, 1.0, 1.0)}
TEXTURES = ("gradient", "striped")
BACKGROUNDS = tuple(FLAT_BACKGROUNDS) + TEXTURES
FINE_TEXTURES = FINE_TEXTURE_WORDS  # graded grammar only (see the module docstring)
GRADED_BACKGROUNDS = BACKGROUNDS + FINE_TEXTURES
GRADES = (1, 2, 3, 4)
GRADED_MAX_SHAPES = 8
COMPLEXITIES = ("simple", "medium", "complex")
MAX_SHAPES = 4
SHAPE_COUNT_P = (0.4, 0.3, 0.2, 0.1)  # P(n shapes = 1, 2, 3, 4) for an unconstrained scene
BACKGROUND_P = (0.2, 0.2, 0.2, 0.2, 0.2)  # over BACKGROUNDS
HELDOUT_MOD = 8


def is_heldout(colour: str, shape: str, position: str) -> bool:
    """The held-out rule: a stable hash of the (colour, shape, position) triple."""
    return zlib.crc32(f"{colour} {shape} {position}".encode()) % HELDOUT_MOD == 0


HELDOUT_TRIPLES = frozenset((c, s, p) for c in COLOURS for s in SHAPES for p in POSITIONS if is_heldout(c, s, p))
_TRAIN_TRIPLES = [(c, s, p) for c in COLOURS for s in SHAPES for p in POSITIONS if (c, s, p) not in HELDOUT_TRIPLES]
_HELDOUT_LIST = sorted(HELDOUT_TRIPLES)
_ALL_TRIPLES = [(c, s, p) for c in COLOURS for s in SHAPES for p in POSITIONS]


@dataclass(frozen=True)
class ShapeSpec:
    shape: str
    colour: str
    size: str
    position: str

    def geometry(self, side: int = 32) -> tuple[float, float, float]:
        """(cy, cx, radius) in pixels (pixel centres at i + 0.5), as rendered at ``side`` x ``side``."""
        r = SIZES[self.size] * side / 2
        row, col = POSITIONS[self.position]
        cy, cx = ((row + 0.5) * side / 3, (col + 0.5) * side / 3)
        return float(np.clip(cy, r, side - r)), float(np.clip(cx, r, side - r)), r

    def phrase(self) -> str:
        where = "in the center" if self.position == "center" else f"at the {self.position}"
        return f"a {self.size} {self.colour} {self.shape} {where}"


@dataclass(frozen=True)
class Scene:
    shapes: tuple[ShapeSpec, ...]
    background: str  # one of BACKGROUNDS: a flat colour name, "gradient" or "striped" (graded: GRADED_BACKGROUNDS)

    @property
    def background_kind(self) -> str:
        return self.background if self.background in TEXTURES + FINE_TEXTURES else "flat"

    @property
    def caption(self) -> str:
        return " and ".join(s.phrase() for s in self.shapes) + f" on a {self.background} background"

    @property
    def attributes(self) -> list[tuple[str, str, str, str]]:
        """[(shape, colour, size, position), ...] in caption order."""
        return [(s.shape, s.colour, s.size, s.position) for s in self.shapes]

    @property
    def complexity(self) -> str:
        n, textured = len(self.shapes), self.background in TEXTURES
        if n == 1 and not textured:
            return "simple"
        if n >= 3 or (n >= 2 and textured):
            return "complex"
        return "medium"

    @property
    def grade(self) -> int:
        """Detail grade 1..4 (module docstring): 4 = 6+ shapes or a fine texture; 3 = 4-5 shapes, or 2+ on stripes;
        1 = at most one shape, not small, on a flat background; 2 = the rest."""
        n, bg = len(self.shapes), self.background
        if n >= 6 or bg in FINE_TEXTURES:
            return 4
        if n >= 4 or (n >= 2 and bg == "striped"):
            return 3
        if n <= 1 and bg in FLAT_BACKGROUNDS and all(s.size != "small" for s in self.shapes):
            return 1
        return 2

    @property
    def split(self) -> str:
        held = any((s.colour, s.shape, s.position) in HELDOUT_TRIPLES for s in self.shapes)
        return "heldout" if held else "train"

    def render(self, side: int = 32) -> np.ndarray:
        return render(self, side)


# ---- sampling ----------------------------------------------------------------------------------------------
def _overlaps(a: ShapeSpec, b: ShapeSpec, side: int = 32) -> bool:
    ay, ax, ar = a.geometry(side)
    by, bx, br = b.geometry(side)
    return abs(ay - by) < ar + br and abs(ax - bx) < ar + br


def _sample_once(rng: np.random.Generator, split: str, n: int, background: str, sizes=None) -> Scene:
    forced = int(rng.integers(n)) if split == "heldout" else -1
    shapes: list[ShapeSpec] = []
    for i in range(n):
        pool = _TRAIN_TRIPLES if split == "train" else _HELDOUT_LIST if i == forced else _ALL_TRIPLES
        used = {s.position for s in shapes}
        pool = [t for t in pool if t[2] not in used and t[0] != background]
        free = sorted({t[2] for t in pool}, key=list(POSITIONS).index)
        for j in rng.permutation(len(free)):  # uniform over free cells, then over triples at that cell
            here = [t for t in pool if t[2] == free[j]]
            colour, shape, pos = here[int(rng.integers(len(here)))]
            names = sizes or list(SIZES)
            spec = _fit(ShapeSpec(shape, colour, names[int(rng.integers(len(names)))], pos), shapes)
            if spec is not None:
                shapes.append(spec)
                break
        else:
            break
    return Scene(tuple(shapes), background)


def _fit(spec: ShapeSpec, placed: list[ShapeSpec]) -> ShapeSpec | None:
    """``spec``, shrunk until it clears the shapes already placed; None if even small does not fit."""
    names = list(SIZES)
    for size in names[names.index(spec.size)::-1]:
        cand = ShapeSpec(spec.shape, spec.colour, size, spec.position)
        if not any(_overlaps(cand, o) for o in placed):
            return cand
    return None


def sample_scene(rng: np.random.Generator, split: str = "train", complexity: str | None = None,
                 n_shapes: int | None = None, background: str | None = None, grade: int | None = None) -> Scene:
    """One random scene of ``split``; optionally constrained to a complexity bucket, shape count or background, or
    drawn from the graded grammar at detail ``grade`` (:func:`sample_graded`; not combined with the others)."""
    if grade is not None:
        if complexity is not None or n_shapes is not None or background is not None:
            raise ValueError("grade= is not combined with complexity=, n_shapes= or background=")
        return sample_graded(rng, grade, split)
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    if complexity is not None and complexity not in COMPLEXITIES:
        raise ValueError(f"complexity must be one of {COMPLEXITIES}, got {complexity!r}")
    for _ in range(1000):
        n = n_shapes or int(rng.choice(np.arange(1, MAX_SHAPES + 1), p=SHAPE_COUNT_P))
        bg = background or BACKGROUNDS[int(rng.choice(len(BACKGROUNDS), p=BACKGROUND_P))]
        scene = _sample_once(rng, split, n, bg)
        if (complexity is None or scene.complexity == complexity) and len(scene.shapes) == n:
            return scene
    raise ValueError(f"no {split} scene with complexity={complexity}, n_shapes={n_shapes}, background={background}")


# ---- detail grades -----------------------------------------------------------------------------------------
GRADED_EVAL_SEED = 2026  # `evaluate --graded` draws graded_scenes(n, "heldout", this seed) (evaluate's prompt_seed)
GRADED_CALIBRATION_SEED = 7  # calibration/prompts-graded.txt: graded_calibration_scenes()


def _graded_draw(rng: np.random.Generator, grade: int) -> tuple[int, str, list | None]:
    """(shape count, background, sizes to draw from or None for all) of one draw at ``grade``."""
    flat = tuple(FLAT_BACKGROUNDS)
    if grade == 1:  # one medium or large shape on a flat background
        return 1, flat[int(rng.integers(len(flat)))], ["medium", "large"]
    if grade == 2:  # 2-3 shapes on a flat or smooth background
        bgs = flat + ("gradient",)
        return int(rng.integers(2, 4)), bgs[int(rng.integers(len(bgs)))], None
    if grade == 3:  # 2-3 shapes on stripes, or 4-5 shapes on any of today's backgrounds
        n = int(rng.integers(2, 6))
        return n, "striped" if n < 4 else BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))], None
    if rng.random() < 0.5:  # grade 4: 6-8 small shapes on any background ...
        bg = GRADED_BACKGROUNDS[int(rng.integers(len(GRADED_BACKGROUNDS)))]
        return int(rng.integers(6, GRADED_MAX_SHAPES + 1)), bg, ["small"]
    return int(rng.integers(1, 6)), FINE_TEXTURES[int(rng.integers(len(FINE_TEXTURES)))], None  # ... or fine texture


def sample_graded(rng: np.random.Generator, grade: int, split: str = "train", words=None,
                  max_words: int | None = None) -> Scene:
    """One scene of detail ``grade`` (1..4) from the graded grammar. ``words`` / ``max_words``: only captions a
    text encoder with that vocabulary / ``max_length`` reads (ValueError when the grade has none, e.g. grade 4 for
    40 words and today's vocabulary: 6 shapes take 51 words)."""
    if grade not in GRADES:
        raise ValueError(f"grade must be one of {GRADES}, got {grade!r}")
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    words = None if words is None else set(words)
    for _ in range(400):
        n, bg, sizes = _graded_draw(rng, grade)
        if words is not None and bg not in words:
            continue
        scene = _sample_once(rng, split, n, bg, sizes)
        if len(scene.shapes) != n or scene.grade != grade:
            continue
        cap = scene.caption.split()
        if (words is None or set(cap) <= words) and (max_words is None or len(cap) <= max_words):
            return scene
    need = []
    if words is not None and not caption_words(True) <= words:
        need.append(f"words {', '.join(sorted(caption_words(True) - words))}")
    if max_words is not None:
        need.append(f"captions of up to {max_caption_words(grade)} words (the encoder reads {max_words})")
    raise ValueError(f"no {split} scene of detail grade {grade}" + (f" without {' and '.join(need)}" if need else ""))


def max_caption_words(grade: int | None = None) -> int:
    """Words of the longest caption of ``grade`` (None: of today's grammar): the corners' phrases are the longest
    ("a small red circle at the top left", 8 words; every other cell 7), joined by "and", + "on a X background"."""
    n = {None: MAX_SHAPES, 1: 1, 2: 3, 3: 5, 4: GRADED_MAX_SHAPES}[grade]
    corners = min(n, 4)
    return 8 * corners + 7 * (n - corners) + (n - 1) + 4


def graded_scenes(n: int, split: str = "heldout", seed: int = GRADED_EVAL_SEED, grades=GRADES, words=None,
                  max_words: int | None = None, exclude=()) -> list[Scene]:
    """``n`` scenes of ``split``, detail grades in turn (1, 2, 3, 4, 1, ...), deterministic from ``seed``;
    ``words``/``max_words`` restrict them to what a text encoder reads, captions in ``exclude`` are drawn again."""
    rng = np.random.default_rng(seed)
    grades, exclude = tuple(grades), set(exclude)
    out = []
    for i in range(n):
        for _ in range(1000):
            sc = sample_graded(rng, grades[i % len(grades)], split, words, max_words)
            if sc.caption not in exclude:
                break
        else:
            raise ValueError(f"no {split} scene of grade {grades[i % len(grades)]} outside the excluded captions")
        out.append(sc)
    return out


def graded_calibration_scenes(n: int = 32, eval_n: int = 256) -> list[Scene]:
    """The graded calibration split (calibration/prompts-graded.txt): ``n`` held-out-split scenes, grades in turn,
    seed :data:`GRADED_CALIBRATION_SEED`, none of them among the first ``eval_n`` captions of ``evaluate --graded``."""
    held = {s.caption for s in graded_scenes(eval_n, "heldout", GRADED_EVAL_SEED)}
    return graded_scenes(n, "heldout", GRADED_CALIBRATION_SEED, exclude=held)


# ---- rendering ---------------------------------------------------------------------------------------------
def _coverage(spec: ShapeSpec, side: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] from an (approximate) signed distance, 1 px ramp."""
    cy, cx, r = spec.geometry(side)
    dy, dx = yy - cy, xx - cx
    if spec.shape == "circle":
        sdf = np.hypot(dy, dx) - r
    elif spec.shape == "square":
        h = r * 0.85  # a square of the same diameter looks bigger than a circle; match areas roughly
        sdf = np.maximum(np.abs(dy), np.abs(dx)) - h
    else:  # upward triangle inscribed in the (2r x 2r) box: apex at the top, base at the bottom
        base = dy - r  # below the base is outside
        k = 2.0  # side slope: half-width grows from 0 at the apex (dy=-r) to r at the base
        side_d = (k * np.abs(dx) - (dy + r)) / np.sqrt(1 + k * k)
        sdf = np.maximum(base, side_d)
    return np.clip(0.5 - sdf, 0.0, 1.0)


def _background(name: str, side: int, yy: np.ndarray, xx: np.ndarray | None = None) -> np.ndarray:
    """(3, side, side) float32 in [0, 1]; ``yy``/``xx`` pixel-centre grids (``xx`` defaults to ``yy`` transposed)."""
    xx = yy.T if xx is None else xx
    if name in FLAT_BACKGROUNDS:
        return np.broadcast_to(np.asarray(FLAT_BACKGROUNDS[name], np.float32)[:, None, None], (3, side, side))
    if name == "gradient":  # dark at the top, light at the bottom
        g = 0.1 + 0.65 * (yy / (side - 1))
    elif name == "pinstriped":  # horizontal stripes, period side/16 (1 px stripes at 32)
        period = max(2, side // 16)
        g = np.where((np.floor(yy) % period) < period / 2, 0.3, 0.6)
    elif name == "checkered":  # checks of side/16 (2 px at 32)
        c = max(1, side // 16)
        g = np.where((np.floor(yy / c) + np.floor(xx / c)) % 2 == 0, 0.3, 0.6)
    else:  # horizontal stripes, period side/8 (4 px at 32)
        period = max(4, side // 8)
        g = np.where((np.floor(yy) % period) < period / 2, 0.3, 0.6)
    return np.broadcast_to(g.astype(np.float32)[None], (3, side, side))


def render(scene: Scene, side: int = 32) -> np.ndarray:
    """RGB float32 in [-1, 1], shape (3, side, side)."""
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) + 0.5
    img = _background(scene.background, side, yy, xx).copy()
    for spec in scene.shapes:
        a = _coverage(spec, side, yy, xx)[None]
        img = img * (1 - a) + np.asarray(COLOURS[spec.colour], np.float32)[:, None, None] * a
    return (img * 2 - 1).astype(np.float32)


def make_batch(seed_or_rng, n: int, split: str = "train", side: int = 32, **constraints):
    """(images float32 (n, 3, side, side) in [-1, 1], captions, scenes) — deterministic from the seed."""
    rng = seed_or_rng if isinstance(seed_or_rng, np.random.Generator) else np.random.default_rng(seed_or_rng)
    scenes = [sample_scene(rng, split, **constraints) for _ in range(n)]
    images = np.stack([render(s, side) for s in scenes]) if scenes else np.zeros((0, 3, side, side), np.float32)
    return images, [s.caption for s in scenes], scenes


def caption_words(graded: bool = False) -> set[str]:
    """Every word the grammar (``graded``: the graded grammar) can produce (all in TINY_VOCAB / GRADED_VOCAB)."""
    words = {"a", "and", "at", "in", "the", "on", "background"}
    words |= set(SIZES) | set(COLOURS) | set(SHAPES) | set(GRADED_BACKGROUNDS if graded else BACKGROUNDS)
    for p in POSITIONS:
        words |= set(p.split())
    return words


_missing = (caption_words() - set(TINY_VOCAB)) | (caption_words(True) - set(GRADED_VOCAB))
assert not _missing, f"scene grammar uses words missing from its vocabulary: {_missing}"
