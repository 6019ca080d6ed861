"""Measuring: evaluate, the resolution table, the Pareto bench, calibrate."""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError
from .core import (DEFAULT_MODEL, DEFAULT_SIZES, ScheduleSettings, check_shape, check_sizes, check_sweep_knob,
                   parse_policy)
from .generate import CacheSettings

EVAL_SPLITS = ("train", "heldout", "graded")  # graded: zoo/scenes.graded_scenes, held-out triples
DETAIL_GRADES = (1, 2, 3, 4)  # zoo/scenes.GRADES


def _grades(grades, distinct: bool = True) -> tuple[int, ...]:
    """``--grades`` as a tuple of ints: at least one, each a detail grade, and (``distinct``) none twice."""
    gs = tuple(int(g) for g in grades)
    if not gs or not set(gs) <= set(DETAIL_GRADES) or distinct and len(set(gs)) < len(gs):
        raise ConfigError(f"--grades must be {'distinct ' if distinct else ''}values of {DETAIL_GRADES}, got {gs}")
    return gs


@dataclass(frozen=True)
class EvalSettings:
    """One ``ddit-export evaluate``: the fine-only baseline against DDiT (trained adapters and/or the training-free
    init) on scene captions, ``n_prompts`` x ``seeds`` images per variant. DDiT runs at the model's default τ and
    at every τ in ``taus``. ``adapted=None``: evaluate the adapted variant when the model has adapters (or
    ``adapters`` is given); ``True`` makes a model without adapters an error."""

    model: str = DEFAULT_MODEL
    weights: str | None = None
    adapters: str | None = None  # None: the model folder's own adapters, if any
    taus: tuple[float, ...] = ()
    n_prompts: int = 64
    seeds: tuple[int, ...] = (0,)
    steps: int | None = None  # None: the model's
    adapted: bool | None = None
    training_free: bool = True
    split: str = "heldout"
    prompt_seed: int = 2026
    sizes: tuple[int, ...] = DEFAULT_SIZES
    eps: float | None = None  # None: the model's
    warmup: int | None = None  # None: the model's
    batch: int = 16  # prompts per batched fine-only run (DDiT runs one prompt at a time: per-prompt decisions)
    out: str = "runs/eval"
    min_base_adherence: float = 0.9
    policies: tuple[str, ...] = ()  # schedule policies to evaluate besides the rule, NAME[:KNOB=VALUE,...] each
    side: int | None = None  # image height = width in pixels (scenes are square); None: the model's default
    grades: tuple[int, ...] = DETAIL_GRADES  # split="graded": the detail grades drawn, in turn

    def __post_init__(self):
        object.__setattr__(self, "grades", _grades(self.grades))
        for p in self.policies:
            parse_policy(p)
        check_shape(side=self.side, steps=self.steps)
        if self.n_prompts < 1:
            raise ConfigError(f"n_prompts must be >= 1, got {self.n_prompts}")
        if not self.seeds:
            raise ConfigError("at least one seed is needed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds repeat: {self.seeds}")
        bad = [t for t in self.taus if not (t > 0 and math.isfinite(t))]
        if bad:
            raise ConfigError(f"tau must be > 0 and finite, got {bad}")
        if self.split not in EVAL_SPLITS:
            raise ConfigError(f"split must be one of {', '.join(EVAL_SPLITS)}, got {self.split!r}")
        if self.batch < 1:
            raise ConfigError(f"batch must be >= 1, got {self.batch}")
        if self.adapted is False and self.adapters is not None:
            raise ConfigError("an adapters file was given but the adapted variant is switched off")
        object.__setattr__(self, "taus", tuple(dict.fromkeys(float(t) for t in self.taus)))
        object.__setattr__(self, "policies", tuple(self.policies))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        object.__setattr__(self, "sizes", check_sizes(self.sizes))


