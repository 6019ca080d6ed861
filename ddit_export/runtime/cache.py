"""An output-level step cache: skip the transformer on some steps and extrapolate its velocity instead.

TaylorSeer (Liu et al. 2025) applied to the model's output: the velocities of the last computed steps, as a
function of σ, give a Newton polynomial of order 0 (reuse), 1 or 2, evaluated at the cached step's σ. It needs
nothing but the backend's output, so every backend (PyTorch, ONNX Runtime, TensorRT, a C++ port) gets it with no
graph change, and since the velocity is always in fine-token form it composes with patch-size switching.

Which steps run: ``warmup`` computed steps, then one computed step every ``interval`` steps, and the last
``tail`` steps computed (with ``switch``, also the first step after each patch-size change, which restarts the
extrapolation from the new size's velocities only). The optional ``threshold`` adds an indicator from quantities
the loop already has: at every computed step the cache measures how far its own extrapolation would have been off
(``e = |v - p(σ)| / |v|`` at σ distance ``Δ``), and computes the next step early once ``e · (d/Δ)^(order+1)``
reaches the threshold at distance ``d`` from the last computed step. The batch takes one decision.
"""
from __future__ import annotations

from collections import deque

import torch

from ..settings import CacheSettings


class StepCache:
    def __init__(self, settings: CacheSettings, steps: int):
        self.settings = settings
        self.steps = steps
        self.points: deque = deque(maxlen=settings.order + 1)  # (σ, velocity) of the last computed steps
        self.last_step = -1
        self.last_size: int | None = None  # the patch size of the last computed step (settings.switch)
        self.error: tuple[float, float] | None = None  # (relative extrapolation error, σ distance) measured

    def should_compute(self, step: int, sigma: float, size: int | None = None) -> bool:
        """Whether step ``step`` (at ``sigma``, patch size ``size`` chosen by the policy) runs the model."""
        s = self.settings
        if s.mode == "plan":
            return bool(s.plan[step])
        if not self.points or step < s.warmup or step >= self.steps - s.tail:
            return True
        if s.switch and size is not None and size != self.last_size:
            return True
        if step - self.last_step >= s.interval:
            return True
        if s.threshold is not None and self.error is not None:
            err, dist = self.error
            d = abs(sigma - self.points[-1][0])
            return dist > 0 and err * (d / dist) ** (s.order + 1) >= s.threshold
        return False

    def predict(self, sigma: float) -> torch.Tensor:
        """Newton's divided-difference polynomial through the stored points, at ``sigma``."""
        pts = list(self.points)
        xs = [p[0] for p in pts]
        coef = [p[1].float() for p in pts]
        n = len(pts)
        for j in range(1, n):  # divided differences, in place: coef[i] = f[x_{i-j}..x_i]
            for i in range(n - 1, j - 1, -1):
                coef[i] = (coef[i] - coef[i - 1]) / (xs[i] - xs[i - j])
        out = coef[n - 1]
        for i in range(n - 2, -1, -1):
            out = coef[i] + (sigma - xs[i]) * out
        return out.to(pts[-1][1].dtype)

    def update(self, step: int, sigma: float, v: torch.Tensor, size: int | None = None):
        """Store a computed step's velocity; measure the extrapolation error it would have had. With ``switch``, a
        step of a new size restarts the history: velocities of another size do not extrapolate this one's."""
        if self.settings.switch and size != self.last_size:
            self.points.clear()
            self.error = None
        if self.settings.threshold is not None and len(self.points) == self.points.maxlen:
            p = self.predict(sigma)
            err = float((v.float() - p.float()).norm() / v.float().norm().clamp_min(1e-12))
            self.error = (err, abs(sigma - self.points[-1][0]))
        self.points.append((sigma, v.detach().clone()))  # a CUDA-graph backend reuses its output buffer
        self.last_step = step
        self.last_size = size


def make_cache(settings: CacheSettings, steps: int) -> StepCache | None:
    """The generation's cache, or None when it would compute every step (off, or interval 1 without threshold)."""
    return StepCache(settings, steps) if settings.enabled else None
