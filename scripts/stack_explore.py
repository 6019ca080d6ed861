"""Explicit stacks on flux-mini-64: a size per step, a cache plan or Taylor cache, detail carry; PSNR vs fine-only.

    python scripts/stack_explore.py --captions graded-cal --prompts 24 \
        --specs docs/results/graded-flux-mini-64/stack-explore/specs-8.json

``--specs``: a JSON object ``{name: {"sizes": "1444...", "plan": "1100...", "taylor": [N, warmup, tail],
"carry": "fine"}}`` (``plan`` and ``taylor`` optional, one at most; sizes and plan one character per step).
``--captions``: ``adapt`` (the 8 held-out captions `adapt` checks its adapters on, seed 7919), ``graded-cal`` (the
graded calibration captions of grades 1-3 the model reads), ``graded`` (the graded held-out captions). Noise seeds
10000 + i, as `scripts/carry_effect.py`. ``--carry-space x0|eps`` carries the within-block detail of the
predicted clean sample x0 = x - σ v or of the noise estimate x + (1 - σ) v instead of the velocity's (an
experiment: the runtime carries velocities only). Used for docs/results/graded-flux-mini-64.md.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch


class _SpaceCarry:
    """runtime/carry.DetailCarry in another space: the detail of x0 (``x0``) or of the noise estimate (``eps``)."""

    def __init__(self, geom, space, state):
        self.geom, self.space, self.state, self.last = geom, space, state, None

    def apply(self, k, v):
        from ddit_export.runtime.carry import carry_detail

        x, s = self.state["x"].float(), self.state["sigma"]
        v = v.float()
        f = x - s * v if self.space == "x0" else x + (1 - s) * v
        if k == 1:
            self.last = f.clone()
            return v
        if self.last is None:
            return v
        f = carry_detail(f, self.last, self.geom, k)  # the velocity's carry, on x0 or the noise estimate
        return (x - f) / s if self.space == "x0" else (f - x) / (1 - s)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="flux-mini-64")
    ap.add_argument("--captions", choices=["adapt", "graded-cal", "graded"], default="graded-cal")
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--specs", required=True)
    ap.add_argument("--carry-space", choices=["v", "x0", "eps"], default="v")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)

    import ddit_export.runtime.generate as gen
    from ddit_export.adapt.report import image_psnr
    from ddit_export.models.registry import load_model
    from ddit_export.runtime.backends.torch import TorchBackend
    from ddit_export.settings import CacheSettings, GenerateSettings, ScheduleSettings

    specs = json.loads(open(a.specs).read())
    loaded = load_model(a.model)
    text = loaded.extras["text_encoder"].config
    if a.captions == "adapt":
        from ddit_export.adapt.prompts import scene_prompts

        prompts = scene_prompts(16, 7919, text.max_length)[: a.prompts]
    elif a.captions == "graded-cal":
        from ddit_export.zoo.scenes import graded_calibration_scenes

        prompts = [s.caption for s in graded_calibration_scenes() if s.grade <= 3
                   and len(s.caption.split()) <= text.max_length][: a.prompts]
    else:
        from ddit_export.zoo.scenes import graded_scenes

        prompts = [s.caption for s in graded_scenes(a.prompts, grades=(1, 2, 3), words=text.vocab,
                                                    max_words=text.max_length)]
    steps = loaded.default_steps
    geom = loaded.geometry(None, None)
    noise = torch.cat([gen.initial_noise(geom, 1, 10_000 + i) for i in range(len(prompts))])
    common = dict(prompts=tuple(prompts), seed=10_000, steps=steps)
    state = {}
    if a.carry_space != "v":
        gen.make_carry = lambda schedule, g: _SpaceCarry(g, a.carry_space, state) if schedule.carry == "fine" else None
    with torch.no_grad(), TorchBackend(loaded.transformer) as be:
        run = be.run

        def spy(k, x, cond, tt, *rest, **kw):  # the latent and σ the carry needs (FLUX: tt = σ)
            state["x"], state["sigma"] = x, float(tt.flatten()[0])
            return run(k, x, cond, tt, *rest, **kw)

        be.run = spy
        ref = gen.generate(loaded, be, GenerateSettings(**common, static=(1,) * steps), progress=False,
                           latents=noise).images
        print(f"{a.model}, {len(prompts)} {a.captions} captions, carry space {a.carry_space}")
        for name, sp in specs.items():
            kw = {}
            if "taylor" in sp:
                n, w, t = sp["taylor"]
                kw["cache"] = CacheSettings(mode="taylor", interval=n, warmup=w, tail=t)
            if "plan" in sp:
                kw["cache"] = CacheSettings(mode="plan", plan=tuple(int(c) for c in sp["plan"]))
            gs = GenerateSettings(**common, static=tuple(int(c) for c in sp["sizes"]),
                                  schedule=ScheduleSettings(carry=sp.get("carry", "off")), **kw)
            r = gen.generate(loaded, be, gs, progress=False, latents=noise)
            p = [image_psnr(x, y) for x, y in zip(ref, r.images)]
            print(f"{name:34s} FLOPs {r.trace.flops_ratio:.3f}  PSNR {np.mean(p):5.2f} dB (min {np.min(p):5.2f})",
                  flush=True)


if __name__ == "__main__":
    main()