@dataclass(frozen=True)
class ResolutionSettings:
    """One resolution table (``scripts/resolution_table.py``): at each image side in ``resolutions``, the quality
    of the rule at the model's calibrated τ and of the static schedule ``static_policy`` (default: the model's
    profile when it is not the rule) against fine-only (:func:`ddit_export.quality.evaluate.evaluate` at that side),
    and the per-step wall-clock at every patch size on PyTorch and ONNX Runtime."""

    model: str = DEFAULT_MODEL
    weights: str | None = None
    adapters: str | None = None
    resolutions: tuple[int, ...] = (32, 64)
    n_prompts: int = 16
    seeds: tuple[int, ...] = (0,)
    steps: int | None = None
    static_policy: str | None = None
    repeats: int = 5  # timed calls per size (medians), sizes interleaved
    threads: int | None = None
    ort: bool = True  # build (or reuse) a bundle per side and time ONNX Runtime too
    bundles: str | None = None  # where the per-side bundles go / are reused from (default OUT/bundles)
    reference_n: int = 200  # rendered scenes behind the Fréchet reference (not in the table; kept small)
    out: str = "runs/resolution"

    def __post_init__(self):
        object.__setattr__(self, "resolutions", tuple(int(r) for r in self.resolutions))
        if not self.resolutions or any(r < 1 for r in self.resolutions):
            raise ConfigError(f"resolutions must be positive pixel sizes, got {self.resolutions}")
        if len(set(self.resolutions)) != len(self.resolutions):
            raise ConfigError(f"resolutions repeat: {self.resolutions}")
        if self.static_policy is not None:
            parse_policy(self.static_policy)
        for name in ("n_prompts", "repeats", "reference_n"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.reference_n < 2:
            raise ConfigError(f"reference_n must be >= 2, got {self.reference_n}")


@dataclass(frozen=True)
class ParetoSettings:
    """One ``ddit-export bench --pareto``: every method row on the same held-out captions and noise (pareto.py)."""

    model: str = DEFAULT_MODEL
    weights: str | None = None
    adapters: str | None = None
    n_prompts: int = 64  # quality: held-out captions
    seeds: tuple[int, ...] = (0,)
    wall_prompts: int = 4  # wall-clock: the first captions, one generation each, summed per round
    repeats: int = 3  # interleaved wall-clock rounds
    threads: int = 1  # torch and ONNX Runtime intra-op threads
    bundle: str | None = None  # a built bundle of the same model: the ONNX Runtime column
    steps: int | None = None
    prompt_seed: int = 2026
    calib_prompts: int = 4  # training-split captions for MagCache's own calibration
    peers: bool = True
    cache_dit: bool = False
    methods: tuple | None = None  # pareto.Method rows; None: pareto.default_methods
    append: str | None = None  # an earlier pareto.json of the same prompts: its other rows join the report
    oracle: float | None = None  # also search the per-prompt oracle (best ladder per prompt) at this FLOP budget
    grades: tuple[int, ...] | None = None  # None: the held-out complexity buckets; else the graded held-out split
    out: str = "out/pareto"

    def __post_init__(self):
        bad = [name for name, ok in [("n_prompts >= 2", self.n_prompts >= 2), ("seeds", bool(self.seeds)),
                                     ("wall_prompts >= 1", self.wall_prompts >= 1),
                                     ("repeats >= 1", self.repeats >= 1), ("threads >= 1", self.threads >= 1),
                                     ("calib_prompts >= 1", self.calib_prompts >= 1)] if not ok]
        if bad:
            raise ConfigError(f"bench --pareto: invalid {', '.join(bad)}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"--seeds repeat: {','.join(map(str, self.seeds))} (each seed once)")
        if self.oracle is not None and not 0 < self.oracle <= 1:
            raise ConfigError(f"--oracle is a FLOP budget in (0, 1], got {self.oracle}")
        if self.wall_prompts > self.n_prompts:
            raise ConfigError(f"--wall-prompts ({self.wall_prompts}) must be <= --n-prompts ({self.n_prompts})")
        if self.grades is not None:
            object.__setattr__(self, "grades", _grades(self.grades))


@dataclass(frozen=True)
class CalibrateSettings:
    """One ``ddit-export calibrate``: sweep one knob of a schedule policy on a calibration prompt set, measure each
    setting against fine-only, and choose the operating point: the fewest FLOPs that keep PSNR >= ``min_psnr`` and
    adherence within ``max_quality_drop`` points of fine-only; with ``target_speedup``, the best PSNR among the
    settings that also reach that FLOP-ratio speed-up (1 / FLOP ratio)."""

    prompts: str  # a calibration prompt file (one scene caption a line)
    sweep: tuple  # (knob, (value, ...))
    model: str = DEFAULT_MODEL
    weights: str | None = None
    adapters: str | None = None
    bundle: str | None = None
    policy: str | None = None  # NAME[:KNOB=VALUE,...] the sweep starts from; None: the model's profile
    n_prompts: int | None = None  # None: every prompt of the file
    seed: int = 0
    steps: int | None = None
    target_speedup: float | None = None
    max_quality_drop: float = 2.0  # adherence points (of 100) below fine-only
    min_psnr: float = 30.0
    work: str | None = None  # default runs/calibrate-<model>
    profile: str | None = None  # default calibration/<model>.json
    write: bool = True
    oracle: float | None = None  # also search the per-prompt oracle at this FLOP budget (quality/policies.py)
    cache: "CacheSettings | None" = None  # the step cache every setting of the sweep runs with (None: off)
    height: int | None = None  # the resolution the sweep generates at (None: the model's; recorded in the profile)
    width: int | None = None
    grades: tuple[int, ...] | None = None  # only the prompts of these detail grades (zoo/scenes.py Scene.grade)
    readable_only: bool = False  # drop the prompts the model cannot read (unknown words, too long), say how many
    frames: int | None = None  # video: the clip length the sweep generates (None: the model's; in the profile)
    #: video: also a temporal bar, the frame-change ratio vs fine-only within (low, high), e.g. (0.9, 1.1); None: off
    change_ratio: tuple[float, float] | None = None

    def __post_init__(self):
        if self.change_ratio is not None:
            lo, hi = (float(v) for v in self.change_ratio)
            if not (0 <= lo <= 1 <= hi and math.isfinite(hi)):
                raise ConfigError(f"--change-ratio takes LOW,HIGH with 0 <= LOW <= 1 <= HIGH, got {lo:g},{hi:g}")
            object.__setattr__(self, "change_ratio", (lo, hi))
        if self.grades is not None:
            object.__setattr__(self, "grades", _grades(self.grades, distinct=False))
        knob, values = self.sweep
        if knob == "policy" or knob not in {f.name for f in ScheduleSettings.__dataclass_fields__.values()}:
            raise ConfigError(f"--sweep: unknown knob {knob!r}")
        if not values:
            raise ConfigError("--sweep needs at least one value")
        typ = type(getattr(ScheduleSettings(), knob))  # what quality.calibrate.sweep_settings converts them to
        for v in values:
            try:
                typ(v)
            except (TypeError, ValueError):
                raise ConfigError(f"--sweep {knob}: {v!r} is not {'an' if typ is int else 'a'} {typ.__name__}") \
                    from None
        if self.target_speedup is not None and not self.target_speedup > 0:
            raise ConfigError(f"target speed-up must be > 0, got {self.target_speedup}")
        if not (self.max_quality_drop >= 0 and math.isfinite(self.max_quality_drop)):
            raise ConfigError(f"max quality drop must be >= 0 and finite, got {self.max_quality_drop}")
        if not math.isfinite(self.min_psnr):
            raise ConfigError(f"min PSNR must be a finite number of dB, got {self.min_psnr}")
        check_shape(steps=self.steps, frames=self.frames)
        if self.n_prompts is not None and self.n_prompts < 1:
            raise ConfigError(f"n_prompts must be >= 1, got {self.n_prompts}")
        if self.oracle is not None and not 0 < self.oracle <= 1:
            raise ConfigError(f"--oracle is a FLOP budget in (0, 1], got {self.oracle}")
        if self.policy is not None:
            check_sweep_knob(parse_policy(self.policy).policy, knob)
