"""INT8 vs fp32 bundles on ONNX Runtime CPU (issue 22): step time per size, disk, RSS, quality.

    python scripts/bench_int8.py --fp32 B32 --int8 B8 --repeats 15 --prompts 16 --json docs/results/int8-flux-mini-64.json
    python scripts/bench_int8.py --fp32 B32 --int8 B8 --int8-b B8S8 --threads 1 --int8-modes shared --skip-rss \
        --repeats 5 --prompts 4 --quality-threads 1 --json docs/results/int8-s8-flux-mini-64.json

``--int8-b``: a second int8 bundle (e.g. built with ``--int8-activations s8``), labelled ``int8_<activations>``
from its manifest: its step times are interleaved with the other two (key ``<label>_ms``, ``speedup_<label>`` =
fp32 / it, ``<label>_vs_int8`` = it / the first int8), and the quality pass adds its fine-only and schedule+cache
rows. The interleaving order rotates every repeat (fp32, int8, b / int8, b, fp32 / ...).

1. step time: each size's graph, batch 1, the two bundles' calls interleaved (fp32, int8, fp32, ...), medians, at
   each --threads (both bundles opened in the default ``--memory shared`` mode, and the int8 one in ``fast`` too);
2. bundle size on disk (every file) and RSS after load + runs of each 3-size bundle (a fresh process each,
   scripts/bench_bundle.py's memory child);
3. quality on ``--prompts`` evaluation captions (evaluate's held-out captions): int8 fine-only, fp32 and int8
   with the default schedule + step cache (taylor, interval 6), each vs the fp32 fine-only image (PSNR) and
   adherence (scene probe); end-to-end seconds of each pass (the passes run one after another, 2 threads).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def int8_label(bundle) -> str:
    """``int8_<u8|s8>``: how an int8 bundle's activations are quantized (bundles before the field: u8)."""
    from ddit_export.bundle import read_manifest

    return f"int8_{read_manifest(bundle).int8_activations}"


def step_times(b32, b8, threads, repeats, memory8="shared", b8b=None, label_b=None):
    from bench_bundle import feeds_for

    from ddit_export.runtime.backends.onnxruntime import OrtBundleBackend

    be = {"fp32": OrtBundleBackend(b32, threads=threads), "int8": OrtBundleBackend(b8, threads=threads,
                                                                                     memory=memory8)}
    if b8b is not None:
        be[label_b] = OrtBundleBackend(b8b, threads=threads, memory=memory8)
    for b in be.values():
        b.activate()
    names = list(be)
    out = {}
    for size in be["fp32"].sizes:
        f = feeds_for(be["fp32"], size)
        for b in be.values():  # warm-up
            for _ in range(3):
                b.run_numpy(size, f)
        ts = {n: [] for n in be}
        for r in range(repeats):
            for n in names[r % len(names):] + names[:r % len(names)]:  # the order rotates every repeat
                t0 = time.perf_counter()
                be[n].run_numpy(size, f)
                ts[n].append(time.perf_counter() - t0)
        med = {n: statistics.median(v) * 1e3 for n, v in ts.items()}
        out[str(size)] = {"fp32_ms": round(med["fp32"], 2), "int8_ms": round(med["int8"], 2),
                          "speedup": round(med["fp32"] / med["int8"], 3)}
        if b8b is not None:
            out[str(size)].update({f"{label_b}_ms": round(med[label_b], 2),
                                   f"speedup_{label_b}": round(med["fp32"] / med[label_b], 3),
                                   f"{label_b}_vs_int8": round(med[label_b] / med["int8"], 3)})
    return out


