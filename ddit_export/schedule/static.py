"""Static schedules: an explicit size per step, or FlexiDiT's "coarse for the first k steps, then fine"."""
from __future__ import annotations

from typing import Sequence

from ..errors import ConfigError
from ..settings import GenerateSettings
from .ddit import DDiTPolicy, Decision


class StaticSchedule:
    def __init__(self, sizes: Sequence[int], grid: tuple[int, int], available: Sequence[int]):
        bad = sorted({k for k in sizes if k not in available or grid[0] % k or grid[1] % k})
        if bad:
            raise ConfigError(f"static schedule uses size(s) {bad} not available for grid {grid} "
                              f"(available: {sorted(k for k in available if not grid[0] % k and not grid[1] % k)})")
        self.sizes = tuple(int(k) for k in sizes)

    def decide(self, step: int, history) -> Decision:
        return Decision(self.sizes[step], {}, "static")


class CoarseFirst(StaticSchedule):
    def __init__(self, steps: int, coarse_steps: int, size: int, grid, available):
        super().__init__([size] * coarse_steps + [1] * (steps - coarse_steps), grid, available)


def make_policy(settings: GenerateSettings, grid: tuple[int, int], available: Sequence[int]):
    """The policy a generation job asks for: static list, coarse-first, or the dynamic DDiT rule."""
    if settings.static is not None:
        return StaticSchedule(settings.static, grid, available)
    if settings.coarse_first is not None:
        k, size = settings.coarse_first
        return CoarseFirst(settings.steps, k, size, grid, available)
    return DDiTPolicy(settings.schedule, grid, available)
