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
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from ..models.registry import TINY_VOCAB

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
    background: str  # one of BACKGROUNDS: a flat colour name, "gradient" or "striped"

    @property
    def background_kind(self) -> str:
        return self.background if self.background in TEXTURES else "flat"

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


def _sample_once(rng: np.random.Generator, split: str, n: int, background: str) -> Scene:
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
            spec = _fit(ShapeSpec(shape, colour, list(SIZES)[int(rng.integers(len(SIZES)))], pos), shapes)
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
                 n_shapes: int | None = None, background: str | None = None) -> Scene:
    """One random scene of ``split``; optionally constrained to a complexity bucket, shape count or background."""
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


def _background(name: str, side: int, yy: np.ndarray) -> np.ndarray:
    if name in FLAT_BACKGROUNDS:
        return np.broadcast_to(np.asarray(FLAT_BACKGROUNDS[name], np.float32)[:, None, None], (3, side, side))
    if name == "gradient":  # dark at the top, light at the bottom
        g = 0.1 + 0.65 * (yy / (side - 1))
    else:  # horizontal stripes, period side/8 (4 px at 32)
        period = max(4, side // 8)
        g = np.where((np.floor(yy) % period) < period / 2, 0.3, 0.6)
    return np.broadcast_to(g.astype(np.float32)[None], (3, side, side))


def render(scene: Scene, side: int = 32) -> np.ndarray:
    """RGB float32 in [-1, 1], shape (3, side, side)."""
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) + 0.5
    img = _background(scene.background, side, yy).copy()
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


def caption_words() -> set[str]:
    """Every word the grammar can produce (all must be in TINY_VOCAB)."""
    words = {"a", "and", "at", "in", "the", "on", "background"}
    words |= set(SIZES) | set(COLOURS) | set(SHAPES) | set(BACKGROUNDS)
    for p in POSITIONS:
        words |= set(p.split())
    return words


_missing = caption_words() - set(TINY_VOCAB)
assert not _missing, f"scene grammar uses words missing from TINY_VOCAB: {_missing}"
