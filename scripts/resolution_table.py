"""The resolution table of issue 11: DDiT's quality and speed-up at several image sides, one model.

    python scripts/resolution_table.py --model flux-mini --resolutions 32,64 --n-prompts 16 --repeats 5 \
        --threads 2 --out runs/resolution-flux-mini

At each side: the rule at the model's calibrated τ and the static schedule (the model's profile, or --static):
coarse fraction, FLOP ratio, PSNR vs fine-only, adherence; per-step wall-clock at every patch size on PyTorch and
ONNX Runtime (a bundle per side, built into OUT/bundles or reused from --bundles); OUT/resolution.{md,json}.
See ddit_export/resolution.py.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="flux-mini")
    ap.add_argument("--weights")
    ap.add_argument("--adapters")
    ap.add_argument("--resolutions", default="32,64", help="comma-separated image sides in pixels")
    ap.add_argument("--n-prompts", type=int, default=16)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--static", help="static schedule policy spec (default: the model's profile)")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per patch size (medians)")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--no-ort", action="store_true", help="PyTorch step times only (no bundle builds)")
    ap.add_argument("--bundles", help="folder of per-side bundles <model>-<side> (reused; built when missing)")
    ap.add_argument("--reference-n", type=int, default=200, help="rendered scenes behind the eval's Fréchet stats")
    ap.add_argument("--out", default="runs/resolution")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)

    from ddit_export.errors import ConfigError, DDiTError
    from ddit_export.resolution import resolution_table
    from ddit_export.settings import ResolutionSettings

    try:
        try:
            res = tuple(int(v) for v in a.resolutions.split(",") if v.strip())
            seeds = tuple(int(v) for v in a.seeds.split(",") if v.strip())
        except ValueError:
            raise ConfigError(f"--resolutions and --seeds take comma-separated integers, got {a.resolutions!r}, "
                              f"{a.seeds!r}") from None
        s = ResolutionSettings(model=a.model, weights=a.weights, adapters=a.adapters, resolutions=res,
                               n_prompts=a.n_prompts, seeds=seeds, steps=a.steps, static_policy=a.static,
                               repeats=a.repeats, threads=a.threads, ort=not a.no_ort, bundles=a.bundles,
                               reference_n=a.reference_n, out=a.out)
        log = (lambda *_: None) if a.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
        report = resolution_table(s, progress=not a.quiet, log=log)
    except DDiTError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(Path(report["files"][1]).read_text())
    for f in report["files"]:
        print(f"wrote {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
