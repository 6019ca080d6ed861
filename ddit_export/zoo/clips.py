"""Procedural text-to-video clips: coloured shapes that move, grow, shrink, change colour or appear, captioned from
a grammar with motion words. The data set wan-mini is trained on and the ground truth its evaluation reads.

Grammar (every word is in :data:`VIDEO_VOCAB`)::

    caption := part ("and" part)? "on a" background "background"
    part    := "a" size colour shape motion
    motion  := "moving" ("left" | "right" | "up" | "down")
             | "growing" | "shrinking" | "turning" colour | "appearing" ("at the" | "in the") position
             | ("at the" | "in the") position                      # still
    e.g. "a large red circle moving left on a black background",
         "a small blue square turning green and a yellow triangle appearing in the center on a gray background"

A clip is ``frames`` frames (default 8) of ``side`` x ``side`` RGB in [-1, 1], shape (frames, 3, side, side). Shapes
move by a third of the frame over the clip (from one grid cell to the next), grow/shrink between small and large,
blend their colour linearly, or fade in. Backgrounds: the flat ones of zoo/scenes.py plus gradient and striped.

Two shapes of a clip never share a colour (nor a "turning" target), never overlap at any time of the clip, and no
shape has a colour that the background shows (black on black or on the dark top of the gradient, white on white):
every shape is told apart by its colour alone, which is what quality/motion.py's probe relies on.

Held-out split: a (colour, shape, motion) triple is held out when ``crc32("colour shape motion") % 8 == 0``;
``split="train"`` never produces one, ``split="heldout"`` clips hold at least one. Every clip is a pure function of
a numpy Generator; a batch a pure function of its seed.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from ..models.vocab import VIDEO_VOCAB  # noqa: F401 (re-exported; the grammar's words, checked in tests/zoo)
from . import scenes as S

MOTIONS = ("left", "right", "up", "down", "growing", "shrinking", "turning", "appearing", "still")
DIRECTIONS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
FRAMES = 8
SIDE = 32
HELDOUT_MOD = 8
TWO_SHAPE = 0.3  # share of two-shape clips: every evaluation and calibration draw (training may ask for more)


def grammar_words() -> set[str]:
    """Every word the clip grammar can write (tests check it equals :data:`VIDEO_VOCAB`)."""
    # the position words of the grammar: a still or appearing shape's cell; a moving shape starts where it can move
    return ({"a", "and", "at", "in", "the", "on", "background", "moving", "growing", "shrinking", "turning",
             "appearing"} | set(S.SIZES) | set(S.COLOURS) | set(S.SHAPES) | set(S.BACKGROUNDS)
            | {w for p in S.POSITIONS for w in p.split()} | set(DIRECTIONS))


def is_heldout(colour: str, shape: str, motion: str) -> bool:
    return zlib.crc32(f"{colour} {shape} {motion}".encode()) % HELDOUT_MOD == 0


@dataclass(frozen=True)
class MovingShape:
    """One shape of a clip and what it does over the clip: the ground truth a probe compares against."""

    shape: str
    colour: str
    size: str
    motion: str  # one of MOTIONS
    start: tuple[float, float]  # centre (row, col) in grid cells 0..2 at the first frame
    end: tuple[float, float]  # ... at the last frame
    to_colour: str | None = None  # "turning": the colour at the last frame
    position: str = "center"  # the named cell (still, appearing, turning, growing, shrinking); moving: the start

    def phrase(self) -> str:
        head = f"a {self.size} {self.colour} {self.shape}"
        where = "in the center" if self.position == "center" else f"at the {self.position}"
        if self.motion in DIRECTIONS:
            return f"{head} moving {self.motion}"
        if self.motion == "turning":
            return f"{head} turning {self.to_colour}"
        if self.motion in ("growing", "shrinking"):
            return f"{head} {self.motion}"
        if self.motion == "appearing":
            return f"{head} appearing {where}"
        return f"{head} {where}"

    def colours(self) -> tuple[str, ...]:
        return (self.colour, self.to_colour) if self.to_colour else (self.colour,)

    def geometry(self, f: float, side: int = SIDE) -> tuple[float, float, float]:
        """(cy, cx, radius) in pixels at clip time ``f`` in [0, 1], as :func:`render` draws it."""
        row, col, size, _, _ = self.state(f)
        r = size * side / 2
        cy, cx = ((v + 0.5) * side / 3 for v in (row, col))
        return float(np.clip(cy, r, side - r)), float(np.clip(cx, r, side - r)), r

    def state(self, f: float) -> tuple[float, float, str, float, tuple]:
        """(row, col) centre in cells, size fraction of the side, opacity, RGB at clip time ``f`` in [0, 1]."""
        row = self.start[0] + (self.end[0] - self.start[0]) * f
        col = self.start[1] + (self.end[1] - self.start[1]) * f
        small, large = S.SIZES["small"], S.SIZES["large"]
        size = {"growing": small + (large - small) * f, "shrinking": large + (small - large) * f}.get(
            self.motion, S.SIZES[self.size])
        alpha = min(1.0, 0.15 + f * 1.2) if self.motion == "appearing" else 1.0
        c0 = np.asarray(S.COLOURS[self.colour], np.float32)
        rgb = c0 + (np.asarray(S.COLOURS[self.to_colour], np.float32) - c0) * f if self.to_colour else c0
        return row, col, size, alpha, tuple(float(v) for v in rgb)


@dataclass(frozen=True)
class Clip:
    shapes: tuple[MovingShape, ...]
    background: str

    @property
    def caption(self) -> str:
        return " and ".join(s.phrase() for s in self.shapes) + f" on a {self.background} background"

    @property
    def split(self) -> str:
        return "heldout" if any(is_heldout(s.colour, s.shape, s.motion) for s in self.shapes) else "train"

    def render(self, frames: int = FRAMES, side: int = SIDE) -> np.ndarray:
        return render(self, frames, side)


def _cells_of(names) -> set:
    return {S.POSITIONS[n] for n in names}


def _cell(name: str) -> tuple[float, float]:
    r, c = S.POSITIONS[name]
    return float(r), float(c)


BACKGROUND_GAP = 0.3  # a colour this close (RGB distance, [0, 1]) to any background pixel is not drawn on it


def _background_levels(background: str) -> np.ndarray:
    """(n, 3) the RGB values a background's pixels take."""
    yy = np.arange(SIDE, dtype=np.float32)[:, None] + 0.5
    return np.unique(S._background(background, SIDE, np.broadcast_to(yy, (SIDE, SIDE)))[:, :, 0].T, axis=0)


