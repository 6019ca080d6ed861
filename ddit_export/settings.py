"""Frozen settings objects: every default lives here, once."""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field

from .errors import ConfigError

#: Patch sizes in units of the model's own (fine) token. 1 = the untouched model.
DEFAULT_SIZES: tuple[int, ...] = (1, 2, 4)
#: the embedded default model: flux-mini-64 at 64x64 (1024 fine tokens), where a coarse step saves most (README);
#: flux-mini (32x32) stays a preset
DEFAULT_MODEL = "flux-mini-64"
DEFAULT_TAU = 0.001
DEFAULT_EPS = 0.4
MIN_WARMUP = 3  # the third-order difference needs four latents, so steps 0..2 always run fine
DEFAULT_WARMUP = 3
DEFAULT_LORA_RANK = 32
WINDOWS = ("any", "same-size", "fine")
#: what the rule takes the third difference of: the noisy latents (the paper) or the predicted clean sample x̂0
SIGNALS = ("latent", "x0")
VIDEO_STDS = ("clip", "frame")
#: Schedule policies (ddit_export/schedule/): "ddit" the paper's rule (the reference), "ladder" a static monotone
#: coarse-to-fine family, "probe" the adaptive policy, "fine" every step at size 1 (fine-only, no knobs).
POLICIES = ("ddit", "ladder", "probe", "fine")
PROBE_KNOBS = ("head", "n4", "tail", "extra", "detail")
#: the rule's variants beyond the paper (issue 19); left out of manifests and policy specs at their defaults
RULE_VARIANT_KNOBS = ("tau4", "signal", "hold")
#: The knobs each policy reads (the others in ScheduleSettings are kept but ignored by it).
POLICY_KNOBS = {"ddit": ("tau", "eps", "warmup", "window", "video_std", "tau4", "signal", "hold"), "ladder": ("head", "n4", "tail"),
                "probe": (*PROBE_KNOBS, "video_std"), "fine": ()}


