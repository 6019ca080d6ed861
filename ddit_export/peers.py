"""The peers of the Pareto bench: diffusers' own step caches (and cache-dit's DBCache, optional) on the same
transformer, driven by the project's loop.

They run on the fine-only model: MultiPatchFlux at size 1 calls diffusers' FluxTransformer2DModel untouched, so a
hook that diffusers puts on that trunk sees exactly the calls FluxPipeline would make. Outside a pipeline the hooks
need the pipeline's ``with transformer.cache_context("cond"):`` around each call (pipeline_flux.py) and
``_reset_stateful_cache()`` between generations (DiffusionPipeline.maybe_free_model_hooks does it).
"""
from __future__ import annotations

import contextlib
import io
import re

import torch

from .errors import ConfigError
from .runtime.backends.torch import TorchBackend

PEERS = ("fbc", "taylorseer", "magcache", "pab", "fastercache", "dbcache")


class PeerBackend(TorchBackend):
    """The torch backend with one diffusers cache hook on the trunk. ``reset()`` before every generation."""

    name = "torch+peer"

    def __init__(self, model, peer: dict, steps: int):
        super().__init__(model)
        self.sizes = (1,)  # the peers run on the fine-only model
        self.peer, self.steps = dict(peer), steps
        self.trunk = model.trunk
        self.step = 0
        self.timestep = 1000.0

    def activate(self):
        kind = self.peer.get("kind")
        if kind == "dbcache":
            _enable_cache_dit(self.trunk, self.peer, self.steps)
        else:
            self.trunk.enable_cache(peer_config(self.peer, self.steps, lambda: self.timestep))
        return self

    def deactivate(self):
        if self.peer.get("kind") == "dbcache":
            import cache_dit

            cache_dit.disable_cache(self.trunk)
        else:
            self.trunk.disable_cache()

    def __enter__(self):
        return self.activate()

    def __exit__(self, *exc):
        self.deactivate()

    def reset(self):
        if self.peer.get("kind") == "dbcache":
            import cache_dit

            cache_dit.refresh_context(self.trunk, num_inference_steps=self.steps)  # transformer-only flows
        elif hasattr(self.trunk, "_reset_stateful_cache"):
            self.trunk._reset_stateful_cache()
        self.step = 0

    def run(self, size, latents, cond, timestep, guidance, grid):
        if size != 1:
            raise ConfigError("diffusers' caches run on the fine-only model (size 1)")
        self.timestep = float(timestep.flatten()[0]) * 1000
        with self.trunk.cache_context("cond", step_index=self.step, num_inference_steps=self.steps,
                                      timestep=self.timestep, sigma=self.timestep / 1000):
            out = super().run(size, latents, cond, timestep, guidance, grid)
        self.step += 1
        return out


def peer_config(peer: dict, steps: int, timestep_callback):
    """The diffusers config object for a peer row ({"kind": ..., knobs})."""
    from diffusers.hooks import (FasterCacheConfig, FirstBlockCacheConfig, MagCacheConfig,
                                 PyramidAttentionBroadcastConfig, TaylorSeerCacheConfig)

    kw = {k: v for k, v in peer.items() if k != "kind"}
    kind = peer.get("kind")
    if kind == "fbc":
        return FirstBlockCacheConfig(**kw)
    if kind == "taylorseer":
        return TaylorSeerCacheConfig(**{"taylor_factors_dtype": torch.float32, **kw})
    if kind == "magcache":
        return MagCacheConfig(num_inference_steps=steps, **kw)
    if kind == "pab":
        return PyramidAttentionBroadcastConfig(current_timestep_callback=timestep_callback, **kw)
    if kind == "fastercache":
        return FasterCacheConfig(current_timestep_callback=timestep_callback, **kw)
    raise ConfigError(f"unknown peer {kind!r}; one of {', '.join(PEERS)}")


def calibrate_magcache(model, backend_run, steps: int) -> list[float]:
    """MagCache's own calibration (MagCacheConfig(calibrate=True)): one generation per call of ``backend_run``
    with the hook in calibration mode; diffusers prints the ratios at the end of the run, which is where they are
    read from. Returns the ratios averaged over the runs."""
    runs = []
    for run in backend_run:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            run()
        m = re.search(r"Calibration Complete.*?\n(\[.*?\])", buf.getvalue(), re.S)
        if not m:
            raise ConfigError("MagCache calibration printed no ratios (diffusers changed?)")
        runs.append([float(v) for v in m.group(1).strip("[]").split(",")])
    return [sum(col) / len(col) for col in zip(*runs)]


def _enable_cache_dit(trunk, peer: dict, steps: int):
    try:
        import cache_dit
    except ImportError:
        raise ConfigError("the dbcache peer needs cache-dit: pip install 'ddit-export[peers]'") from None
    kw = {k: v for k, v in peer.items() if k != "kind"}
    cache_dit.enable_cache(trunk, cache_config=cache_dit.DBCacheConfig(num_inference_steps=steps, **kw))


def cache_dit_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("cache_dit") is not None