def clashes(colour: str, background: str) -> bool:
    """Whether ``colour`` is too close to some pixel of ``background`` to be told apart from it."""
    d = np.linalg.norm(_background_levels(background) - np.asarray(S.COLOURS[colour], np.float32), axis=1)
    return bool(d.min() < BACKGROUND_GAP)


def _apart(a: MovingShape, b: MovingShape, frames: int = 16) -> bool:
    """No overlap at any time of the clip (bounding circles, at 32 px; scale-free)."""
    for f in np.linspace(0, 1, frames):
        ay, ax, ar = a.geometry(f)
        by, bx, br = b.geometry(f)
        if np.hypot(ay - by, ax - bx) < ar + br + 1:
            return False
    return True


def _sample_shape(rng: np.random.Generator, background: str, want_heldout: bool | None, taken: set,
                  placed: tuple = ()) -> MovingShape:
    """A shape whose (colour, shape, motion) is held out iff ``want_heldout`` (None: train triples only), apart
    from and in other colours than the ``placed`` shapes, in a colour the background does not show."""
    used = {c for p in placed for c in p.colours()}
    for _ in range(200):
        colour = list(S.COLOURS)[int(rng.integers(len(S.COLOURS)))]
        shape = S.SHAPES[int(rng.integers(len(S.SHAPES)))]
        motion = MOTIONS[int(rng.integers(len(MOTIONS)))]
        if (colour in used or clashes(colour, background)
                or is_heldout(colour, shape, motion) != bool(want_heldout)):
            continue
        size = list(S.SIZES)[int(rng.integers(len(S.SIZES)))]
        if motion in ("growing", "shrinking"):
            size = "medium"  # the caption's size word; the clip spans small..large
        to = None
        if motion == "turning":
            others = [c for c in S.COLOURS if c != colour and c not in used and not clashes(c, background)]
            to = others[int(rng.integers(len(others)))]
        if motion in DIRECTIONS:
            dy, dx = DIRECTIONS[motion]
            # start one cell against the direction (the middle row/col the other way), end one cell along it
            starts = [p for p, (r, c) in S.POSITIONS.items() if 0 <= r + dy <= 2 and 0 <= c + dx <= 2
                      and p not in taken and (r + dy, c + dx) not in _cells_of(taken)]
            if not starts:
                continue
            pos = starts[int(rng.integers(len(starts)))]
            r, c = _cell(pos)
            new = MovingShape(shape, colour, size, motion, (r, c), (r + dy, c + dx), None, pos)
        else:
            free = [p for p in S.POSITIONS if p not in taken]
            pos = free[int(rng.integers(len(free)))]
            new = MovingShape(shape, colour, size, motion, _cell(pos), _cell(pos), to, pos)
        if all(_apart(new, p) for p in placed):
            return new
    raise ValueError("could not sample a shape")


