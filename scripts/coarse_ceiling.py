"""How good can a coarse size's adapters get? A ceiling from the coarse head's shape (issue 19, the adapter target).

    python scripts/coarse_ceiling.py --model flux-mini-64 --sizes 2,4 --fit-prompts 16 --prompts 16 \
        --json docs/results/coarse-ceiling-flux-mini-64.json

A size-k step ends in its stem's head (models/flux.py ``stem_output``): per merged token, the velocity of its k×k
fine tokens (k²·C values) is ``deembed(h) + residual(x) [+ residual_sigma(x / sigma)]``: a linear map of the
trunk's d-wide output h plus linear maps of the token's own latent. Whatever the trunk computes, that velocity lies
in (a linear function of x) + (a d-dimensional subspace). When k²·C > d the subspace cannot hold every block
velocity, and no training of the adapters can recover what lies outside it.

The ceiling: fit that structure to the fine-only velocities of ``--fit-prompts`` training captions (least squares
for the linear maps of x and x/sigma, then the best d-dimensional subspace of what is left: its principal
components), then generate ``--prompts`` held-out captions with the adapters' quality schedule (static alternation,
``adapt/report.py``) in which every coarse step returns the fine velocity projected onto that structure: the best a
size-k head of width d can do at those steps. Reported beside the trained adapters on the same captions and noise.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ddit_export.runtime.backends.base import BackendBase  # noqa: E402 (after the checkout is on the path)


class _Record(BackendBase):
    """Wraps a backend: keeps (fine-token latents, sigma, velocity) of every fine call."""

    def __init__(self, inner):
        self.inner, self.sizes, self.calls = inner, inner.sizes, []

    def run(self, size, latents, cond, timestep, guidance, grid):
        v = self.inner.run(size, latents, cond, timestep, guidance, grid)
        self.calls.append((latents.detach().clone(), float(timestep.reshape(-1)[0]), v.detach().clone(), grid))
        return v


class _Ceiling(_Record):
    """At a coarse size: the fine velocity, projected on the size's head structure (fitted maps + subspace)."""

    def __init__(self, inner, fits: dict):
        super().__init__(inner)
        self.fits = fits

    def run(self, size, latents, cond, timestep, guidance, grid):
        from ddit_export.models.patching import merge_tokens, unmerge_tokens

        v = self.inner.run(1, latents, cond, timestep, guidance, grid)
        if size == 1:
            return v
        w, u = self.fits[size]
        x = merge_tokens(latents, grid, size).double()
        f = features(x, float(timestep.reshape(-1)[0]))
        base = f @ w
        r = merge_tokens(v, grid, size).double() - base
        return unmerge_tokens((base + (r @ u) @ u.T).to(v.dtype), grid, size)


def features(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """[x, x / max(sigma, floor), 1]: what the stem's residual maps and the head's bias may use."""
    from ddit_export.settings import SIGMA_FLOOR

    one = torch.ones(*x.shape[:-1], 1, dtype=x.dtype)
    return torch.cat([x, x / max(sigma, SIGMA_FLOOR), one], dim=-1)


def fit(calls, k: int, d: int):
    """Least squares of the block velocity on the block's features, then the top-d principal directions of the
    remainder; returns (W, U) and the fraction of velocity energy the structure misses on the fitting data."""
    from ddit_export.models.patching import merge_tokens

    fs, vs = [], []
    for lat, sigma, v, grid in calls:
        x = merge_tokens(lat, grid, k).double().reshape(-1, lat.shape[-1] * k * k)
        fs.append(features(x, sigma))
        vs.append(merge_tokens(v, grid, k).double().reshape(-1, v.shape[-1] * k * k))
    f, v = torch.cat(fs), torch.cat(vs)
    w = torch.linalg.lstsq(f, v).solution
    r = v - f @ w
    _, s, vt = torch.linalg.svd(r, full_matrices=False)
    u = vt[:d].T if d < vt.shape[0] else vt.T
    miss = r - (r @ u) @ u.T
    return w, u, float((miss ** 2).sum() / (v ** 2).sum()), int(v.shape[1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="flux-mini-64")
    p.add_argument("--sizes", default="2,4")
    p.add_argument("--fit-prompts", type=int, default=16, help="training-split captions the structure is fitted on")
    p.add_argument("--prompts", type=int, default=16, help="held-out captions the ceiling is measured on")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)

    from ddit_export.adapt.report import image_psnr, quality_schedules
    from ddit_export.api import build_settings
    from ddit_export.models.registry import load_model
    from ddit_export.quality.evaluate import eval_scenes
    from ddit_export.runtime.backends.torch import TorchBackend
    from ddit_export.runtime.generate import generate, initial_noise

    torch.set_num_threads(a.threads)
    sizes = tuple(int(s) for s in a.sizes.split(","))
    model = load_model(a.model)
    enc = model.extras["text_encoder"].config
    steps = model.default_steps
    geom = model.geometry()
    d = model.transformer.trunk.proj_out.in_features
    c = model.transformer.trunk.proj_out.out_features
    fit_caps = [s.caption for s in eval_scenes(a.fit_prompts, "train", 1, enc.max_length)]
    caps = [s.caption for s in eval_scenes(a.prompts, "heldout", 0, enc.max_length)]
    t0 = time.time()

    def run(backend, caption, i, static):
        gs = build_settings(model, prompts=[caption], static=static, cache={"mode": "off"}, carry="off")
        return generate(model, backend, gs, progress=False, latents=initial_noise(geom, 1, 1000 + i))

    base = TorchBackend(model.transformer)
    with base:
        rec = _Record(base)
        for i, cap in enumerate(fit_caps):
            run(rec, cap, i, (1,) * steps)
        fits, out = {}, {"model": a.model, "trunk_width": d, "channels_per_fine_token": c, "steps": steps,
                         "fit_prompts": len(fit_caps), "prompts": len(caps), "sizes": {}}
        for k in sizes:
            w, u, miss, dims = fit(rec.calls, k, d)
            fits[k] = (w, u)
            out["sizes"][str(k)] = {"block_values": dims, "head_width": d,
                                    "velocity_energy_outside_structure_fit": round(miss, 6)}
            print(f"k={k}: {dims} values per merged token, head width {d}: the structure misses "
                  f"{100 * miss:.3f}% of the fine velocity's energy (fit data)", flush=True)
        scheds = quality_schedules(steps, sizes, rules=False)
        ceil = _Ceiling(base, fits)
        for k in sizes:
            static = scheds[f"static-alt-k{k}"]["static"]
            ps_ceiling, ps_trained = [], []
            for i, cap in enumerate(caps):
                ref = run(base, cap, i, (1,) * steps).images[0]
                ps_ceiling.append(image_psnr(ref, run(ceil, cap, i, static).images[0]))
                ps_trained.append(image_psnr(ref, run(base, cap, i, static).images[0]))
            row = out["sizes"][str(k)]
            row.update(schedule="".join(map(str, static)), coarse_fraction=round(sum(s > 1 for s in static) / steps, 3),
                       ceiling_psnr_db=round(float(np.mean(ps_ceiling)), 2),
                       trained_adapters_psnr_db=round(float(np.mean(ps_trained)), 2))
            print(f"k={k} static alternation ({row['coarse_fraction']:.0%} coarse): ceiling "
                  f"{row['ceiling_psnr_db']} dB, trained adapters {row['trained_adapters_psnr_db']} dB "
                  f"({len(caps)} held-out captions, {time.time() - t0:.0f} s)", flush=True)
    if a.json:
        a.json.write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
