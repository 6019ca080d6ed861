"""Benchmarks of a built bundle on ONNX Runtime (issue 4's targets), medians over several runs, one process each.

    python scripts/bench_bundle.py --model random-20m --repeats 15 [--threads 2]

Builds (into a temporary folder) the 3-size bundle and a fine-only bundle of the model, then reports:
1. each variant inside the bundle vs the same graph as a standalone ORT session (ratio), for both memory modes
   (``--memory shared``: weights held once, no pre-packing; ``fast``: each session pre-packs its own copy);
2. the cost of switching variants between steps (alternating vs grouped runs of the same calls);
3. resident memory after load and after runs, 3-size bundle (both modes) vs fine-only bundle (shared mode; its
   one session is the same in both modes), each in a separate process;
4. bundle size on disk vs the model's weights.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return float("nan")


def feeds_for(backend, size, seed=0):
    rng = np.random.default_rng(seed)
    v = backend.manifest.variant(size)
    out = {}
    for spec in v.inputs:
        shape = [1 if d == "batch" else d for d in spec.shape]
        out[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
    return out


def timed(fn, n):
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return ts


def memory_child(bundle: str, threads: int | None, runs: int, memory: str = "shared") -> dict:
    """Run in a fresh process: RSS before, after loading the bundle, after `runs` calls of every variant."""
    from ddit_export.runtime.backends.onnxruntime import OrtBundleBackend

    base = rss_mb()
    be = OrtBundleBackend(bundle, threads=threads, memory=memory)
    be.activate()
    loaded = rss_mb()
    for size in be.sizes:
        f = feeds_for(be, size)
        for _ in range(runs):
            be.run_numpy(size, f)
    return {"base": base, "after_load": loaded - base, "after_runs": rss_mb() - base}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="random-20m")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--memory-child", help=argparse.SUPPRESS)
    ap.add_argument("--memory-mode", default="shared", help=argparse.SUPPRESS)
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    if a.memory_child:
        print(json.dumps(memory_child(a.memory_child, a.threads, 3, a.memory_mode)))
        return

    import onnxruntime as ort

    from ddit_export.export.build import build_bundle
    from ddit_export.models.registry import load_model
    from ddit_export.runtime.backends.onnxruntime import OrtBundleBackend
    from ddit_export.settings import BuildSettings

    work = Path(tempfile.mkdtemp(prefix="ddit-bench-"))
    full = build_bundle(BuildSettings(model=a.model, out=str(work / "full")), progress=False, log=lambda *_: None)
    fine = build_bundle(BuildSettings(model=a.model, sizes=(1,), out=str(work / "fine")), progress=False,
                        log=lambda *_: None)
    res = {"model": a.model, "repeats": a.repeats, "threads": a.threads, "ort": ort.__version__}

    # 1. in-bundle (both memory modes) vs standalone, interleaved run by run
    be = OrtBundleBackend(full, threads=a.threads)
    be.activate()
    fast = OrtBundleBackend(full, threads=a.threads, memory="fast")
    fast.activate()
    so = ort.SessionOptions()
    if a.threads:
        so.intra_op_num_threads, so.inter_op_num_threads = a.threads, 1
    # the bundle's thread settings (no spinning), so the ratio isolates the weights' layout (pre-packing); a spinning
    # standalone pool is far slower on a machine shared with other jobs
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    standalone = {v.size: ort.InferenceSession(str(full / v.file), so, providers=["CPUExecutionProvider"])
                  for v in be.manifest.variants}
    feeds = {k: feeds_for(be, k) for k in be.sizes}
    inb, std, fst = ({k: [] for k in be.sizes} for _ in range(3))
    for i in range(a.repeats + 2):
        for k in be.sizes:
            t_in = timed(lambda: be.run_numpy(k, feeds[k]), 1)[0]
            t_sa = timed(lambda: standalone[k].run(["velocity"], feeds[k]), 1)[0]
            t_f = timed(lambda: fast.run_numpy(k, feeds[k]), 1)[0]
            if i >= 2:
                inb[k].append(t_in)
                std[k].append(t_sa)
                fst[k].append(t_f)
    med = statistics.median
    res["variants"] = {k: {"tokens": be.manifest.variant(k).tokens, "bundle_ms": med(inb[k]) * 1e3,
                           "standalone_ms": med(std[k]) * 1e3, "ratio": med(inb[k]) / med(std[k]),
                           "fast_bundle_ms": med(fst[k]) * 1e3, "fast_ratio": med(fst[k]) / med(std[k])}
                       for k in be.sizes}
    del standalone
    fast.deactivate()

    # 2. switching: the same calls alternating between sizes, or grouped by size
    ks = [k for k in be.sizes if k > 1][:1] + [1]
    n = 8
    alt, grp = [], []
    for _ in range(max(3, a.repeats // 3)):
        alt.append(sum(timed(lambda: [be.run_numpy(k, feeds[k]) for k in ks], n)))
        grp.append(sum(timed(lambda: [be.run_numpy(ks[0], feeds[ks[0]]) for _ in range(2)], n // 2))
                   + sum(timed(lambda: [be.run_numpy(ks[1], feeds[ks[1]]) for _ in range(2)], n // 2)))
    calls = n * 2
    res["switch_ms_per_step"] = (statistics.median(alt) - statistics.median(grp)) / calls * 1e3
    res["switch_sizes"] = ks
    be.deactivate()

    # 3. memory, each bundle in its own process
    mem = {}
    for name, path, mode in (("fine_only", fine, "shared"), ("three_sizes", full, "shared"),
                             ("three_sizes_fast", full, "fast")):
        cmd = [sys.executable, __file__, "--memory-child", str(path), "--memory-mode", mode] + (
            ["--threads", str(a.threads)] if a.threads else [])
        mem[name] = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    mem["ratio_after_runs"] = mem["three_sizes"]["after_runs"] / mem["fine_only"]["after_runs"]
    mem["ratio_after_load"] = mem["three_sizes"]["after_load"] / mem["fine_only"]["after_load"]
    mem["fast_ratio_after_runs"] = mem["three_sizes_fast"]["after_runs"] / mem["fine_only"]["after_runs"]
    mem["fast_ratio_after_load"] = mem["three_sizes_fast"]["after_load"] / mem["fine_only"]["after_load"]
    res["memory_mb"] = mem

    # 4. disk
    m = load_model(a.model)
    weights = sum(p.numel() * p.element_size() for p in m.transformer.parameters())
    weights += sum(p.numel() * p.element_size() for p in m.extras["text_encoder"].parameters())
    disk = sum(f.stat().st_size for f in full.iterdir())
    res["disk"] = {"bundle_bytes": disk, "weights_bytes": weights, "ratio": disk / weights}

    print(json.dumps(res, indent=1))
    print(f"\n{a.model}: ORT {ort.__version__}, threads={a.threads or 'default'}, medians of {a.repeats}")
    print(f"{'size':>4} {'tokens':>7} {'standalone ms':>14} {'shared ms':>10} {'ratio':>6} {'fast ms':>8} {'ratio':>6}")
    for k, v in res["variants"].items():
        print(f"{k:>4} {v['tokens']:>7} {v['standalone_ms']:14.2f} {v['bundle_ms']:10.2f} {v['ratio']:6.3f} "
              f"{v['fast_bundle_ms']:8.2f} {v['fast_ratio']:6.3f}")
    print(f"switching {ks[0]}<->{ks[1]}: {res['switch_ms_per_step']:+.3f} ms per step")
    print(f"RSS after runs: fine-only {mem['fine_only']['after_runs']:.0f} MB, 3 sizes "
          f"{mem['three_sizes']['after_runs']:.0f} MB (x{mem['ratio_after_runs']:.3f}); after load "
          f"x{mem['ratio_after_load']:.3f}")
    print(f"RSS after runs, --memory fast: 3 sizes {mem['three_sizes_fast']['after_runs']:.0f} MB "
          f"(x{mem['fast_ratio_after_runs']:.3f} of fine-only); after load x{mem['fast_ratio_after_load']:.3f}")
    print(f"disk: bundle {disk / 2**20:.2f} MiB vs weights {weights / 2**20:.2f} MiB (x{disk / weights:.3f})")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
