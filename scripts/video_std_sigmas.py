"""The DDiT rule's two video std modes on a video model's own trajectories (issue 14): per mode, the σ of Δ³ at
every step of fine-only generations, and the rule's decisions and quality vs the fine-only clip at a few τ.

Needs the Wan runtime (models/wan.py, runtime video loop, zoo/clips.py); run from the repository root:
    python scripts/video_std_sigmas.py --model wan-mini --prompts 6 --taus 0.002,0.005,0.01 --out runs/video_std.json
(--model also takes a pixel-video model folder). Prompts are held-out clip captions (seeded); one prompt per
generation, as the rule decides per prompt; the coarse steps use whatever adapters the model has (none: training-free).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main(argv=None):
    ap = argparse.ArgumentParser(prog="video_std_sigmas")
    ap.add_argument("--model", default="wan-mini")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--taus", default="0.002,0.005,0.01")
    ap.add_argument("--window", default="any")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)

    import torch

    from ddit_export.api import build_settings
    from ddit_export.models.registry import load_model
    from ddit_export.quality.video import clip_array, compare_clips, mean_scores
    from ddit_export.runtime.backends.torch import TorchBackend
    from ddit_export.runtime.generate import generate, initial_noise
    from ddit_export.settings import ScheduleSettings
    from ddit_export.zoo import clips as C

    torch.set_num_threads(1)
    m = load_model(a.model, a.weights)
    rng = np.random.default_rng(2026)
    captions = [C.sample_clip(rng, "heldout").caption for _ in range(a.prompts)]
    geom = m.geometry()
    steps = a.steps or m.default_steps
    noise = initial_noise(geom, len(captions), a.seed)
    t0 = time.perf_counter()

    def run(i, schedule):
        gs = build_settings(m, prompts=[captions[i]], seed=a.seed, steps=steps, schedule=schedule)
        with TorchBackend(m.transformer) as backend:
            return generate(m, backend, gs, progress=False, latents=noise[i:i + 1])

    out = {"model": a.model, "grid": list(geom.grid), "steps": steps, "prompts": captions, "modes": {}}
    fine = []
    for mode in ("clip", "frame"):
        # τ below any σ: every step runs fine, and the trace records σ_k of the fine trajectory at every step
        traces = [run(i, ScheduleSettings(tau=1e-12, video_std=mode)) for i in range(len(captions))]
        if not fine:
            fine = [clip_array(r.images[0]) for r in traces]
        sig = {k: np.array([[s.sigmas.get(k, np.nan) for s in r.trace.steps] for r in traces]) for k in (2, 4)}
        rows = {"sigma_median_by_step": {k: np.round(np.nanmedian(v, 0), 6).tolist() for k, v in sig.items()}}
        for tau in (float(t) for t in a.taus.split(",")):
            res = [run(i, ScheduleSettings(tau=tau, video_std=mode, window=a.window)) for i in range(len(captions))]
            scores = mean_scores([compare_clips(clip_array(r.images[0]), f) for r, f in zip(res, fine)])
            rows[f"tau={tau:g}"] = {"coarse": float(np.mean([r.trace.coarse_fraction for r in res])),
                                    "flops": float(np.mean([r.trace.flops_ratio for r in res])),
                                    "sizes": ["".join(map(str, r.trace.sizes)) for r in res],
                                    **{k: round(v, 4) for k, v in scores.items()}}
        out["modes"][mode] = rows
    out["seconds"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(out, indent=1)
    if a.out:
        from pathlib import Path

        Path(a.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
