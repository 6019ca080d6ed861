"""The C++ runtime against Python on a video bundle (issue 23's C++ target: the same sizes every step and frames
>= 40 dB): for each caption, `ddit-run BUNDLE --prompt P --out lat.npy --trace t.json` and `ddit-export generate
--bundle BUNDLE --backend aoti` with the same seed, steps, schedule and cache; per schedule, whether the sizes
matched every step, the largest latent difference and the frames' PSNR (decoded as Python decodes them).

    python scripts/cpp_video_parity.py --bundle B --build build/cpp [--prompts 8] [--split heldout] \\
        [--policies profile,ddit:tau=0.003,ddit:tau=0.003+video_std=frame] [--cache taylor+interval=4+switch] \\
        [--json OUT]

B must be built with ``--backend aoti`` (a wan-pixel bundle: wan-mini, tiny-wan). A policy spec is Python's
``--policy`` with ``+`` for ``,`` (``profile``: the bundle's own); the C++ side gets the same knobs as ddit-run
options. ``--cache`` (every policy of the run): ``off`` or ``taylor`` with ``+KNOB=V`` of ``interval``, ``order``,
``warmup``, ``tail`` and a bare ``+switch``, given to both sides (default: the bundle's cache profile). Both sides run
with ``--threads``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def cpp_args(spec: str) -> list[str]:
    """ddit-run options for a policy spec (ddit:tau=..+video_std=.. or ladder:head=..+n4=..+tail=..; either with
    +carry=fine|off)."""
    if spec == "profile":
        return []
    name, _, knobs = spec.partition(":")
    kv = dict(k.split("=") for k in knobs.split("+") if k)
    carry = ["--carry", kv["carry"]] if "carry" in kv else []
    if name == "ddit":
        out = ["--policy", "ddit"] + [a for k in ("tau", "eps") if k in kv for a in (f"--{k}", kv[k])]
        return out + (["--video-std", kv["video_std"]] if "video_std" in kv else []) + carry
    if name == "ladder":
        return ["--ladder", f"{kv.get('head', 0)},{kv.get('n4', 0)},{kv.get('tail', 4)}"] + carry
    raise SystemExit(f"error: policy {spec!r}: this script maps ddit and ladder specs only")


CACHE_KNOBS = ("interval", "order", "warmup", "tail")


def cache_args(spec: str | None) -> tuple[dict | None, list[str]]:
    """(Python's ``cache`` dict, ddit-run options) for a cache spec: ``off``, or ``taylor`` with ``+KNOB=V`` of
    :data:`CACHE_KNOBS` and a bare ``+switch``; None: the bundle's profile on both sides."""
    if spec is None:
        return None, []
    mode, *rest = spec.split("+")
    if mode not in ("off", "taylor"):
        raise SystemExit(f"error: cache {spec!r}: the mode must be off or taylor")
    py, cpp = {"mode": mode}, ["--cache", mode]
    for item in rest:
        key, eq, value = item.partition("=")
        if key == "switch" and not eq:
            py["switch"] = True
            cpp.append("--cache-switch")
        elif key in CACHE_KNOBS and eq and value.isdigit():
            py[key] = int(value)
            cpp += [f"--cache-{key}", value]
        else:
            raise SystemExit(f"error: cache {spec!r}: {item!r} is not one of {', '.join(CACHE_KNOBS)}=N or switch")
    return py, cpp


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--build", type=Path, required=True, help="the CMake build folder of runtime/cpp (has ddit-run)")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--split", default="heldout", choices=("train", "heldout"))
    p.add_argument("--policies", default="profile")
    p.add_argument("--cache", help="e.g. taylor+interval=4+switch (default: the bundle's cache profile)")
    p.add_argument("--steps", type=int)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    cache, cache_cpp = cache_args(a.cache)
    run = a.build / "ddit-run"
    if not run.is_file():
        p.error(f"{run} does not exist: build runtime/cpp first (docs/guides/cpp-runtime.md)")
    import torch

    from ddit_export.api import generate_images
    from ddit_export.models.wan import video_pixels_to_frames
    from ddit_export.quality.video import frame_psnr
    from ddit_export.runtime.bundle_model import open_bundle
    from ddit_export.zoo import clips as C

    torch.set_num_threads(a.threads)
    model, _ = open_bundle(a.bundle, backend="aoti", threads=a.threads)  # the geometry and default steps
    geom = model.geometry()
    captions = [C.sample_clip(np.random.default_rng([0, 10**6 + i]), a.split).caption for i in range(a.prompts)]
    steps = a.steps or model.default_steps
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in a.policies.split(","):
            kw = {} if spec == "profile" else {"policy": spec.replace("+", ",")}
            if cache is not None:
                kw["cache"] = cache
            same, identical, worst_lat, psnrs, ratios = 0, 0, 0.0, [], []
            for i, cap in enumerate(captions):
                res, _ = generate_images(bundle=a.bundle, backend="aoti", prompts=[cap], seed=i, steps=steps,
                                         out=None, threads=a.threads, warn=lambda line: None, progress=False,
                                         **kw)
                lat, tr = Path(tmp) / "lat.npy", Path(tmp) / "t.json"
                r = subprocess.run([str(run), str(a.bundle), "--prompt", cap, "--seed", str(i), "--steps", str(steps),
                                    "--threads", str(a.threads), "--out", str(lat), "--trace", str(tr),
                                    *cpp_args(spec), *cache_cpp], capture_output=True, text=True)
                if r.returncode:
                    raise SystemExit(f"ddit-run failed: {r.stderr.strip()}")
                trace = json.loads(tr.read_text())
                same += [s["size"] for s in trace["steps"]] == res.trace.sizes
                x = np.load(lat)
                worst_lat = max(worst_lat, float(np.abs(x - res.latents.numpy()).max()))
                cpp_frames = np.stack([np.asarray(f) for f in video_pixels_to_frames(torch.from_numpy(x), geom)[0]])
                py_frames = np.stack([np.asarray(f) for f in res.images[0]])
                psnrs.append(float(frame_psnr(cpp_frames, py_frames).min()))  # identical frames: 100 dB
                identical += bool(np.array_equal(cpp_frames, py_frames))
                ratios.append(trace["flops_ratio"])
            worst = min(psnrs)
            rows.append({"policy": spec, "cache": a.cache, "clips": len(captions), "same_sizes": same,
                         "identical_clips": identical,
                         "max_abs_latent": worst_lat, "min_frame_psnr_db": worst,
                         "flops_ratio_mean": float(np.mean(ratios))})
            print(f"{spec}: sizes equal in {same}/{len(captions)} clips, frames identical in {identical}, max |latent "
                  f"diff| {worst_lat:.3g}, worst frame PSNR {worst:.1f} dB, FLOP ratio {np.mean(ratios):.3f}")
    if a.json:
        a.json.write_text(json.dumps({"bundle": str(a.bundle), "split": a.split, "steps": steps,
                                      "threads": a.threads, "torch": torch.__version__, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