def sample_clip(rng: np.random.Generator, split: str = "train", n_shapes: int | None = None,
                two_shape: float = TWO_SHAPE) -> Clip:
    """One random clip of ``split`` with 1 or 2 shapes (2 with probability ``two_shape``) on a random background."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    if not 0 <= two_shape <= 1:
        raise ValueError(f"two_shape must be a fraction in [0, 1], got {two_shape}")
    n = n_shapes or (1 if rng.random() < 1 - two_shape else 2)
    for _ in range(50):  # a first shape can leave no room for a second: draw the clip again (same rng, so pure)
        bg = S.BACKGROUNDS[int(rng.integers(len(S.BACKGROUNDS)))]
        forced = int(rng.integers(n)) if split == "heldout" else -1
        shapes, taken = [], set()
        try:
            for i in range(n):
                s = _sample_shape(rng, bg, i == forced, taken, tuple(shapes))
                shapes.append(s)
                taken |= {s.position} | {p for p, rc in S.POSITIONS.items() if rc == tuple(int(v) for v in s.end)}
        except ValueError:
            continue
        return Clip(tuple(shapes), bg)
    raise ValueError(f"could not sample a {n}-shape {split} clip")


def render(clip: Clip, frames: int = FRAMES, side: int = SIDE) -> np.ndarray:
    """(frames, 3, side, side) float32 in [-1, 1]."""
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) + 0.5
    bg = S._background(clip.background, side, yy)
    out = np.empty((frames, 3, side, side), np.float32)
    for i in range(frames):
        f = i / max(frames - 1, 1)
        img = bg.copy()
        for s in clip.shapes:
            _, _, _, alpha, rgb = s.state(f)
            cy, cx, r = s.geometry(f, side)
            a = _coverage(s.shape, cy, cx, r, yy, xx)[None] * alpha
            img = img * (1 - a) + np.asarray(rgb, np.float32)[:, None, None] * a
        out[i] = img * 2 - 1
    return out


def _coverage(shape: str, cy: float, cx: float, r: float, yy, xx) -> np.ndarray:
    """zoo/scenes.py's anti-aliased coverage at a free centre and radius."""
    dy, dx = yy - cy, xx - cx
    if shape == "circle":
        sdf = np.hypot(dy, dx) - r
    elif shape == "square":
        sdf = np.maximum(np.abs(dy), np.abs(dx)) - r * 0.85
    else:
        k = 2.0
        sdf = np.maximum(dy - r, (k * np.abs(dx) - (dy + r)) / np.sqrt(1 + k * k))
    return np.clip(0.5 - sdf, 0.0, 1.0)


