"""PyTorch eager backend: the multi-patch model itself."""
from __future__ import annotations

import torch

from .base import BackendBase


class TorchBackend(BackendBase):
    name = "torch"

    def __init__(self, model):
        self.model = model
        self.sizes = model.sizes

    def run(self, size, latents, cond, timestep, guidance, grid):
        m = self.model
        with torch.inference_mode():
            return m(latents.to(m.dtype), cond.states, cond.pooled, timestep.to(m.dtype),
                     _image_ids(grid, latents.device, m.dtype), cond.txt_ids,
                     None if guidance is None else guidance.to(m.dtype), size=size, grid=grid)


_ID_CACHE: dict = {}


def _image_ids(grid, device, dtype):
    from ...models.patching import image_ids

    key = (grid, str(device), dtype)
    if key not in _ID_CACHE:
        _ID_CACHE[key] = image_ids(grid, dtype=dtype, device=device)
    return _ID_CACHE[key]
