"""Patch-size schedules. Pure numpy: latents in, a patch size out. No torch model, no backend."""
from .ddit import DDiTPolicy, Decision, patch_std, sigma_at, third_difference  # noqa: F401
from .static import CoarseFirst, StaticSchedule, make_policy  # noqa: F401
from .trace import StepRecord, Trace  # noqa: F401
