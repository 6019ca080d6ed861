"""A video bundle's schedules with and without the step cache, on held-out clip captions: FLOP ratio, per-frame PSNR
and SSIM against fine-only (the same caption and noise; mean over frames and clips, and the worst frame), the
frame-change ratio (quality/video.py: 1 = as much frame-to-frame change as fine-only) and the motion probe's adherence (quality/motion.py: colour present, motion right). `evaluate` and `calibrate` have no cache axis
for video; this measures the issue-23 "stacked with the cache" rows.

    python scripts/wan_stack_quality.py --bundle B [--prompts 32] [--backend aoti] [--threads 1] [--json OUT] \\
        [--settings "default;default+taylor:6;fine+taylor:6;fine+taylor:4"]

A setting is ``SCHEDULE[+taylor:N]``: ``default`` (the bundle's profile), ``fine`` or a ``--policy`` spec
(``ladder:head=6,n4=0,tail=16``); ``+taylor:N`` adds the step cache computing every N-th step (order 1).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def parse_setting(text: str) -> dict:
    sched, _, cache = text.partition("+taylor:")
    kw = {} if sched == "default" else {"policy": sched}
    if cache:
        kw["cache"] = {"mode": "taylor", "interval": int(cache), "order": 1}
    return kw


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--backend", default="aoti", choices=("aoti", "onnxruntime"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--settings", default="default;default+taylor:6;fine+taylor:6;fine+taylor:4")
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    import torch

    from ddit_export.api import build_settings
    from ddit_export.quality import motion as M
    from ddit_export.quality.video import clip_array, compare_clips, mean_scores
    from ddit_export.runtime.bundle_model import open_bundle
    from ddit_export.runtime.generate import generate
    from ddit_export.zoo import clips as C

    torch.set_num_threads(a.threads)
    model, backend = open_bundle(a.bundle, backend=a.backend, threads=a.threads)
    clips = [C.sample_clip(np.random.default_rng([0, 10**6 + i]), "heldout") for i in range(a.prompts)]

    def run(kw):
        frames, ratios = [], []
        with backend:
            for i in range(0, len(clips), 8):
                part = [c.caption for c in clips[i:i + 8]]
                r = generate(model, backend, build_settings(model, prompts=part, seed=i, **kw), progress=False)
                frames += [np.stack([np.asarray(f) for f in clip]) for clip in r.images]
                ratios.append(r.trace.flops_ratio)
        return np.stack(frames), float(np.mean(ratios))  # (n, F, H, W, 3) uint8

    def probe(frames):  # each clip as (F, 3, H, W) in [-1, 1], what the motion probe reads
        return M.aggregate([M.adherence(clip_array(f), c) for f, c in zip(frames, clips)])

    ref, _ = run({"policy": "fine"})
    rows = [{"setting": "fine-only", "flops_ratio": 1.0, **probe(ref)}]
    for text in a.settings.split(";"):
        got, ratio = run(parse_setting(text))
        scores = [compare_clips(g, r) for g, r in zip(got, ref)]  # per-frame PSNR/SSIM, temporal consistency
        sc = mean_scores(scores)
        rows.append({"setting": text, "flops_ratio": ratio, "psnr_db": sc["psnr_mean"],
                     "psnr_worst_frame_db": float(np.mean([min(c["psnr"]) for c in scores])), "ssim": sc["ssim_mean"],
                     "change_ratio": sc["change_ratio"], **probe(got)})
    for r in rows:
        q = (f"{r['psnr_db']:.1f} dB (worst frame {r['psnr_worst_frame_db']:.1f}), SSIM {r['ssim']:.3f}, change "
             f"ratio {r['change_ratio']:.3f}" if "psnr_db" in r else "-")
        print(f"{r['setting']:<28} FLOP ratio {r['flops_ratio']:.3f} ({1 / r['flops_ratio']:.2f}x)  {q}  "
              f"colour {r['colour']:.0%} motion {r['motion']:.0%}")
    if a.json:
        a.json.write_text(json.dumps({"bundle": str(a.bundle), "prompts": a.prompts, "split": "heldout",
                                      "backend": a.backend, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
