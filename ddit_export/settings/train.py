"""Training the coarse sizes' adapters (``ddit-export adapt``)."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from .build import DTYPES
from .core import DEFAULT_LORA_RANK, DEFAULT_MODEL, DEFAULT_SIZES, AdapterSettings, check_sizes

#: how ``adapt`` draws the schedules of its coarse-step trajectories: ``random`` (fine warm-up, then a random coarse
#: size on half the steps), ``ladders`` (the deployed family: ladders over the n4/tail range that ``calibrate``
#: sweeps, half of them with the step cache's extrapolated steps), ``both`` (a third random, two thirds ladders)
ADAPT_SCHEDULES = ("random", "ladders", "both")
#: the distillation loss: every output value, or only the coarse sizes' block means (what a carried step keeps)
ADAPT_OBJECTIVES = ("full", "blocks")


@dataclass(frozen=True)
class AdaptSettings:
    """One ``ddit-export adapt``: self-distil the coarse-size adapters from the model's own fine size."""

    model: str = DEFAULT_MODEL
    weights: str | None = None
    sizes: tuple[int, ...] = DEFAULT_SIZES
    rank: int = DEFAULT_LORA_RANK
    init: str = "tile"
    residual: str = "linear"  # AdapterSettings.residual: "linear" or "sigma"
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
    objective: str = "full"  # one of ADAPT_OBJECTIVES
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
        AdapterSettings(rank=self.rank, init=self.init, residual=self.residual)
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
        if self.objective not in ADAPT_OBJECTIVES:
            raise ConfigError(f"objective must be one of {', '.join(ADAPT_OBJECTIVES)}, got {self.objective!r}")
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
