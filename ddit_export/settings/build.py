"""Building a bundle: dtypes and precisions, the build and TensorRT settings."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from .core import DEFAULT_MODEL, DEFAULT_SIZES, check_shape, check_sizes

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
