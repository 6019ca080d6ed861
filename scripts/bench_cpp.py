"""Measure the C++ runtime (runtime/cpp, issue 12) on a bundle built with ``build --backend aoti``:

- peak RSS of the ddit-run process with every size loaded vs size 1 only (the same fine-only generation);
- per-step time per size through the C API (``ddit-run --bench-steps``), against the Python ONNX Runtime backend
  and the Python AOTInductor backend on the same machine, in the same run (medians, sizes interleaved);
- switching cost: a step of size k right after a step of another size vs right after one of size k.

    python scripts/bench_cpp.py --bundle engines/flux-mini --build build/cpp [--repeats 20] [--json out.json]

The C++ numbers come from separate ddit-run processes (so RSS is the process's own); the Python ones from this one.
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


def run(cmd) -> str:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"error: {' '.join(map(str, cmd[:3]))} failed: {r.stderr.strip()[-2000:]}")
    return r.stdout


def embeddings(bundle: Path, folder: Path):
    from ddit_export import bundle as bundle_mod
    from ddit_export.runtime.bundle_model import BundleModel

    manifest = bundle_mod.load(bundle)
    try:
        from ddit_export.runtime.bundle_model import open_bundle

        model, backend = open_bundle(bundle)
        cond = model.encode([model.default_prompt])
        backend.deactivate()
    except ImportError:  # no onnxruntime (the GPU machine): the zoo model's own text encoder
        from ddit_export.models.registry import load_model

        model = BundleModel(manifest.model["name"], manifest, None)
        cond = load_model(manifest.model["name"]).encode([model.default_prompt])
    np.save(folder / "states.npy", cond.states.float().numpy())
    np.save(folder / "pooled.npy", cond.pooled.float().numpy())
    return model, cond


def peak_rss(exe, bundle, emb: Path, sizes: str, steps: int, schedule: str) -> int:
    out = run([exe, bundle, "--states", emb / "states.npy", "--pooled", emb / "pooled.npy", "--sizes", sizes,
               "--steps", steps, "--schedule", schedule])
    return int(re.search(r"peak RSS (\d+) kB", out).group(1))


def python_steps(backend, model, cond, repeats: int) -> dict:
    """Median seconds of one backend.run per size, sizes interleaved (after one warm-up call each)."""
    import torch

    from ddit_export.runtime.generate import initial_noise

    geom = model.geometry()
    x = initial_noise(geom, 1, 0)
    t = torch.full((1,), 0.5)
    g = torch.full((1,), 3.5) if model.guidance_embeds else None
    times: dict = {k: [] for k in backend.sizes}
    with backend:
        for k in backend.sizes:
            backend.run(k, x, cond, t, g, geom.grid)
        for _ in range(repeats):
            for k in backend.sizes:
                t0 = time.perf_counter()
                backend.run(k, x, cond, t, g, geom.grid)
                times[k].append(time.perf_counter() - t0)
    return {str(k): statistics.median(v) for k, v in times.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--build", required=True, help="the CMake build folder of runtime/cpp")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--steps", type=int, default=8, help="steps of the RSS generations")
    ap.add_argument("--threads", type=int, default=None, help="torch / ORT threads (default: torch's)")
    ap.add_argument("--json")
    a = ap.parse_args()
    import torch

    from ddit_export.runtime.backends.aoti import AotiBackend
    from ddit_export.runtime.backends.onnxruntime import OrtBundleBackend  # imports onnxruntime lazily

    if a.threads:
        torch.set_num_threads(a.threads)
    bundle, exe = Path(a.bundle), Path(a.build) / "ddit-run"
    with tempfile.TemporaryDirectory() as tmp:
        emb = Path(tmp)
        model, cond = embeddings(bundle, emb)
        sizes = ",".join(map(str, model.manifest.sizes))
        fine = ",".join(["1"] * a.steps)
        rss_one = peak_rss(exe, bundle, emb, "1", a.steps, fine)
        rss_all = peak_rss(exe, bundle, emb, sizes, a.steps, fine)
        # the library sets its own threads (ddit_open_ex): the same count as the Python backends here
        cpp = json.loads(run([exe, bundle, "--states", emb / "states.npy", "--pooled", emb / "pooled.npy",
                              "--bench-steps", a.repeats, "--threads", torch.get_num_threads()]))
    try:
        ort = python_steps(OrtBundleBackend(bundle, threads=a.threads), model, cond, a.repeats)
    except ImportError as e:  # the GPU machine has no onnxruntime
        ort = f"not run: {e}"
    aoti_py = python_steps(AotiBackend(bundle, threads=torch.get_num_threads()), model, cond, a.repeats)
    fine_step = cpp["sizes"]["1"]["step_s"]
    switch = {k: v["after_switch_s"] - v["step_s"] for k, v in cpp["sizes"].items()}
    result = {"bundle": str(bundle), "device": model.manifest.aoti["device"], "torch_threads": torch.get_num_threads(),
              "peak_rss_kb": {"size 1 only": rss_one, f"sizes {sizes}": rss_all, "ratio": rss_all / rss_one},
              "step_s": {"cpp_aoti": {k: v["step_s"] for k, v in cpp["sizes"].items()}, "python_aoti": aoti_py,
                         "python_onnxruntime": ort},
              "switch_s": switch, "switch_vs_fine_step": {k: v / fine_step for k, v in switch.items()},
              "repeats": a.repeats}
    print(json.dumps(result, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
