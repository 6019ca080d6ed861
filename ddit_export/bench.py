"""Step-time benchmark: median seconds of one transformer call per patch size, in one run (compare as ratios)."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from .flops import step_flops


@dataclass
class SizeTiming:
    size: int
    tokens: int
    median_s: float
    runs: list
    flops: float


def step_times(model, backend, *, repeats: int = 7, warmup: int = 2, height=None, width=None) -> list[SizeTiming]:
    """Time ``backend.run`` at every available size on the same inputs, interleaving sizes run by run."""
    from .runtime.generate import initial_noise

    geom = model.geometry(height, width)
    cond = model.encode([model.default_prompt])
    x = initial_noise(geom, 1, 0, cond.states.device)
    t = torch.full((1,), 0.5, device=x.device)
    g = torch.full((1,), 3.5, device=x.device) if model.guidance_embeds else None
    sizes = geom.available_sizes(backend.sizes)
    runs = {k: [] for k in sizes}
    for i in range(warmup + repeats):
        for k in sizes:
            t0 = time.perf_counter()
            backend.run(k, x, cond, t, g, geom.grid)
            if i >= warmup:
                runs[k].append(time.perf_counter() - t0)
    cfg, rank = model.transformer_config, model.lora_rank
    return [SizeTiming(k, geom.tokens(k), statistics.median(runs[k]), runs[k],
                       step_flops(cfg, geom.tokens(1), cond.states.shape[1], k, rank)) for k in sizes]


def format_table(rows: list[SizeTiming]) -> str:
    fine = rows[0]
    out = [f"{'size':>4} {'tokens':>7} {'median ms':>10} {'speed-up':>9} {'GFLOPs':>8} {'FLOP ratio':>10}"]
    for r in rows:
        out.append(f"{r.size:>4} {r.tokens:>7} {r.median_s * 1e3:10.2f} {fine.median_s / r.median_s:8.2f}x "
                   f"{r.flops / 1e9:8.3f} {fine.flops / r.flops:9.2f}x")
    return "\n".join(out)
