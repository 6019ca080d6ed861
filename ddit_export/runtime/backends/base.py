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


def variant_feeds(video: bool, latents, cond, timestep, guidance, grid, guidance_embeds: bool = False) -> dict:
    """The inputs of a variant graph by name, as the bundle's graphs take them (``export/onnx.py``): Wan's
    (latents, timestep, text states), or FLUX's with its pooled text, position ids and, for guidance-distilled
    models, the guidance."""
    if video:
        return {"hidden_states": latents, "timestep": timestep, "encoder_hidden_states": cond.states}
    feeds = {"hidden_states": latents, "encoder_hidden_states": cond.states, "pooled_projections": cond.pooled,
             "timestep": timestep, "img_ids": image_ids(grid), "txt_ids": cond.txt_ids}
    if guidance_embeds:
        feeds["guidance"] = guidance
    return feeds


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
