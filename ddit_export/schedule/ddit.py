"""The training-free DDiT rule (Kim et al., CVPR 2026), exactly as in shared/research/ddit-method.md.

At step t with latents z_t (newest), z_{t+1}, z_{t+2}, z_{t+3} (older, in the paper's decreasing-time indexing):
Δ³z = z_t − 3 z_{t+1} + 3 z_{t+2} − z_{t+3}. For every candidate size k, cut Δ³z into k x k token patches (all
channels of those tokens), take the standard deviation inside each patch, then the ε-percentile over patches:
σ_k. Pick the largest k with σ_k < τ, else the fine size. The first ``warmup`` (>= 3) steps run fine.

A batch takes one decision: the largest σ_k over its samples counts (coarse only if every sample allows it).

``window="same-size"`` (not in the paper) decides only when the last three steps, whose latents make up Δ³, ran
at one size, and otherwise keeps the size of the last step ("hold").

Issue 19's variants (none is the paper's; measured in docs/results/rule-variants-flux-mini-64.md):
- ``tau4 > 0``: size 4 has its own threshold (τ₄ ≠ τ₂); size 2 and larger sizes keep ``tau``.
- ``signal="x0"``: Δ³ of the predicted clean sample x̂0 = x − σ·v of the last four steps (from ``observe``)
  instead of the noisy latents.
- ``window="fine"``: decide only on windows whose three steps ran fine, so a coarse step's own error never feeds
  the rule; after a coarse decision keep that size for ``hold`` steps ("hold"), then run fine probe steps
  ("probe") until the window is fine again.

Video grids are (F, h, w) token frames x rows x cols (fine tokens ordered f, y, x). A size k merges k x k spatial
tokens inside one token frame, so a patch is spatial; ``video_std`` says over what its std is taken: "clip" = the
k x k patch across all F token frames (one value per (h/k, w/k) patch: a patch whose Δ³ changes from frame to
frame counts as rough), "frame" = each frame's k x k patch alone (one value per (F, h/k, w/k) patch). The
ε-percentile is over those patches either way; with F = 1 both equal the image rule.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..settings import VIDEO_STDS, ScheduleSettings


@dataclass(frozen=True)
class Decision:
    size: int
    sigmas: dict = field(default_factory=dict)  # candidate size -> σ value (empty during warm-up)
    reason: str = "rule"  # "warmup", "rule", "static"


def third_difference(history: Sequence[np.ndarray]) -> np.ndarray:
    """Δ³ of the last four latents of ``history`` (oldest first): z[-1] − 3 z[-2] + 3 z[-3] − z[-4]."""
    if len(history) < 4:
        raise ValueError(f"third difference needs 4 latents, got {len(history)}")
    z0, z1, z2, z3 = (np.asarray(h, dtype=np.float64) for h in list(history)[-4:])
    return z3 - 3.0 * z2 + 3.0 * z1 - z0


def patch_std(d: np.ndarray, grid: tuple[int, ...], k: int, video_std: str = "clip") -> np.ndarray:
    """Std inside each k x k token patch of fine-token array ``d``: image grid (h, w), ``d`` (B, h*w, C) ->
    (B, h/k * w/k); video grid (F, h, w), ``d`` (B, F*h*w, C) -> (B, h/k * w/k) for ``video_std="clip"`` (each
    patch across all frames), (B, F * h/k * w/k) for ``"frame"`` (ordered f, y, x)."""
    b, _, c = d.shape
    if len(grid) == 2:
        h, w = grid
        x = d.reshape(b, h // k, k, w // k, k, c).transpose(0, 1, 3, 2, 4, 5)
        return x.reshape(b, (h // k) * (w // k), k * k * c).std(axis=-1)
    f, h, w = grid
    x = d.reshape(b, f, h // k, k, w // k, k, c)
    if video_std == "frame":
        x = x.transpose(0, 1, 2, 4, 3, 5, 6)  # (b, f, h/k, w/k, k, k, c)
        return x.reshape(b, f * (h // k) * (w // k), k * k * c).std(axis=-1)
    if video_std == "clip":
        x = x.transpose(0, 2, 4, 1, 3, 5, 6)  # (b, h/k, w/k, f, k, k, c)
        return x.reshape(b, (h // k) * (w // k), f * k * k * c).std(axis=-1)
    raise ValueError(f"video_std must be one of {', '.join(VIDEO_STDS)}, got {video_std!r}")


def sigma_at(d: np.ndarray, grid: tuple[int, ...], k: int, eps: float, video_std: str = "clip") -> np.ndarray:
    """ε-percentile over patches of the per-patch std, per sample: (B,)."""
    return np.percentile(patch_std(d, grid, k, video_std), eps * 100.0, axis=-1)


def divides(grid: tuple[int, ...], k: int) -> bool:
    """Whether size k cuts ``grid``'s spatial (last two) axes into whole k x k patches; frames are never merged."""
    *_, h, w = grid
    return h % k == 0 and w % k == 0


class DDiTPolicy:
    """Decides the patch size of each step from the latent history."""

    def __init__(self, settings: ScheduleSettings, grid: tuple[int, ...], sizes: Sequence[int]):
        self.settings = settings
        self.grid = tuple(grid)  # (h, w) or a video's (F, h, w)
        self.sizes = tuple(sorted(k for k in sizes if divides(grid, k)))
        self.taken: list[int] = []  # sizes this policy chose, step by step (one policy per generation)
        self.x0: list[np.ndarray] = []  # signal "x0": x̂0 of every step so far (observe)
        if settings.signal == "x0":
            self.observe = self._observe_x0
            self.needs_history = False  # reads x̂0 through observe() instead of the latent history

    def _observe_x0(self, step: int, latents, velocity, sigma: float, sigma_next: float):
        self.x0 = (self.x0 + [_numpy(latents) - sigma * _numpy(velocity)])[-4:]

    def threshold(self, k: int) -> float:
        s = self.settings
        return s.tau4 if k == 4 and s.tau4 > 0 else s.tau

    def decide(self, step: int, history: Sequence[np.ndarray]) -> Decision:
        d = self._decide(step, history)
        self.taken.append(d.size)
        return d

    def _decide(self, step: int, history: Sequence[np.ndarray]) -> Decision:
        s = self.settings
        if s.signal == "x0":
            history = self.x0  # x̂0 of steps step-4 .. step-1
        if step < s.warmup or len(history) < 4:
            return Decision(1, {}, "warmup")
        last3 = self.taken[-3:]
        if s.window == "same-size" and len(set(last3)) > 1:
            return Decision(last3[-1], {}, "hold")  # the window mixes sizes: its Δ³ says little; keep going
        if s.window == "fine" and last3 != [1, 1, 1]:
            run = len(self.taken) - len(list(itertools.takewhile(lambda k: k == self.taken[-1],
                                                                 reversed(self.taken))))
            if self.taken[-1] > 1 and len(self.taken) - run < s.hold:
                return Decision(self.taken[-1], {}, "hold")  # the coarse size the last fine window chose
            return Decision(1, {}, "probe")  # fine steps until the window is fine again
        d3 = third_difference(history)
        sigmas = {k: float(sigma_at(d3, self.grid, k, s.eps, s.video_std).max()) for k in self.sizes if k > 1}
        passing = [k for k, v in sigmas.items() if v < self.threshold(k)]
        return Decision(max(passing, default=1), sigmas, "rule")


def _numpy(a) -> np.ndarray:
    """float64 numpy from an array or a (possibly device) tensor, without importing torch."""
    return np.asarray(a.detach().float().cpu().numpy() if hasattr(a, "detach") else a, np.float64)
