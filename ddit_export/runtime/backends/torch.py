"""PyTorch eager backend: the multi-patch model itself (FLUX or Wan)."""
from __future__ import annotations

import torch

from .base import BackendBase, image_ids


class TorchBackend(BackendBase):
    name = "torch"

    def __init__(self, model):
        self.model = model
        self.sizes = model.sizes

    def run(self, size, latents, cond, timestep, guidance, grid):
        m = self.model
        with torch.inference_mode():
            if getattr(m, "family", "flux") == "wan":
                return m(latents.to(m.dtype), timestep.to(m.dtype), cond.states.to(m.dtype), size=size, grid=grid)
            return m(latents.to(m.dtype), cond.states, cond.pooled, timestep.to(m.dtype),
                     image_ids(grid, str(latents.device), m.dtype), cond.txt_ids,
                     None if guidance is None else guidance.to(m.dtype), size=size, grid=grid)
