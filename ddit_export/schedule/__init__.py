"""Patch-size schedules. Pure numpy: latents in, a patch size out. No torch model, no backend."""
from .ddit import DDiTPolicy, Decision, patch_std, sigma_at, third_difference  # noqa: F401
from .oracle import OracleResult, ladder_family, oracle_search  # noqa: F401
from .static import CoarseFirst, Ladder, StaticSchedule, ladder_sizes, make_policy  # noqa: F401
from .trace import StepRecord, Trace  # noqa: F401
