"""A motion probe for wan-mini's clips: does a generated clip show what its caption says?

For every shape of the caption (zoo/clips.py's ground truth) the probe looks, frame by frame, for the pixels of
that shape's colour (within :data:`COLOUR_TOL` in RGB, [0, 1] units), and reads what they do: the centroid's path
(moving left/right/up/down, or still), the area's trend (growing, shrinking, appearing) and, for "turning", whether
the start colour gives way to the target colour. It is a colour-and-geometry probe, not a learned one: on the
rendered ground-truth clips it is right almost always (tests/quality/test_motion.py measures the rate), and on a
generated clip it checks the caption's motion, not pixel fidelity.

Two readings: :func:`adherence` checks a clip against its caption's ground truth (zoo/clips.py's ``Clip``), and
:func:`observe` says what a clip shows without one (the dominant shape colour, where it ends, how it moves, how its
size and colour change). zoo/clips.py keeps the shapes of a clip apart and in distinct colours that the background
does not show, so colour alone tells them apart.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..zoo import clips as C
from ..zoo import scenes as S

COLOUR_TOL = 0.25  # max Euclidean RGB distance ([0, 1] channels) of a pixel counted as the shape's colour
MIN_PIXELS = 4  # fewer matching pixels in a frame: the shape is absent there
MOVE_PX = 3.0  # centroid displacement (px at 32x32, scaled with the side) that counts as motion
AREA_RATIO = 1.4  # last/first area above this: growing / appearing; below 1/this: shrinking
SIZE_RATIO = 2.0  # observe(): last/first area that reads as growing (1/this: shrinking) before any motion


@dataclass
class Track:
    """What the probe sees of one colour over the frames."""

    area: np.ndarray  # (F,) matching pixels per frame
    centre: np.ndarray  # (F, 2) centroid (row, col) in px, NaN where absent

    @property
    def present(self) -> np.ndarray:
        return self.area >= MIN_PIXELS


def to_unit_frames(frames) -> np.ndarray:
    """(F, H, W, 3) float in [0, 1] from a list of PIL frames, uint8 frames, or a (F, 3, H, W) [-1, 1] clip."""
    if isinstance(frames, (list, tuple)):
        frames = np.stack([np.asarray(f) for f in frames])
    a = np.asarray(frames)
    if a.ndim == 4 and a.shape[1] == 3 and a.shape[-1] != 3:  # (F, 3, H, W) in [-1, 1]
        return ((a.transpose(0, 2, 3, 1) + 1) / 2).clip(0, 1).astype(np.float32)
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255
    return a.astype(np.float32)


def colour_mask(x: np.ndarray, colour: str, opened: bool = True) -> np.ndarray:
    """(F, H, W) pixels of ``colour`` (within COLOUR_TOL) that lie in a full 2 x 2 block of it: an opening that drops
    the stray pixels of noise and keeps every shape (a small triangle, 6 px across, included)."""
    m = np.linalg.norm(x - np.asarray(S.COLOURS[colour], np.float32), axis=-1) < COLOUR_TOL
    if not opened:
        return m
    block = m[:, :-1, :-1] & m[:, 1:, :-1] & m[:, :-1, 1:] & m[:, 1:, 1:]  # block with top-left corner (y, x)
    out = np.zeros_like(m)
    for dy in (0, 1):
        for dx in (0, 1):
            out[:, dy:dy + block.shape[1], dx:dx + block.shape[2]] |= block
    return out


def track(frames, colour: str) -> Track:
    x = to_unit_frames(frames)
    mask = colour_mask(x, colour)
    area = mask.reshape(len(x), -1).sum(1).astype(np.float64)
    rows, cols = np.mgrid[0:x.shape[1], 0:x.shape[2]] + 0.5
    with np.errstate(invalid="ignore", divide="ignore"):
        cy = (mask * rows).reshape(len(x), -1).sum(1) / area
        cx = (mask * cols).reshape(len(x), -1).sum(1) / area
    return Track(area, np.stack([cy, cx], 1))


def read_motion(t: Track, side: int) -> str:
    """The motion a track shows: a direction, growing/shrinking/appearing, still, or absent."""
    p = t.present
    if not p.any():
        return "absent"
    first, last = int(np.argmax(p)), len(p) - 1 - int(np.argmax(p[::-1]))
    a0, a1 = t.area[first], t.area[last]
    d = t.centre[last] - t.centre[first]
    move = MOVE_PX * side / 32
    if first > 0 and p[first:].all() and a1 > a0 * AREA_RATIO:
        return "appearing"
    if abs(d).max() >= move:
        if abs(d[1]) >= abs(d[0]):
            return "right" if d[1] > 0 else "left"
        return "down" if d[0] > 0 else "up"
    if a1 > a0 * AREA_RATIO:
        return "growing"
    if a1 < a0 / AREA_RATIO:
        return "shrinking"
    return "still"


def shape_ok(frames, s: C.MovingShape, side: int) -> dict:
    """Per shape: is its colour there, and does it do what the caption says?"""
    t = track(frames, s.colour)
    seen = read_motion(t, side)
    colour_ok = bool(t.present[0] or s.motion == "appearing")
    if s.motion == "turning":
        t2 = track(frames, s.to_colour)
        ok = bool(t.present[0] and t2.present[-1] and t2.area[-1] > t2.area[0] * AREA_RATIO)
        return {"colour": colour_ok, "motion": ok, "seen": "turning" if ok else seen}
    if s.motion == "appearing":
        ok = seen == "appearing" or (t.area[-1] > max(t.area[0], 1) * AREA_RATIO and t.present[-1])
        return {"colour": bool(t.present[-1]), "motion": bool(ok), "seen": seen}
    want = s.motion if s.motion != "still" else "still"
    if s.motion in ("growing", "shrinking"):  # a growing shape's centre may drift when it is clipped at the edge
        ratio = t.area[-1] / max(t.area[0], 1)
        ok = ratio > AREA_RATIO if s.motion == "growing" else ratio < 1 / AREA_RATIO
        return {"colour": colour_ok, "motion": bool(ok and t.present.all()), "seen": seen}
    return {"colour": colour_ok, "motion": seen == want, "seen": seen}


def adherence(frames, clip: C.Clip) -> dict:
    """Bools for one clip: every shape's colour present, every shape's motion right, and both."""
    side = to_unit_frames(frames).shape[1]
    per = [shape_ok(frames, s, side) for s in clip.shapes]
    colour = all(p["colour"] for p in per)
    motion = all(p["motion"] for p in per)
    return {"colour": colour, "motion": motion, "all": colour and motion, "seen": [p["seen"] for p in per]}


def aggregate(results: list[dict]) -> dict:
    """Fractions over clips: colour, motion, all."""
    n = max(len(results), 1)
    return {k: sum(r[k] for r in results) / n for k in ("colour", "motion", "all")}


def _named_cell(cy: float, cx: float, side: int) -> str:
    """The 3x3 grid cell name (zoo/scenes.py's POSITIONS) of a pixel position."""
    rc = (min(2, max(0, int(cy * 3 // side))), min(2, max(0, int(cx * 3 // side))))
    return next(name for name, cell in S.POSITIONS.items() if cell == rc)


def _colour_areas(x: np.ndarray) -> dict[str, np.ndarray]:
    """Per named colour: (F,) pixels within COLOUR_TOL of it, for the colours no background row is made of."""
    out = {}
    for name, rgb in S.COLOURS.items():
        # a colour over 60% of a row of a frame is background (a shape is at most half the side wide)
        if (colour_mask(x, name, opened=False).mean(2) > 0.6).any():
            continue
        out[name] = colour_mask(x, name).reshape(len(x), -1).sum(1)
    return out


def _box_centre(x: np.ndarray, colour: str, frame: int) -> tuple[float, float]:
    """The centre of the bounding box of ``colour``'s pixels in one frame (a triangle's centroid sits low)."""
    rows, cols = np.nonzero(colour_mask(x[frame:frame + 1], colour)[0])
    return (rows.min() + rows.max() + 1) / 2, (cols.min() + cols.max() + 1) / 2


def observe(frames) -> dict:
    """What a clip shows, without its caption: the dominant shape colour (most matching pixels over the clip,
    background colours left out), the named cell of its bounding box's centre at the last frame it is seen, its
    motion, its size change (last / first area) and its colour change ((first, last) dominant colour, or None).

    Motion: "turning" (the first frame's main colour is not the last frame's), "appearing" (absent at the first
    frame, there at the last), "growing" / "shrinking" (area x2 / x0.5: a shape that moves keeps its area), a
    direction (centroid displacement >= MOVE_PX), else "still"; "absent" and ``colour`` None when no named colour
    is seen."""
    x = to_unit_frames(frames)
    side = x.shape[1]
    areas = _colour_areas(x)
    seen = {k: v for k, v in areas.items() if (v >= MIN_PIXELS).any()}
    if not seen:
        return {"colour": None, "position": None, "motion": "absent", "size_change": None, "colour_change": None}
    c0 = max(seen, key=lambda k: seen[k][0])
    c1 = max(seen, key=lambda k: seen[k][-1])
    if c0 != c1 and seen[c0][0] >= MIN_PIXELS and seen[c1][-1] >= MIN_PIXELS:
        # the first frame's main colour gives way to another one: a colour change, read as "turning"
        return {"colour": c0, "position": _named_cell(*_box_centre(x, c1, len(x) - 1), side), "motion": "turning",
                "size_change": float(seen[c1][-1] / max(seen[c0][0], 1)), "colour_change": (c0, c1)}
    colour = max(seen, key=lambda k: seen[k].sum())
    t = track(x, colour)
    p = t.present
    first, last = int(np.argmax(p)), len(p) - 1 - int(np.argmax(p[::-1]))
    ratio = float(t.area[last] / max(t.area[first], 1.0))
    d = t.centre[last] - t.centre[first]
    if first > 0 and p[-1]:
        motion = "appearing"
    elif ratio >= SIZE_RATIO:
        motion = "growing"
    elif ratio <= 1 / SIZE_RATIO:
        motion = "shrinking"
    elif abs(d).max() >= MOVE_PX * side / 32:
        motion = ("right" if d[1] > 0 else "left") if abs(d[1]) >= abs(d[0]) else ("down" if d[0] > 0 else "up")
    else:
        motion = "still"
    return {"colour": colour, "position": _named_cell(*_box_centre(x, colour, last), side), "motion": motion,
            "size_change": ratio, "colour_change": None}


def rates_by_motion(results: list[dict], clips: list[C.Clip]) -> dict[str, float]:
    """The fraction of clips whose motion is right, per motion word of their first shape."""
    per: dict[str, list[bool]] = {}
    for r, c in zip(results, clips):
        per.setdefault(c.shapes[0].motion, []).append(bool(r["motion"]))
    return {k: sum(v) / len(v) for k, v in sorted(per.items())}


def confusion(results: list[dict], clips: list[C.Clip]) -> dict[str, dict[str, int]]:
    """Per caption motion, what the probe saw instead, counted over every shape of every clip (``adherence``'s
    ``seen``): where a model fails, e.g. a moving shape that fades or leaves the frame reads as "shrinking"."""
    out: dict[str, dict[str, int]] = {}
    for r, c in zip(results, clips):
        for s, seen in zip(c.shapes, r["seen"]):
            row = out.setdefault(s.motion, {})
            row[seen] = row.get(seen, 0) + 1
    return {k: dict(sorted(v.items(), key=lambda kv: -kv[1])) for k, v in sorted(out.items())}