def make_batch(seed_or_rng, n: int, split: str = "train", frames: int = FRAMES, side: int = SIDE,
               two_shape: float = TWO_SHAPE):
    """(clips float32 (n, frames, 3, side, side) in [-1, 1], captions, Clip records) — deterministic."""
    rng = seed_or_rng if isinstance(seed_or_rng, np.random.Generator) else np.random.default_rng(seed_or_rng)
    clips = [sample_clip(rng, split, two_shape=two_shape) for _ in range(n)]
    arr = np.stack([render(c, frames, side) for c in clips]) if clips else np.zeros((0, frames, 3, side, side),
                                                                                    np.float32)
    return arr, [c.caption for c in clips], clips


def caption_words() -> set[str]:
    return set(VIDEO_VOCAB)


def parse_caption(caption: str) -> Clip:
    """A caption of the clip grammar back into a :class:`Clip` (``parse_caption(c.caption).caption == c.caption``):
    every shape's size, colour, shape, motion, target colour and named cell as the caption says them. What a caption
    does not say is filled in plainly: a moving shape starts at the first cell (reading order) from which it can move
    one cell its way (quality/motion.py's probe reads colours and motions, not where a shape starts). Raises
    ValueError naming what it cannot read."""
    text = " ".join(caption.lower().strip().rstrip(".").split())
    head, sep, bg = text.rpartition(" on a ")
    if not sep or not bg.endswith(" background") or bg[:-len(" background")] not in S.BACKGROUNDS:
        raise ValueError(f"not a clip caption (no '... on a <background> background'): {caption!r}")
    parts = head.split(" and ")
    if len(parts) > 2:
        raise ValueError(f"not a clip caption (at most two shapes, got {len(parts)}): {caption!r}")
    shapes = []
    for part in parts:
        w = part.split()
        if len(w) < 5 or w[0] != "a" or w[1] not in S.SIZES or w[2] not in S.COLOURS or w[3] not in S.SHAPES:
            raise ValueError(f"not a clip caption: cannot read {part!r} in {caption!r}")
        size, colour, shape, rest = w[1], w[2], w[3], w[4:]
        shapes.append(_parse_motion(shape, colour, size, rest, part, caption))
    return Clip(tuple(shapes), bg[:-len(" background")])


def _parse_motion(shape, colour, size, rest, part, caption) -> MovingShape:
    def where(words):
        if len(words) >= 3 and words[:2] in (["at", "the"], ["in", "the"]) and " ".join(words[2:]) in S.POSITIONS:
            return " ".join(words[2:])
        raise ValueError(f"not a clip caption: cannot read the position in {part!r} of {caption!r}")

    if rest[0] == "moving" and len(rest) == 2 and rest[1] in DIRECTIONS:
        dy, dx = DIRECTIONS[rest[1]]
        pos = next(p for p, (r, c) in S.POSITIONS.items() if 0 <= r + dy <= 2 and 0 <= c + dx <= 2)
        r, c = _cell(pos)
        return MovingShape(shape, colour, size, rest[1], (r, c), (r + dy, c + dx), None, pos)
    if rest in (["growing"], ["shrinking"]):
        return MovingShape(shape, colour, size, rest[0], _cell("center"), _cell("center"))
    if rest[0] == "turning" and len(rest) == 2 and rest[1] in S.COLOURS:
        return MovingShape(shape, colour, size, "turning", _cell("center"), _cell("center"), rest[1])
    motion, words = ("appearing", rest[1:]) if rest[0] == "appearing" else ("still", rest)
    pos = where(words)
    return MovingShape(shape, colour, size, motion, _cell(pos), _cell(pos), None, pos)
