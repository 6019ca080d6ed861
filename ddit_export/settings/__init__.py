"""Frozen settings objects: every default lives here, once (one module per area; everything is importable from
``ddit_export.settings``).

- ``core``: defaults, limits, schedule settings and policy specs, patch sizes, the adapters' shape;
- ``generate``: the step cache and one generation;
- ``build``: dtypes, precisions, the build and TensorRT settings;
- ``train``: ``adapt``;
- ``measure``: evaluate, the resolution table, the Pareto bench, calibrate.
"""
from .core import (  # noqa: F401
    DEFAULT_SIZES, DEFAULT_MODEL, DEFAULT_TAU, DEFAULT_EPS, MIN_WARMUP, DEFAULT_WARMUP, DEFAULT_LORA_RANK, WINDOWS,
    SIGNALS, VIDEO_STDS, CARRY_MODES, POLICIES, PROBE_KNOBS, RULE_VARIANT_KNOBS, OMIT_AT_DEFAULT, POLICY_KNOBS,
    ScheduleSettings, MAX_SEED,
    MAX_STEPS, MAX_SIDE, MAX_FRAMES, MAX_FPS, MAX_PROMPT_CHARS, check_prompts, check_shape, parse_policy,
    check_sweep_knob, policy_spec, check_sizes, AdapterSettings, RESIDUALS, SIGMA_FLOOR)
from .generate import (  # noqa: F401
    CACHE_MODES, CacheSettings, GenerateSettings)
from .build import (  # noqa: F401
    DTYPES, PRECISIONS, QUANTIZED_PRECISIONS, DEFAULT_CALIBRATION_SAMPLES, INT8_ACTIVATIONS,
    DEFAULT_INT8_ACTIVATIONS, FP8_UNSUPPORTED, PARITY_TOL, BuildSettings, TrtSettings)
from .train import (  # noqa: F401
    ADAPT_OBJECTIVES, ADAPT_SCHEDULES, AdaptSettings)
from .measure import (  # noqa: F401
    EVAL_SPLITS, DETAIL_GRADES, EvalSettings, ResolutionSettings, ParetoSettings, CalibrateSettings)
