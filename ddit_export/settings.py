"""Frozen settings objects: every default lives here, once."""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import ConfigError

#: Patch sizes in units of the model's own (fine) token. 1 = the untouched model.
DEFAULT_SIZES: tuple[int, ...] = (1, 2, 4)
DEFAULT_TAU = 0.001
DEFAULT_EPS = 0.4
MIN_WARMUP = 3  # the third-order difference needs four latents, so steps 0..2 always run fine
DEFAULT_WARMUP = 3
DEFAULT_LORA_RANK = 32


@dataclass(frozen=True)
class ScheduleSettings:
    """The DDiT rule: third-order latent difference, per-patch std, eps-percentile, threshold tau."""

    tau: float = DEFAULT_TAU
    eps: float = DEFAULT_EPS
    warmup: int = DEFAULT_WARMUP
    sizes: tuple[int, ...] = DEFAULT_SIZES

    def __post_init__(self):
        if not self.tau > 0:
            raise ConfigError(f"tau must be > 0, got {self.tau}")
        if not 0 < self.eps < 1:
            raise ConfigError(f"eps must be in (0, 1), got {self.eps}")
        if self.warmup < MIN_WARMUP:
            raise ConfigError(f"warmup must be >= {MIN_WARMUP} (the third-order difference needs four latents), "
                              f"got {self.warmup}")
        check_sizes(self.sizes)


def check_sizes(sizes) -> tuple[int, ...]:
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


@dataclass(frozen=True)
class GenerateSettings:
    """One generation job: what the CLI's `generate` and the Python API take."""

    prompts: tuple[str, ...] = ("a large red circle in the center",)
    seed: int = 0
    steps: int = 28
    height: int | None = None  # None: the model's default
    width: int | None = None
    guidance: float = 3.5
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    static: tuple[int, ...] | None = None  # an explicit size per step, instead of the dynamic rule
    coarse_first: tuple[int, int] | None = None  # (k steps, size): FlexiDiT-style "coarse first"

    def __post_init__(self):
        if not self.prompts:
            raise ConfigError("at least one prompt is needed")
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if self.static is None and self.coarse_first is None and self.steps < self.schedule.warmup + 1:
            raise ConfigError(f"steps ({self.steps}) must be at least warmup + 1 ({self.schedule.warmup + 1}) "
                              f"for the dynamic schedule to decide anything")
        if self.static is not None and self.coarse_first is not None:
            raise ConfigError("give either a static schedule or coarse-first, not both")
        if self.static is not None and len(self.static) != self.steps:
            raise ConfigError(f"static schedule has {len(self.static)} sizes for {self.steps} steps")
        if self.coarse_first is not None and not 0 <= self.coarse_first[0] <= self.steps:
            raise ConfigError(f"coarse-first steps must be in [0, {self.steps}], got {self.coarse_first[0]}")


DTYPES = ("fp32", "fp16", "bf16")
PARITY_TOL = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 1e-1}  # max abs diff ONNX vs torch on random inputs


@dataclass(frozen=True)
class BuildSettings:
    """One ``ddit-export build``: which model, which sizes, at which resolution and precision, where to."""

    model: str = "flux-mini"
    weights: str | None = None
    adapters: str | None = None
    sizes: tuple[int, ...] = DEFAULT_SIZES
    height: int | None = None
    width: int | None = None
    dtype: str = "fp32"
    out: str | None = None  # default engines/<model>
    text_len: int | None = None  # FLUX.1-dev: T5 length (default 512); pixel models: their encoder's max length
    parity_tol: float | None = None  # default PARITY_TOL[dtype]

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        object.__setattr__(self, "sizes", check_sizes(self.sizes))
        if self.text_len is not None and self.text_len < 1:
            raise ConfigError(f"text length must be >= 1, got {self.text_len}")

    @property
    def tolerance(self) -> float:
        return self.parity_tol if self.parity_tol is not None else PARITY_TOL[self.dtype]

    @property
    def torch_dtype(self):
        import torch

        return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.dtype]
