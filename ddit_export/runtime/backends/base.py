"""The one interface every backend implements, so the loop and the scheduler never know which one runs."""
from __future__ import annotations

import functools
from typing import Protocol

import torch


class Backend(Protocol):
    """Runs variant ``size`` on fine-token latents; explicit lifecycle (``activate``/``deactivate`` or ``with``)."""

    name: str
    sizes: tuple[int, ...]

    def activate(self) -> None: ...

    def run(self, size: int, latents: torch.Tensor, cond, timestep: torch.Tensor, guidance: torch.Tensor | None,
            grid: tuple[int, int]) -> torch.Tensor: ...

    def deactivate(self) -> None: ...


@functools.lru_cache(maxsize=16)
def image_ids(grid: tuple[int, int], device: str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """FLUX's image position ids for a fine grid, cached: every step of a generation uses the same ones."""
    from ...models.patching import image_ids as make

    return make(grid, dtype=dtype, device=device)


class BackendBase:
    """Context-manager plumbing shared by the backends."""

    name = "base"

    def activate(self) -> None:
        pass

    def deactivate(self) -> None:
        pass

    def __enter__(self):
        self.activate()
        return self

    def __exit__(self, *exc):
        self.deactivate()