@dataclass(frozen=True)
class ScheduleSettings:
    """Which schedule policy decides the patch size per step, and its knobs (one set per policy; the others are
    ignored). ``ddit``: the paper's rule (third-order latent difference, per-patch std, eps-percentile, threshold
    tau). ``ladder``: ``head`` fine steps, ``n4`` at size 4, size 2 until the last ``tail`` steps, which run fine.
    ``probe``: see schedule/probe.py."""

    policy: str = "ddit"
    tau: float = DEFAULT_TAU
    eps: float = DEFAULT_EPS
    warmup: int = DEFAULT_WARMUP
    # "any": the paper's rule, decided at every step. "same-size": decide only when the last three steps ran at
    # one size, else keep the current size; a coarse step changes the latents' third difference for the next
    # three steps, which with "any" locks the rule into three fine steps per coarse one (see calibration/).
    # "fine" (issue 19): decide only on windows of three fine steps; after a coarse decision hold that size for
    # ``hold`` steps, then run fine probe steps until the window is fine again.
    window: str = "any"
    tau4: float = 0.0  # ddit: size 4's own threshold (0: tau for every size)
    signal: str = "latent"  # ddit: Δ³ of the latents (the paper) or of the predicted clean sample x̂0 = x − σ·v
    hold: int = 4  # ddit with window "fine": coarse steps before the fine probe steps
    head: int = 0  # ladder/probe: fine steps first
    n4: int = 0  # ladder/probe: steps at size 4 after the head
    tail: int = 4  # ladder: fine steps at the end; probe: the fewest fine steps at the end
    extra: int = 4  # probe: more fine steps at the end for a prompt whose detail signal exceeds ``detail``
    detail: float = 0.15  # probe: threshold on the predicted clean sample's within-patch std after the head
    # video (Wan): the rule's per-patch std across all token frames ("clip") or per token frame ("frame")
    video_std: str = "clip"

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise ConfigError(f"policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        bad = [n for n in ("head", "n4", "tail", "extra") if getattr(self, n) < 0]
        if bad:
            raise ConfigError(f"schedule knob(s) {', '.join(bad)} must be >= 0")
        if not (self.tau > 0 and math.isfinite(self.tau)):
            raise ConfigError(f"tau must be > 0 and finite, got {self.tau}")
        if not 0 < self.eps < 1:
            raise ConfigError(f"eps must be in (0, 1), got {self.eps}")
        if self.warmup < MIN_WARMUP:
            raise ConfigError(f"warmup must be >= {MIN_WARMUP} (the third-order difference needs four latents), "
                              f"got {self.warmup}")
        if not (self.tau4 >= 0 and math.isfinite(self.tau4)):
            raise ConfigError(f"tau4 must be >= 0 (0: tau) and finite, got {self.tau4}")
        if self.signal not in SIGNALS:
            raise ConfigError(f"signal must be one of {', '.join(SIGNALS)}, got {self.signal!r}")
        if self.hold < 1:
            raise ConfigError(f"hold must be >= 1, got {self.hold}")
        if self.window not in WINDOWS:
            raise ConfigError(f"window must be one of {', '.join(WINDOWS)}, got {self.window!r}")
        if self.video_std not in VIDEO_STDS:
            raise ConfigError(f"video_std must be one of {', '.join(VIDEO_STDS)}, got {self.video_std!r}")


MAX_SEED = 2**63 - 1  # seeds are int64 everywhere (torch's generator, trace JSON, a C++ port)
# Upper bounds every path shares (CLI, Python API, service, build, evaluate), checked before any work: beyond them
# a run takes hours or the scheduler's resolution shift overflows (FLUX's μ grows with the token count; shapes.py
# bounds the tokens too).
MAX_STEPS = 1000
MAX_SIDE = 8192  # pixels per side (FLUX.1: up to 2048)
MAX_FRAMES = 1025  # video frames (Wan 2.1: 81)
MAX_FPS = 120  # frames per second of a written clip
#: Longest prompt in characters, checked before any model loads: the longest text any model here reads is FLUX's T5
#: at 512 tokens (about 2000 characters of English), so a longer prompt can only fail later, after the load.
MAX_PROMPT_CHARS = 20_000


def check_prompts(prompts):
    """Refuse (ConfigError) a prompt longer than MAX_PROMPT_CHARS characters, cheaply (no tokenizer, no model);
    ``prompts``: None, one str, or a sequence of str (others are left to the settings' own checks)."""
    for p in [prompts] if isinstance(prompts, str) else (prompts or ()):
        if isinstance(p, str) and len(p) > MAX_PROMPT_CHARS:
            raise ConfigError(f"prompt has {len(p)} characters; at most {MAX_PROMPT_CHARS} (the longest text any "
                              f"model here reads is 512 tokens)")


def check_shape(*, steps=None, height=None, width=None, frames=None, side=None):
    """Refuse (ConfigError) steps, sides or frames below 1 or above MAX_STEPS / MAX_SIDE / MAX_FRAMES. None means
    "the model's default" and is not checked."""
    if steps is not None and not 1 <= steps <= MAX_STEPS:
        raise ConfigError(f"steps must be >= 1, got {steps}" if steps < 1 else
                          f"steps must be <= {MAX_STEPS}, got {steps}")
    for name, v in (("height", height), ("width", width), ("side", side)):
        if v is not None and v < 1:
            raise ConfigError(f"{name} must be >= 1 pixel, got {v} (leave it out for the model's default)")
        if v is not None and v > MAX_SIDE:
            raise ConfigError(f"{name} must be <= {MAX_SIDE} pixels, got {v}")
    if frames is not None and not 1 <= frames <= MAX_FRAMES:
        raise ConfigError(f"frames must be >= 1, got {frames} (leave it out for the model's default)" if frames < 1
                          else f"frames must be <= {MAX_FRAMES}, got {frames}")


def parse_policy(spec: str, base: ScheduleSettings | None = None) -> ScheduleSettings:
    """``NAME[:KNOB=VALUE,...]`` (e.g. ``ladder:n4=4,tail=6``, ``ddit:tau=0.002``) -> ScheduleSettings. Knobs not
    given come from ``base`` (a profile keeps every policy's knobs, e.g. the rule's calibrated τ under a ladder)."""
    import dataclasses

    name, _, rest = spec.strip().partition(":")
    if name not in POLICIES:
        raise ConfigError(f"policy must be one of {', '.join(POLICIES)}, got {name!r}")
    base = ScheduleSettings() if base is None else base
    types = {f.name: f.type for f in dataclasses.fields(ScheduleSettings)}
    knobs = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or key not in types or key == "policy":
            raise ConfigError(f"policy {spec!r}: {item!r} is not KNOB=VALUE with a knob of "
                              f"{', '.join(k for k in types if k != 'policy')}")
        try:
            knobs[key] = {"float": float, "int": int}.get(types[key], str)(value)
        except ValueError:
            raise ConfigError(f"policy {spec!r}: {key} must be a {types[key]}, got {value!r}") from None
    return dataclasses.replace(base, policy=name, **knobs)


def check_sweep_knob(policy: str, knob: str):
    """A sweep of ``knob`` under ``policy`` must change something: refuse a knob the policy ignores (every row would
    be the same schedule)."""
    if knob not in POLICY_KNOBS[policy]:
        reads = ", ".join(POLICY_KNOBS[policy]) or "no knobs"
        raise ConfigError(f"--sweep {knob}: policy {policy} ignores {knob} (it reads {reads}), so every setting "
                          f"would be the same schedule; sweep one of its knobs or pick a policy with --policy")


def policy_spec(s: ScheduleSettings) -> str:
    """The short ``NAME:KNOB=VALUE,...`` form of a policy's own knobs (inverse of :func:`parse_policy`)."""
    if s.policy == "fine":
        return "fine"
    knobs = {"ddit": ("tau", "eps", "warmup", "window"), "ladder": ("head", "n4", "tail")}.get(s.policy)
    knobs = knobs if knobs is not None else PROBE_KNOBS
    if s.policy in ("ddit", "probe") and s.video_std != ScheduleSettings.video_std:
        knobs = (*knobs, "video_std")  # named only when not the default: image specs keep their old form
    if s.policy == "ddit":  # the issue-19 variants, likewise named only when set
        knobs = (*knobs, *(k for k in RULE_VARIANT_KNOBS if getattr(s, k) != getattr(ScheduleSettings, k)
                           and (k != "hold" or s.window == "fine")))
    return f"{s.policy}:" + ",".join(f"{k}={getattr(s, k):g}" if isinstance(getattr(s, k), float)
                                     else f"{k}={getattr(s, k)}" for k in knobs)


def check_sizes(sizes) -> tuple[int, ...]:
    """Patch sizes: powers of two, the fine size 1 among them, no repeats; returned sorted."""
    sizes = tuple(int(s) for s in sizes)
    if not sizes or 1 not in sizes:
        raise ConfigError(f"sizes must include the fine size 1, got {sizes}")
    bad = [s for s in sizes if s < 1 or (s & (s - 1))]
    if bad:
        raise ConfigError(f"sizes must be powers of two >= 1, got {bad}")
    if len(set(sizes)) != len(sizes):
        raise ConfigError(f"sizes repeat: {sizes}")
    return tuple(sorted(sizes))


@dataclass(frozen=True)
class AdapterSettings:
    """How the coarse-size adapters are built and initialised."""

    rank: int = DEFAULT_LORA_RANK
    init: str = "tile"  # "tile" (average in, copy out) or "pi" (pseudo-inverse bilinear resize, FlexiViT)
    lora_alpha: float | None = None  # None: alpha = rank (scale 1)

    def __post_init__(self):
        if self.rank < 0:
            raise ConfigError(f"LoRA rank must be >= 0, got {self.rank}")
        if self.init not in ("tile", "pi"):
            raise ConfigError(f"adapter init must be 'tile' or 'pi', got {self.init!r}")


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
    ``plan``: an explicit per-step list, 1 = computed, 0 = cached (replays a recorded trace)."""

    mode: str = "off"
    interval: int = 4
    order: int = 1
    warmup: int = 3
    tail: int = 1
    threshold: float | None = None
    plan: tuple[int, ...] | None = None

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


DTYPES = ("fp32", "fp16", "bf16")
#: ``build --precision``: fp32/fp16/bf16 are the graphs' dtype (``--dtype``); int8 quantizes the fp32 graphs (QDQ,
#: ONNX Runtime CPU, issue 22); fp8 is named so it can be refused with a reason (TensorRT/GPU only, not built here)
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "fp8")
QUANTIZED_PRECISIONS = ("int8",)
DEFAULT_CALIBRATION_SAMPLES = 8  # calibration generations (prompts) for --precision int8
#: ``build --precision int8 --int8-activations``: how the activations are quantized. ``u8``: uint8 with a zero point
#: (asymmetric, the default; ONNX Runtime's CPU kernels' layout); ``s8``: int8 with zero point 0 (symmetric), the
#: layout TensorRT's ONNX parser takes (``trt-check``'s Q/DQ lint). Weights are int8 symmetric per-channel in both.
INT8_ACTIVATIONS = ("u8", "s8")
DEFAULT_INT8_ACTIVATIONS = "u8"
FP8_UNSUPPORTED = ("--precision fp8 is not runnable on the CPU: ONNX Runtime's CPU provider has no FP8 kernels "
                   "(FP8 needs TensorRT on a GPU, which this build does not have); use --precision int8 for the CPU")
#: how ``adapt`` draws the schedules of its coarse-step trajectories: ``random`` (fine warm-up, then a random coarse
#: size on half the steps), ``ladders`` (the deployed family: ladders over the n4/tail range that ``calibrate``
#: sweeps, half of them with the step cache's extrapolated steps), ``both`` (a third random, two thirds ladders)
ADAPT_SCHEDULES = ("random", "ladders", "both")
PARITY_TOL = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 1e-1}  # max abs diff ONNX vs torch on random inputs


@dataclass(frozen=True)
class BuildSettings:
    """One ``ddit-export build``: which model, which sizes, at which resolution and precision, where to."""

    model: str = DEFAULT_MODEL
    weights: str | None = None
    adapters: str | None = None
    # None: the default sizes (1, 2, 4) that divide the token grid (the others dropped with one warning line);
    # sizes given explicitly must all divide it
    sizes: tuple[int, ...] | None = None
    height: int | None = None
    width: int | None = None
    frames: int | None = None  # video models: the clip length the graphs are built for (None: the model's)
    dtype: str = "fp32"
    out: str | None = None  # default engines/<model>
    text_len: int | None = None  # FLUX.1-dev: T5 length (default 512); pixel models: their encoder's max length
    parity_tol: float | None = None  # default PARITY_TOL[dtype]
    precision: str | None = None  # one of PRECISIONS; None: the dtype. fp16/bf16 set the dtype; int8 needs fp32 graphs
    calibration_prompts: str | None = None  # int8: calibration captions (default: the package's shipped file)
    calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES  # int8: calibration generations (one prompt each)
    # int8: one of INT8_ACTIVATIONS; None: DEFAULT_INT8_ACTIVATIONS with --precision int8 (and None otherwise)
    int8_activations: str | None = None

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        precision = self.dtype if self.precision is None else self.precision
        if precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if precision == "fp8":
            raise ConfigError(FP8_UNSUPPORTED)
        if precision in DTYPES and self.dtype not in ("fp32", precision):
            raise ConfigError(f"--precision {precision} and --dtype {self.dtype} disagree: give one of them")
        if precision in QUANTIZED_PRECISIONS and self.dtype != "fp32":
            raise ConfigError(f"--precision {precision} quantizes the fp32 graphs: leave --dtype out (got "
                              f"--dtype {self.dtype})")
        object.__setattr__(self, "precision", precision)
        if precision in DTYPES:
            object.__setattr__(self, "dtype", precision)
        if self.calibration_samples < 1:
            raise ConfigError(f"calibration samples must be >= 1, got {self.calibration_samples}")
        if self.int8_activations is not None and precision not in QUANTIZED_PRECISIONS:
            raise ConfigError(f"--int8-activations applies to --precision int8 (got --precision {precision})")
        if self.int8_activations is not None and self.int8_activations not in INT8_ACTIVATIONS:
            raise ConfigError(f"--int8-activations must be one of {', '.join(INT8_ACTIVATIONS)}, got "
                              f"{self.int8_activations!r}")
        if precision in QUANTIZED_PRECISIONS and self.int8_activations is None:
            object.__setattr__(self, "int8_activations", DEFAULT_INT8_ACTIVATIONS)
        if self.sizes is not None:
            object.__setattr__(self, "sizes", check_sizes(self.sizes))
        check_shape(height=self.height, width=self.width, frames=self.frames)
        if self.text_len is not None and self.text_len < 1:
            raise ConfigError(f"text length must be >= 1, got {self.text_len}")

    @property
    def load_sizes(self) -> tuple[int, ...]:
        """The sizes the model loads with (fresh adapters for these): the given ones, else the defaults."""
        return self.sizes if self.sizes is not None else DEFAULT_SIZES

    @property
    def tolerance(self) -> float:
        return self.parity_tol if self.parity_tol is not None else PARITY_TOL[self.dtype]

    @property
    def quantized(self) -> bool:
        return self.precision in QUANTIZED_PRECISIONS

    @property
    def torch_dtype(self):
        import torch

        return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.dtype]


@dataclass(frozen=True)
class AdaptSettings:
    """One ``ddit-export adapt``: self-distil the coarse-size adapters from the model's own fine size."""

    model: str = DEFAULT_MODEL
    weights: str | None = None
    sizes: tuple[int, ...] = DEFAULT_SIZES
    rank: int = DEFAULT_LORA_RANK
    init: str = "tile"
    lr: float = 1e-3
    lr_warmup: int = 50  # steps of linear warm-up
    batch: int = 16
    steps: int | None = None  # budgets: totals over resumed runs; at least one of the two
    minutes: float | None = None
    seed: int = 0
    work: str | None = None  # default runs/adapt-<model>
    out: str | None = None  # default: the pixel-model folder's transformer/ddit_adapters.safetensors, else WORK
    prompts_file: str | None = None  # one prompt a line; default (pixel models): scene-grammar captions
    num_prompts: int | None = None  # trajectories to sample (default: 512 captions, or every line of the file)
    sample_steps: int | None = None  # sampler steps of a trajectory (default: the model's)
    height: int | None = None
    width: int | None = None
    guidance: float = 3.5
    coarse_mix: float = 0.0  # fraction of trajectories that take coarse steps (drawn as ``schedules`` says)
    schedules: str = "random"  # one of ADAPT_SCHEDULES
    init_adapters: str | None = None  # start from this adapters file (same sizes and rank) instead of fresh adapters
    joint: tuple[tuple[int, int], ...] = ()  # more (height, width) trained with the same adapters, batches alternating
    ckpt_minutes: float = 3.0
    quality_minutes: float | None = None  # held-out PSNR vs fine-only every this many training minutes (quality.csv)
    patience: int | None = None  # stop (and write the adapters) after this many quality checks without a gain
    eval_images: int = 16  # prompts for the PSNR-vs-fine-only report before/after (0: skip)
    grad_clip: float = 1.0
    device: str = "cpu"
    dtype: str = "fp32"
    threads: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "sizes", check_sizes(self.sizes))
        if not any(k > 1 for k in self.sizes):
            raise ConfigError(f"sizes {self.sizes} have no coarse size to adapt (e.g. --sizes 1,2,4)")
        AdapterSettings(rank=self.rank, init=self.init)
        try:
            joint = tuple(tuple(int(v) for v in r) for r in self.joint)
        except (TypeError, ValueError):
            joint = None
        if joint is None or any(len(r) != 2 or min(r) < 1 for r in joint) or len(set(joint)) != len(joint):
            raise ConfigError(f"--joint takes distinct HxW resolutions (e.g. 32x32), got {self.joint!r}")
        object.__setattr__(self, "joint", joint)
        if self.steps is None and self.minutes is None:
            raise ConfigError("give a budget: --steps and/or --minutes")
        checks = [("lr", self.lr > 0), ("batch", self.batch >= 1), ("lr warm-up", self.lr_warmup >= 0),
                  ("steps", self.steps is None or self.steps >= 0),
                  ("minutes", self.minutes is None or self.minutes >= 0),
                  ("coarse mix", 0 <= self.coarse_mix <= 1), ("ckpt minutes", self.ckpt_minutes > 0),
                  ("eval images", self.eval_images >= 0), ("grad clip", self.grad_clip > 0),
                  ("number of prompts", self.num_prompts is None or self.num_prompts >= 1),
                  ("sample steps", self.sample_steps is None or self.sample_steps >= 4),
                  ("threads", self.threads is None or self.threads >= 1),
                  ("quality minutes", self.quality_minutes is None or self.quality_minutes > 0),
                  ("patience", self.patience is None or self.patience >= 1)]
        bad = [name for name, ok in checks if not ok]
        if bad:
            raise ConfigError(f"adapt: invalid {', '.join(bad)} "
                              f"(lr > 0, batch >= 1, coarse mix in [0, 1], sample steps >= 4, ...)")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.schedules not in ADAPT_SCHEDULES:
            raise ConfigError(f"schedules must be one of {', '.join(ADAPT_SCHEDULES)}, got {self.schedules!r}")
        if self.patience is not None and self.quality_minutes is None:
            raise ConfigError("--patience counts quality checks: give --quality-minutes too")
        if self.patience is not None and not self.eval_images:
            raise ConfigError("--patience needs held-out images to score (--eval-images >= 1)")

    @property
    def torch_dtype(self):
        import torch

        return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.dtype]


