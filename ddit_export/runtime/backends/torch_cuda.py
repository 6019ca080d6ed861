"""PyTorch CUDA backend: the multi-patch model in bf16 with one CUDA graph per variant.

Per (size, batch, grid, text length): static input buffers, a warm-up on a side stream, one
``torch.cuda.CUDAGraph`` capture, then each step copies its inputs into the buffers and replays. All graphs share
one memory pool: steps never overlap, so their activations can live in the same memory (the PyTorch counterpart of
the TensorRT plan's one activation buffer). Same interface as :class:`TorchBackend`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import ConfigError
from .base import BackendBase


def require_cuda(device="cuda"):
    """Raise a clear error when ``device`` is not a usable CUDA device."""
    if not torch.cuda.is_available():
        why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise ConfigError(f"the torch-cuda backend needs a CUDA GPU: {why} (torch {torch.__version__}); use the "
                          f"torch backend (CPU) or ONNX Runtime instead")
    dev = torch.device(device)
    if dev.type != "cuda":
        raise ConfigError(f"the torch-cuda backend runs on a CUDA device, got {device!r}")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"CUDA device {dev.index} does not exist ({torch.cuda.device_count()} visible)")
    return dev


@dataclass
class _Slot:
    """One variant's static buffers, output and captured graph."""

    inputs: dict
    output: torch.Tensor | None = None
    graph: object = None
    cond: object = None  # the Conditioning last copied in (skip the copy when it repeats)


class TorchCudaBackend(BackendBase):
    name = "torch-cuda"

    def __init__(self, model, *, dtype=torch.bfloat16, device="cuda", cuda_graphs: bool = True, warmup: int = 2):
        self.device = require_cuda(device)
        self.model = model.to(device=self.device, dtype=dtype).eval()
        self.dtype, self.sizes = dtype, model.sizes
        self.cuda_graphs, self.warmup = cuda_graphs, warmup
        self.slots: dict = {}
        self.pool = None

    def deactivate(self):
        self.slots.clear()
        self.pool = None
        torch.cuda.empty_cache()

    # ---- capture ------------------------------------------------------------------------------------------
    def _forward(self, size: int, grid, x: dict):
        if getattr(self.model, "family", "flux") == "wan":
            return self.model(x["latents"], x["timestep"], x["states"], size=size, grid=grid)
        return self.model(x["latents"], x["states"], x["pooled"], x["timestep"], x["img_ids"], x["txt_ids"],
                          x.get("guidance"), size=size, grid=grid)

    def _slot(self, size, latents, cond, guidance, grid) -> _Slot:
        key = (size, latents.shape[0], tuple(grid), cond.states.shape[1])
        if key in self.slots:
            return self.slots[key]
        from ...models.patching import image_ids

        b, dt, dev = latents.shape[0], self.dtype, self.device
        inputs = {"latents": torch.zeros(latents.shape, dtype=dt, device=dev),
                  "states": torch.zeros((b,) + tuple(cond.states.shape[1:]), dtype=dt, device=dev),
                  "timestep": torch.zeros(b, dtype=dt, device=dev)}
        if getattr(self.model, "family", "flux") != "wan":  # Wan takes no pooled vector and no position ids
            inputs.update(pooled=torch.zeros((b,) + tuple(cond.pooled.shape[1:]), dtype=dt, device=dev),
                          img_ids=image_ids(tuple(grid), dtype=dt, device=dev),
                          txt_ids=torch.zeros(tuple(cond.txt_ids.shape), dtype=dt, device=dev))
        if guidance is not None:
            inputs["guidance"] = torch.zeros(b, dtype=dt, device=dev)
        slot = _Slot(inputs)
        self._load(slot, latents, cond, torch.zeros(b), guidance)
        with torch.inference_mode():
            side = torch.cuda.Stream(dev)
            side.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(side):  # warm-up off the default stream, as CUDA graph capture requires
                for _ in range(max(self.warmup, 1)):
                    slot.output = self._forward(size, grid, inputs)
            torch.cuda.current_stream(dev).wait_stream(side)
            if self.cuda_graphs:
                self.pool = self.pool or torch.cuda.graph_pool_handle()
                slot.graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(slot.graph, pool=self.pool):
                    slot.output = self._forward(size, grid, inputs)
        self.slots[key] = slot
        return slot

    def prepare(self, latents, cond, guidance, grid, sizes=None):
        """Capture every variant now (before timing), instead of at each size's first step."""
        for k in sizes or self.sizes:
            self._slot(k, latents, cond, guidance, grid)

    # ---- running ------------------------------------------------------------------------------------------
    def _load(self, slot: _Slot, latents, cond, timestep, guidance):
        x = slot.inputs
        x["latents"].copy_(latents)
        x["timestep"].copy_(timestep)
        if guidance is not None:
            x["guidance"].copy_(guidance)
        if slot.cond is not cond:
            x["states"].copy_(cond.states)
            if "pooled" in x:
                x["pooled"].copy_(cond.pooled)
                x["txt_ids"].copy_(cond.txt_ids)
            slot.cond = cond

    def run(self, size, latents, cond, timestep, guidance, grid):
        if size not in self.sizes:
            raise ConfigError(f"patch size {size} is not one of this model's sizes {self.sizes}")
        slot = self._slot(size, latents, cond, guidance, grid)
        self._load(slot, latents, cond, timestep, guidance)
        if slot.graph is not None:
            slot.graph.replay()
        else:
            with torch.inference_mode():
                slot.output = self._forward(size, grid, slot.inputs)
        # a copy, on the caller's device: the static output is overwritten by the next replay
        return slot.output.to(latents.device, torch.float32, copy=True)