def rss(bundle, threads, memory="shared"):
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_bundle.py"), "--memory-child", str(bundle),
                        "--threads", str(threads), "--memory-mode", memory], capture_output=True, text=True,
                       check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def quality(b32, b8, n, threads, b8b=None, label_b=None):
    import torch

    from ddit_export.api import cache_settings
    from ddit_export.quality.evaluate import eval_scenes
    from ddit_export.quality.policies import PolicyRunner
    from ddit_export.runtime.bundle_model import open_bundle

    torch.set_num_threads(threads)
    m32, be32 = open_bundle(b32, threads=threads)
    m8, be8 = open_bundle(b8, threads=threads)
    mb, beb = open_bundle(b8b, threads=threads) if b8b is not None else (None, contextlib.nullcontext())
    enc = m32.extras.get("text_encoder") if hasattr(m32, "extras") else None
    max_words = getattr(getattr(enc, "config", None), "max_length", None)
    scenes = eval_scenes(n, max_words=max_words)
    cache = cache_settings(m32, {"mode": "taylor", "interval": 6})
    rows = {}
    with be32, be8, beb:
        r32 = PolicyRunner(m32, be32, scenes, cache=cache)
        r8 = PolicyRunner(m8, be8, scenes, cache=cache)
        fine = r32.fine()
        r8.fine_images = r32.fine_images
        rows["fp32 fine-only"] = dict(seconds=fine["seconds"], images=fine["images"], flops=1.0)
        passes = [("int8 fine-only", r8, dict(static=(1,) * r8.steps, cache=False)),
                  ("fp32 schedule+cache", r32, {}), ("int8 schedule+cache", r8, {})]
        if b8b is not None:
            rb = PolicyRunner(mb, beb, scenes, cache=cache)
            passes += [(f"{label_b} fine-only", rb, dict(static=(1,) * rb.steps, cache=False)),
                       (f"{label_b} schedule+cache", rb, {})]
        for name, runner, kw in passes:
            g = runner.generate(**kw)
            rows[name] = dict(seconds=g["seconds"], images=g["images"], flops=float(np.mean(g["flops"])))
        out = {}
        for name, r in rows.items():
            s = r8.score(r["images"])
            out[name] = {"psnr_db": round(float(np.mean(np.minimum(s["psnr"], 99))), 2),
                         "adherence": round(100 * r8.adherence(r["images"]), 1),
                         "seconds": round(r["seconds"], 2),
                         "speedup_vs_fp32_fine": round(rows["fp32 fine-only"]["seconds"] / r["seconds"], 2),
                         "flops_ratio": round(r["flops"], 3)}
    return {"prompts": n, "threads": threads, "cache": {"mode": "taylor", "interval": 6},
            "schedule": "the bundle's default profile", "rows": out}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fp32", required=True)
    ap.add_argument("--int8", required=True)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", default="2,1")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--int8-b", help="a second int8 bundle (e.g. --int8-activations s8), interleaved with the others")
    ap.add_argument("--int8-modes", default="shared,fast", help="the int8 bundles' --memory modes to time")
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--quality-threads", type=int, default=2)
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args()
    label_b = int8_label(a.int8_b) if a.int8_b else None
    res = {"command": " ".join(["python"] + sys.argv), "fp32": a.fp32, "int8": a.int8,
           "int8_activations": int8_label(a.int8).split("_")[1]}
    res["disk_bytes"] = {"fp32": disk_bytes(a.fp32), "int8": disk_bytes(a.int8)}
    if a.int8_b:
        res.update({"int8_b": a.int8_b, "int8_b_label": label_b})
        res["disk_bytes"][label_b] = disk_bytes(a.int8_b)
    res["disk_ratio"] = round(res["disk_bytes"]["int8"] / res["disk_bytes"]["fp32"], 3)
    print("disk", res["disk_bytes"], res["disk_ratio"], flush=True)
    for t in (int(x) for x in a.threads.split(",")):
        for mem in a.int8_modes.split(","):
            key = f"step_ms_threads{t}" + ("" if mem == "shared" else f"_int8_{mem}")
            res[key] = step_times(a.fp32, a.int8, t, a.repeats, memory8=mem, b8b=a.int8_b, label_b=label_b)
            print(t, f"threads (int8 --memory {mem})", res[key], flush=True)
    if not a.skip_rss:
        res["rss_mb"] = {}
        for name, b in (("fp32", a.fp32), ("int8", a.int8)):
            for mem in ("shared", "fast"):
                res["rss_mb"][f"{name}_{mem}"] = {k: round(v, 1) for k, v in rss(b, 2, mem).items()}
        res["rss_ratio_after_runs_shared"] = round(res["rss_mb"]["int8_shared"]["after_runs"]
                                                   / res["rss_mb"]["fp32_shared"]["after_runs"], 3)
        print("rss", res["rss_mb"], res["rss_ratio_after_runs_shared"], flush=True)
    if not a.skip_quality:
        res["quality"] = quality(a.fp32, a.int8, a.prompts, a.quality_threads, a.int8_b, label_b)
        print(json.dumps(res["quality"], indent=1), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
