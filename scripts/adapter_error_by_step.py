"""Where the coarse sizes' error lives: the relative velocity error of each coarse size against the fine model, per
sampling step, on fine-only trajectories of held-out captions (the states the fine model visits).

    python scripts/adapter_error_by_step.py --model flux-mini-64 --prompts 8 [--adapters FILE] [--height 64]

Prints a table (step, sigma, relative MSE per size) and writes --json. The relative error is
mean((v_k - v_1)^2) / mean(v_1^2) over the batch at that step. Per size also: ``k{k}_means``, the error of the
coarse velocity's block means alone (runtime/carry.py's block mean of v_k - v_1), and ``k{k}_carry``, the error
with detail carry from the previous step's fine velocity (what a coarse step right after a fine one gets).
"""
from __future__ import annotations

import argparse
import json

import torch


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="flux-mini-64")
    ap.add_argument("--adapters", help="adapters file (default: the model's own)")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--height", type=int)
    ap.add_argument("--width", type=int)
    ap.add_argument("--seed", type=int, default=10_000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)

    from ddit_export.adapt.prompts import PromptBank
    from ddit_export.adapt.student import position_ids, velocity
    from ddit_export.adapt.trajectories import sample_chunk
    from ddit_export.models.registry import load_model
    from ddit_export.runtime.carry import block_mean, carry_detail
    from ddit_export.zoo.scenes import graded_scenes

    loaded = load_model(a.model, adapters=a.adapters)
    mp = loaded.transformer
    geom = loaded.geometry(a.height, a.width)
    prompts = [s.caption for s in graded_scenes(a.prompts, grades=(1, 2, 3), words=loaded.extras["text_encoder"].config.vocab,
                                                max_words=loaded.extras["text_encoder"].config.max_length)]
    bank = PromptBank.encode(loaded, prompts)
    steps = loaded.default_steps
    guidance = 3.5 if loaded.guidance_embeds else None
    import contextlib

    chunk = sample_chunk(loaded, bank, list(range(len(prompts))), a.seed, steps, geom, guidance, [1] * steps,
                         contextlib.nullcontext())
    b = len(prompts)
    lat = chunk["latents"].reshape(steps, b, *chunk["latents"].shape[1:])
    vel = chunk["velocity"].reshape(steps, b, *chunk["velocity"].shape[1:])
    ts = chunk["timestep"].reshape(steps, b)[:, 0]
    cond = bank.take(torch.arange(b), mp.device)
    ids = position_ids(geom, mp.dtype, mp.device)
    g = None if guidance is None else torch.full((b,), guidance)
    sizes = [k for k in mp.sizes if k > 1 and geom.available(k)]
    rows = []
    with torch.no_grad():
        for i in range(steps):
            row = {"step": i, "sigma": float(ts[i])}
            ref = vel[i].float()
            for k in sizes:
                v = velocity(mp, lat[i], cond, ts[i].expand(b), ids, g, k, geom.grid).float()
                den = (ref ** 2).mean()
                row[f"k{k}"] = float(((v - ref) ** 2).mean() / den)
                sub = geom.token_channels // geom.latent_channels
                row[f"k{k}_means"] = float((block_mean(v - ref, geom.grid, k, sub, True) ** 2).mean() / den)
                if i > 0:
                    c = carry_detail(v, vel[i - 1].float(), geom, k)
                    row[f"k{k}_carry"] = float(((c - ref) ** 2).mean() / den)
            rows.append(row)
            nan = float("nan")
            print(f"step {i:2d} sigma {row['sigma']:.3f} " + " ".join(
                f"k{k} {row[f'k{k}']:.4f} (means {row[f'k{k}_means']:.4f}, carry {row.get(f'k{k}_carry', nan):.4f})"
                for k in sizes), flush=True)
    thirds = [(0, steps // 3), (steps // 3, 2 * steps // 3), (2 * steps // 3, steps)]

    def mean(key, lo, hi):  # k{k}_carry starts at step 1
        vals = [r[key] for r in rows[lo:hi] if key in r]
        return sum(vals) / len(vals)

    summary = {f"k{k}{x}": [mean(f"k{k}{x}", lo, hi) for lo, hi in thirds]
               for k in sizes for x in ("", "_means", "_carry")}
    print("mean relative error over the first / middle / last third of the steps:",
          "; ".join(f"{k} " + " / ".join(f"{v:.4f}" for v in vals) for k, vals in summary.items()))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"model": a.model, "adapters": a.adapters, "grid": list(geom.grid), "prompts": prompts,
                       "rows": rows, "thirds": summary}, f, indent=1)


if __name__ == "__main__":
    main()