@dataclass(frozen=True)
class TrtSettings:
    """How ``build --backend trt`` plans and builds TensorRT engines (export/trt_plan.py, export/trt_build.py)."""

    max_batch: int = 1  # every profile's batch range is 1..max_batch; token counts are fixed per profile
    opt_batch: int | None = None  # None: max_batch
    optimization_level: int = 3  # TensorRT builder optimization level 0..5 (NVIDIA's demo/Diffusion uses 3)
    strip_plan: bool = True  # weight-stripped plans (STRIP_PLAN + REFIT_IDENTICAL), refitted at load from weights.bin
    timing_cache: str | None = None  # None: <bundle>/trt/timing.cache
    tf32: bool = False  # fp32 bundles only: allow TF32 matmuls
    workspace_gib: float | None = None  # None: TensorRT's default (the whole GPU)

    def __post_init__(self):
        if self.max_batch < 1:
            raise ConfigError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.opt_batch is not None and not 1 <= self.opt_batch <= self.max_batch:
            raise ConfigError(f"opt_batch must be in [1, max_batch={self.max_batch}], got {self.opt_batch}")
        if not 0 <= self.optimization_level <= 5:
            raise ConfigError(f"builder optimization level must be in 0..5, got {self.optimization_level}")
        if self.workspace_gib is not None and not self.workspace_gib > 0:
            raise ConfigError(f"workspace_gib must be > 0, got {self.workspace_gib}")


EVAL_SPLITS = ("train", "heldout", "graded")  # graded: zoo/scenes.graded_scenes, held-out triples
DETAIL_GRADES = (1, 2, 3, 4)  # zoo/scenes.GRADES


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
        object.__setattr__(self, "grades", tuple(int(g) for g in self.grades))
        if not self.grades or not set(self.grades) <= set(DETAIL_GRADES) or len(set(self.grades)) < len(self.grades):
            raise ConfigError(f"grades must be distinct values of {DETAIL_GRADES}, got {self.grades}")
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
            object.__setattr__(self, "grades", tuple(int(g) for g in self.grades))
            if not self.grades or not set(self.grades) <= set(DETAIL_GRADES):
                raise ConfigError(f"grades must be values of {DETAIL_GRADES}, got {self.grades}")
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
