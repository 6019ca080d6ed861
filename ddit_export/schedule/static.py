"""Static schedules: an explicit size per step, FlexiDiT's "coarse for the first k steps, then fine", and the ladder
family (fine head, size 4, size 2, fine tail)."""
from __future__ import annotations

from typing import Sequence

from ..errors import ConfigError
from ..settings import GenerateSettings
from .ddit import DDiTPolicy, Decision, divides


class StaticSchedule:
    what = "static schedule"
    needs_history = False  # decides from the step index alone (the loop keeps no latent history for it)

    def __init__(self, sizes: Sequence[int], grid: tuple[int, ...], available: Sequence[int]):
        bad = sorted({k for k in sizes if k not in available or not divides(grid, k)})
        if bad:
            raise ConfigError(f"{self.what} uses size(s) {bad} not available for grid {tuple(grid)} "
                              f"(available: {sorted(k for k in available if divides(grid, k))}); "
                              f"give a schedule within those sizes (--policy, --schedule) or allow the sizes (--sizes)")
        self.sizes = tuple(int(k) for k in sizes)

    def decide(self, step: int, history) -> Decision:
        return Decision(self.sizes[step], {}, "static")


class CoarseFirst(StaticSchedule):
    def __init__(self, steps: int, coarse_steps: int, size: int, grid, available):
        super().__init__([size] * coarse_steps + [1] * (steps - coarse_steps), grid, available)


def ladder_sizes(steps: int, head: int, n4: int, tail: int) -> tuple[int, ...]:
    """``head`` fine steps, ``n4`` at size 4, size 2 up to the last ``tail`` steps, which run fine (a monotone
    coarse-to-fine path after the head; head 0 starts coarse at step 0)."""
    n2 = steps - head - n4 - tail
    if min(head, n4, tail, n2) < 0:
        raise ConfigError(f"ladder head {head} + n4 {n4} + tail {tail} exceed the {steps} steps")
    return (1,) * head + (4,) * n4 + (2,) * n2 + (1,) * tail


class FineOnly(StaticSchedule):
    """Policy ``fine``: every step at size 1 (the untouched model; the reference every other policy is measured
    against)."""

    what = "fine policy"

    def __init__(self, steps: int, grid, available):
        super().__init__([1] * steps, grid, available)


class Ladder(StaticSchedule):
    def __init__(self, steps: int, head: int, n4: int, tail: int, grid, available):
        self.what = f"ladder policy (head {head}, n4 {n4}, tail {tail})"
        super().__init__(ladder_sizes(steps, head, n4, tail), grid, available)


def make_policy(settings: GenerateSettings, grid: tuple[int, ...], available: Sequence[int]):
    """The policy a generation job asks for: a static list, coarse-first, or ``settings.schedule.policy``. ``grid``
    is an image's (h, w) or a video's (F, h, w) token grid."""
    if settings.static is not None:
        return StaticSchedule(settings.static, grid, available)
    if settings.coarse_first is not None:
        k, size = settings.coarse_first
        return CoarseFirst(settings.steps, k, size, grid, available)
    sc = settings.schedule
    if sc.policy == "fine":
        return FineOnly(settings.steps, grid, available)
    if sc.policy == "ladder":
        return Ladder(settings.steps, sc.head, sc.n4, sc.tail, grid, available)
    if sc.policy == "probe":
        from .probe import ProbePolicy

        return ProbePolicy(sc, settings.steps, grid, available)
    return DDiTPolicy(sc, grid, available)
