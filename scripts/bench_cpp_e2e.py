"""Whole generations through the C++ runtime (issue 21): prompt in, image (or clip) out, with ``ddit-run`` against the Python
AOTInductor path (``generate --backend aoti``) with the same settings, and the cost of opening a bundle with and
without the sha256 check.

    python scripts/bench_cpp_e2e.py --bundle BUNDLE --build build/cpp [--rounds 5] [--threads 1] [--json out.json]

BUNDLE is built with ``ddit-export build --backend aoti``. Each round runs every setting once in each runtime,
settings interleaved, so a busy machine slows all of them alike; the reported time is the median over rounds of
one whole generation (C++: ``ddit_generate`` = encode + denoise + decode, timed inside ``ddit-run``, the median
of three runs in one process; Python: ``generate`` with decoding, in this process, after a warm-up run). Every
setting's C++ image is compared with Python's, pixel for pixel (a video bundle: every frame of the clip).
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SETTINGS = {  # name: (ddit-run flags, build_settings keyword arguments)
    "fine-only": (None, {"policy": "fine"}),
    "default schedule": ([], {}),
    "fine-only + cache N=6": (None, {"policy": "fine", "cache": {"mode": "taylor", "interval": 6}}),
    "default + cache N=6": (["--cache", "taylor", "--cache-interval", "6"], {"cache": {"mode": "taylor", "interval": 6}}),
}


def cpp_flags(name: str, steps: int) -> list[str]:
    flags, _ = SETTINGS[name]
    if flags is None:  # fine-only: every step at size 1 (ddit-run has no "fine" policy; a static list says it)
        fine = ["--schedule", ",".join(["1"] * steps)]
        return fine + (["--cache", "taylor", "--cache-interval", "6"] if "cache" in name else [])
    return flags


def run_cpp(exe: Path, bundle: Path, prompt: str, flags: list[str], out: Path, threads: int, repeat: int) -> float:
    cmd = [str(exe), str(bundle), "--prompt", prompt, "--seed", "0", "--out", str(out), "--threads", str(threads),
           "--repeat", str(repeat), "--no-verify", *flags]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"error: ddit-run failed: {r.stderr.strip()[-2000:]}")
    return float(re.search(r"median ([0-9.]+) s over", r.stdout).group(1))


def open_seconds(exe: Path, bundle: Path, verify: bool, threads: int) -> float:
    """Seconds of ddit_open_ex (ddit-run prints them), in a one-step generation's process."""
    cmd = [str(exe), str(bundle), "--prompt", "a", "--steps", "1", "--schedule", "1", "--threads", str(threads),
           "--out", str(Path(tempfile.gettempdir()) / "ddit-open.npy")]
    r = subprocess.run(cmd + ([] if verify else ["--no-verify"]), capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"error: ddit-run failed: {r.stderr.strip()[-2000:]}")
    return float(re.search(r"open ([0-9.]+) s", r.stdout).group(1))


def pixels(out: Path, py_image):
    """(C++, Python) uint8 arrays of one generation: the image, or a clip's frames (ddit-run writes NAME_fNN.png)."""
    from PIL import Image

    if isinstance(py_image, list):  # a video: its frames
        frames = sorted(out.parent.glob(f"{out.stem}_f*.png"))
        return (np.stack([np.asarray(Image.open(f).convert("RGB")) for f in frames]),
                np.stack([np.asarray(f.convert("RGB")) for f in py_image]))
    return np.asarray(Image.open(out).convert("RGB")), np.asarray(py_image.convert("RGB"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--build", required=True, help="the CMake build folder of runtime/cpp")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json")
    a = ap.parse_args()
    import torch

    from ddit_export.api import build_settings
    from ddit_export.runtime.bundle_model import open_bundle
    from ddit_export.runtime.generate import generate

    torch.set_num_threads(a.threads)
    bundle, exe = Path(a.bundle), Path(a.build) / "ddit-run"
    model, backend = open_bundle(bundle, backend="aoti", threads=a.threads)
    prompt, steps = model.default_prompt, model.default_steps
    py_s = {n: build_settings(model, prompts=prompt, seed=0, **kw) for n, (_, kw) in SETTINGS.items()}
    times = {n: {"cpp": [], "python": []} for n in SETTINGS}
    identical, traces = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in SETTINGS:  # warm-up, and the pixel comparison
            out = Path(tmp) / f"{len(identical)}.png"
            run_cpp(exe, bundle, prompt, cpp_flags(n, steps), out, a.threads, 1)
            r = generate(model, backend, py_s[n], progress=False)
            cpp_px, py_px = pixels(out, r.images[0])
            identical[n] = {"identical": bool(np.array_equal(cpp_px, py_px)),
                            "pixels_differing": int((cpp_px != py_px).any(-1).sum())}
            traces[n] = {"flops_ratio": r.trace.flops_ratio, "sizes": "".join(map(str, r.trace.sizes)),
                         "computed": "".join("1" if k == "model" else "0" for k in r.trace.kinds)}
        for _ in range(a.rounds):
            for n in SETTINGS:
                times[n]["cpp"].append(run_cpp(exe, bundle, prompt, cpp_flags(n, steps), Path(tmp) / "x.png",
                                               a.threads, 3))  # median of 3 in one process: past the first run
                t0 = time.perf_counter()
                generate(model, backend, py_s[n], progress=False)
                times[n]["python"].append(time.perf_counter() - t0)
    opens = {v: statistics.median(open_seconds(exe, bundle, v, a.threads) for _ in range(5)) for v in (True, False)}
    med = {n: {k: statistics.median(v) for k, v in t.items()} for n, t in times.items()}
    fine = med["fine-only"]["cpp"]
    rows = {n: {**med[n], **traces[n], **identical[n], "cpp_speedup_vs_cpp_fine": fine / med[n]["cpp"],
                "cpp_vs_python": med[n]["python"] / med[n]["cpp"]} for n in SETTINGS}
    size = sum(f.stat().st_size for f in (bundle / "weights.bin", bundle / model.manifest.aoti["package"]))
    result = {"bundle": str(bundle), "threads": a.threads, "rounds": a.rounds, "steps": steps, "prompt": prompt,
              "rows": rows, "open_s": {"verify": opens[True], "no_verify": opens[False]},
              "verified_bytes": size, "hash_mb_per_s": size / 1e6 / max(opens[True] - opens[False], 1e-9)}
    print(json.dumps(result, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
