"""Defaults, limits, the schedule settings and their spec strings, patch sizes, the adapters' shape."""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError

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
#: a coarse step's velocity: as the coarse variant gives it ("off"), or the last fine step's velocity plus the coarse
#: variant's per-block mean change ("fine"; runtime/carry.py)
CARRY_MODES = ("off", "fine")
#: Schedule policies (ddit_export/schedule/): "ddit" the paper's rule (the reference), "ladder" a static monotone
#: coarse-to-fine family, "probe" the adaptive policy, "fine" every step at size 1 (fine-only, no knobs).
POLICIES = ("ddit", "ladder", "probe", "fine")
PROBE_KNOBS = ("head", "n4", "tail", "extra", "detail")
#: the rule's variants beyond the paper (issue 19); left out of manifests and policy specs at their defaults
RULE_VARIANT_KNOBS = ("tau4", "signal", "hold")
#: knobs a manifest leaves out at their defaults, so older readers (the C++ runtime) see them only when set
OMIT_AT_DEFAULT = (*RULE_VARIANT_KNOBS, "carry")
#: The knobs each policy reads (the others in ScheduleSettings are kept but ignored by it).
POLICY_KNOBS = {"ddit": ("tau", "eps", "warmup", "window", "video_std", "tau4", "signal", "hold", "carry"),
                "ladder": ("head", "n4", "tail", "carry"), "probe": (*PROBE_KNOBS, "video_std", "carry"), "fine": ()}


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
    # every policy: "fine" gives a coarse step the last fine step's velocity plus the coarse variant's per-block
    # mean change (the within-block detail a coarse token cannot carry comes from the last fine step); "off": none
    carry: str = "off"

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
        if self.carry not in CARRY_MODES:
            raise ConfigError(f"carry must be one of {', '.join(CARRY_MODES)}, got {self.carry!r}")


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
    if s.carry != ScheduleSettings.carry:  # named only when set, as the rule's variants
        knobs = (*knobs, "carry")
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


RESIDUALS = ("linear", "sigma")
SIGMA_FLOOR = 0.02  # the "sigma" residual divides by max(sigma, this)


@dataclass(frozen=True)
class AdapterSettings:
    """How the coarse-size adapters are built and initialised."""

    rank: int = DEFAULT_LORA_RANK
    init: str = "tile"  # "tile" (average in, copy out) or "pi" (pseudo-inverse bilinear resize, FlexiViT)
    lora_alpha: float | None = None  # None: alpha = rank (scale 1)
    #: the coarse sizes' zero-initialised residual from the merged latent to the velocity: "linear" (one linear map,
    #: the same at every step) or "sigma" (plus a second one applied to latent / sigma, so the pass-through of the
    #: detail a coarse token cannot model can scale with the noise level as the velocity's does: v = (x_t - x0)/sigma)
    residual: str = "linear"

    def __post_init__(self):
        if self.rank < 0:
            raise ConfigError(f"LoRA rank must be >= 0, got {self.rank}")
        if self.init not in ("tile", "pi"):
            raise ConfigError(f"adapter init must be 'tile' or 'pi', got {self.init!r}")
        if self.residual not in RESIDUALS:
            raise ConfigError(f"adapter residual must be one of {', '.join(RESIDUALS)}, got {self.residual!r}")
