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
            # a bf16 model (build --dtype bf16's twin) takes every input in bf16; the velocity goes back in the
            # latents' dtype (float32), as the bundle backends return it
            dt = m.dtype
            return m(latents.to(dt), cond.states.to(dt), cond.pooled.to(dt), timestep.to(dt),
                     image_ids(grid, str(latents.device), dt), cond.txt_ids.to(dt),
                     None if guidance is None else guidance.to(dt), size=size, grid=grid).to(latents.dtype)
