"""The adaptive ``probe`` policy: a monotone coarse-to-fine ladder whose fine tail is chosen per prompt.

It runs ``head`` fine steps, ``n4`` steps at size 4, size 2, and a fine tail of ``tail`` steps, or ``tail + extra``
when the prompt's detail signal exceeds ``detail``. The signal is read once, after the first step (after the last
head step when there is a head): the within-2x2-patch std of the predicted clean sample x̂0 = x − σ·v (mean over
patches; a batch takes its largest sample; on a video grid the patches of ``video_std``). On flux-mini it hardly
depends on the size that step ran at (its correlation over prompts with the fine step's value: 0.99 at size 2,
0.96 at size 4), so no fine probe step is needed, and the policy never feeds back on its own coarse steps (the
paper's rule does, which locks it into a rhythm). Measured on flux-mini in docs/results/policies-flux-mini.md.
"""
from __future__ import annotations

from typing import Sequence

from ..errors import ConfigError
from ..settings import ScheduleSettings
from .ddit import Decision, _numpy, divides, patch_std


class ProbePolicy:
    needs_history = False  # reads the one observation it needs through observe()
    def __init__(self, settings: ScheduleSettings, steps: int, grid: tuple[int, ...], available: Sequence[int]):
        need = {1, 2} | ({4} if settings.n4 else set())
        ok = {k for k in available if divides(grid, k)}
        if not need <= ok:
            raise ConfigError(f"probe policy needs sizes {sorted(need)}; grid {tuple(grid)} with these variants has "
                              f"{sorted(ok)}")
        self.s, self.steps, self.grid = settings, steps, grid
        self.signal: float | None = None

    def observe(self, step: int, latents, velocity, sigma: float, sigma_next: float):
        """``latents`` and ``velocity``: arrays or tensors (fine-token form) of this step; read once."""
        if step == max(self.s.head - 1, 0):
            x0 = _numpy(latents) - sigma * _numpy(velocity)
            self.signal = float(patch_std(x0, self.grid, 2, self.s.video_std).mean(axis=-1).max())

    def decide(self, step: int, history) -> Decision:
        s = self.s
        if step < s.head:
            return Decision(1, {}, "probe")
        if self.signal is None and step > 0:
            raise RuntimeError("the probe policy needs observe() after its first step (runtime/generate.py)")
        tail = s.tail + (s.extra if self.signal is not None and self.signal > s.detail else 0)
        sigmas = {2: self.signal} if self.signal is not None else {}
        if step >= self.steps - tail:
            return Decision(1, sigmas, "tail")
        return Decision(4 if step < s.head + s.n4 else 2, sigmas, "probe")
