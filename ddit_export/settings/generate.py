"""One generation: the step cache and the generation settings."""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field

from ..errors import ConfigError
from .core import MAX_SEED, ScheduleSettings, check_prompts, check_shape, check_sizes

CACHE_MODES = ("off", "taylor", "plan")


@dataclass(frozen=True)
class CacheSettings:
    """The output-level step cache (runtime/cache.py): on a cached step the velocity is extrapolated from the last
    computed ones (TaylorSeer on the model output) instead of running the transformer; no graph changes, so it runs
    on every backend.

    ``taylor``: after ``warmup`` computed steps, compute every ``interval``-th step and extrapolate in between
    (``order`` 0: reuse, 1: linear, 2: quadratic in σ); the last ``tail`` steps are always computed. With
    ``threshold``, a step is also computed early once the estimated relative extrapolation error (the previous
    computed step's measured extrapolation error, scaled by the σ distance to the power order + 1) exceeds it.
    ``plan``: an explicit per-step list, 1 = computed, 0 = cached (replays a recorded trace). ``switch`` (taylor
    only): also compute the first step whose patch size differs from the last computed step's, and extrapolate from
    the velocities of the current size only (those of the old size are dropped there), so a size switch is never
    extrapolated across."""

    mode: str = "off"
    interval: int = 4
    order: int = 1
    warmup: int = 3
    tail: int = 1
    threshold: float | None = None
    plan: tuple[int, ...] | None = None
    switch: bool = False

    def __post_init__(self):
        if self.mode not in CACHE_MODES:
            raise ConfigError(f"cache mode must be one of {', '.join(CACHE_MODES)}, got {self.mode!r}")
        if self.interval < 1:
            raise ConfigError(f"cache interval must be >= 1, got {self.interval}")
        if not 0 <= self.order <= 2:
            raise ConfigError(f"cache order must be 0, 1 or 2, got {self.order}")
        if self.warmup < 1 or self.tail < 0:
            raise ConfigError(f"cache warm-up must be >= 1 and tail >= 0, got {self.warmup} and {self.tail}")
        if self.threshold is not None and not self.threshold > 0:
            raise ConfigError(f"cache threshold must be > 0, got {self.threshold}")
        if (self.mode == "plan") != (self.plan is not None):
            raise ConfigError("a cache plan goes with mode 'plan' (and mode 'plan' needs a plan)")
        if self.switch and self.mode == "plan":
            raise ConfigError("the cache's switch refresh goes with mode 'taylor' (a plan lists every step)")
        if self.plan is not None and (not self.plan or self.plan[0] != 1 or set(self.plan) - {0, 1}):
            raise ConfigError(f"a cache plan is 1 (computed) / 0 (cached) per step, starting with 1; got {self.plan}")

    @property
    def enabled(self) -> bool:
        return self.mode == "plan" or (self.mode == "taylor" and (self.interval > 1 or self.threshold is not None))

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict | None) -> "CacheSettings":
        if not d:
            return cls()
        try:
            return cls(**{**d, "plan": tuple(d["plan"]) if d.get("plan") is not None else None})
        except TypeError as e:
            raise ConfigError(f"bad cache settings {d}: {e}") from None


@dataclass(frozen=True)
class GenerateSettings:
    """One generation job: what the CLI's `generate` and the Python API take."""

    prompts: tuple[str, ...] = ("a large red circle in the center",)
    seed: int = 0
    steps: int = 28
    height: int | None = None  # None: the model's default
    width: int | None = None
    frames: int | None = None  # video models (Wan): frames of the clip (None: the model's default); images: None
    guidance: float = 3.5
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    static: tuple[int, ...] | None = None  # an explicit size per step, instead of the dynamic rule
    coarse_first: tuple[int, int] | None = None  # (k steps, size): FlexiDiT-style "coarse first"
    sizes: tuple[int, ...] | None = None  # patch sizes the schedule may use (None: all the backend has)
    cache: CacheSettings = field(default_factory=CacheSettings)

    def __post_init__(self):
        if isinstance(self.prompts, str):
            raise ConfigError("prompts must be a sequence of strings, got one str (wrap it: (prompt,))")
        if not self.prompts:
            raise ConfigError("at least one prompt is needed")
        bad = [p for p in self.prompts if not isinstance(p, str)]
        if bad:
            raise ConfigError(f"prompts must be strings, got {bad[0]!r}")
        check_prompts(self.prompts)
        try:
            seed = operator.index(self.seed)
        except TypeError:
            seed = None
        if seed is None or isinstance(self.seed, bool) or not 0 <= seed <= MAX_SEED:
            raise ConfigError(f"seed must be an integer in [0, 2**63 - 1], got {self.seed!r}")
        object.__setattr__(self, "seed", seed)
        check_shape(steps=self.steps, height=self.height, width=self.width, frames=self.frames)
        if not math.isfinite(self.guidance):
            raise ConfigError(f"guidance must be a finite number, got {self.guidance}")
        if self.sizes is not None:
            object.__setattr__(self, "sizes", check_sizes(self.sizes))
        dynamic = self.static is None and self.coarse_first is None
        if dynamic and self.schedule.policy == "ddit" and self.steps < self.schedule.warmup + 1:
            raise ConfigError(f"steps ({self.steps}) must be at least warmup + 1 ({self.schedule.warmup + 1}) "
                              f"for the dynamic schedule to decide anything")
        sc = self.schedule
        longest = sc.tail + (sc.extra if sc.policy == "probe" else 0)
        if dynamic and sc.policy in ("ladder", "probe") and sc.head + sc.n4 + longest > self.steps:
            raise ConfigError(f"{sc.policy} schedule: head {sc.head} + n4 {sc.n4} + tail {longest} exceed the "
                              f"{self.steps} steps")
        if self.static is not None and self.coarse_first is not None:
            raise ConfigError("give either a static schedule or coarse-first, not both")
        if self.static is not None and len(self.static) != self.steps:
            raise ConfigError(f"static schedule has {len(self.static)} sizes for {self.steps} steps")
        if self.coarse_first is not None and not 0 <= self.coarse_first[0] <= self.steps:
            raise ConfigError(f"coarse-first steps must be in [0, {self.steps}], got {self.coarse_first[0]}")
        if self.cache.plan is not None and len(self.cache.plan) != self.steps:
            raise ConfigError(f"cache plan has {len(self.cache.plan)} entries for {self.steps} steps")
