"""What detail carry (runtime/carry.py) does to a schedule: PSNR against fine-only with and without it, same noise.

    python scripts/carry_effect.py --model flux-mini-64 --captions adapt --prompts 8 --json OUT.json
    python scripts/carry_effect.py --model flux-mini-64 --captions graded --prompts 8 --json OUT.json

``--captions adapt``: the held-out captions `ddit-export adapt` checks its adapters on (scene captions, seed 7919;
noise seeds 10000 + i, as its quality checks); ``graded``: held-out graded captions (zoo/scenes.py, grades 1-3).
Schedules: static alternation at ~43% coarse per coarse size (the adapter target's schedule), and ladders
``HEAD-N4-TAIL`` (``--ladders``), each also with the step cache every ``--cache-interval`` steps (``--stacks``).
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="flux-mini-64")
    ap.add_argument("--captions", choices=["adapt", "graded"], default="adapt")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--ladders", default="0-8-6,1-8-6,1-10-5,1-12-4", help="HEAD-N4-TAIL,...")
    ap.add_argument("--stacks", default="0-8-6,1-8-6,1-8-1", help="ladders also run with the step cache")
    ap.add_argument("--cache-interval", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)

    from ddit_export.adapt.report import image_psnr, quality_schedules
    from ddit_export.models.registry import load_model
    from ddit_export.runtime.backends.torch import TorchBackend
    from ddit_export.runtime.generate import generate, initial_noise
    from ddit_export.schedule.static import ladder_sizes
    from ddit_export.settings import CacheSettings, GenerateSettings, ScheduleSettings

    loaded = load_model(a.model)
    text = loaded.extras["text_encoder"].config
    if a.captions == "adapt":
        from ddit_export.adapt.prompts import scene_prompts

        prompts = scene_prompts(16, 7919, text.max_length)[: a.prompts]
    else:
        from ddit_export.zoo.scenes import graded_scenes

        prompts = [s.caption for s in graded_scenes(a.prompts, grades=(1, 2, 3), words=text.vocab,
                                                    max_words=text.max_length)]
    steps = loaded.default_steps
    geom = loaded.geometry(None, None)
    noise = torch.cat([initial_noise(geom, 1, 10_000 + i) for i in range(len(prompts))])
    common = dict(prompts=tuple(prompts), seed=10_000, steps=steps)
    runs = {n: (sc["static"], None) for n, sc in quality_schedules(steps, loaded.transformer.sizes, rules=False).items()
            if n.startswith("static-alt-")}
    lad = lambda spec: ladder_sizes(steps, *map(int, spec.split("-")))  # noqa: E731
    runs.update({f"ladder-{sp}": (lad(sp), None) for sp in filter(None, a.ladders.split(","))})
    cache = CacheSettings(mode="taylor", interval=a.cache_interval)
    runs.update({f"ladder-{sp}+cache-N{a.cache_interval}": (lad(sp), cache)
                 for sp in filter(None, a.stacks.split(","))})
    rows = {}
    with torch.no_grad(), TorchBackend(loaded.transformer) as be:
        ref = generate(loaded, be, GenerateSettings(**common, static=(1,) * steps), progress=False,
                       latents=noise).images
        for name, (static, c) in runs.items():
            row = {}
            for carry in ("off", "fine"):
                gs = GenerateSettings(**common, static=static, schedule=ScheduleSettings(carry=carry),
                                      **({} if c is None else {"cache": c}))
                r = generate(loaded, be, gs, progress=False, latents=noise)
                row[carry] = float(np.mean([image_psnr(x, y) for x, y in zip(ref, r.images)]))
                row["flops_ratio"] = r.trace.flops_ratio
                row["coarse_fraction"] = r.trace.coarse_fraction
            rows[name] = row
            print(f"{name:28s} FLOPs {row['flops_ratio']:.3f}  coarse {row['coarse_fraction']:.0%}  "
                  f"PSNR {row['off']:5.2f} dB -> carry {row['fine']:5.2f} dB", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"model": a.model, "captions": a.captions, "prompts": list(prompts), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
