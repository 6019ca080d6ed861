"""ddit-export: dynamic patch scheduling (DDiT) for diffusion transformers, from checkpoint to runtime."""

__version__ = "0.1.0"

from .errors import DDiTError  # noqa: F401  (light; everything heavy is imported by the submodules that need it)
