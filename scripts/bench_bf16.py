"""bf16 vs fp32 on the CPU (issue 22 item 2): per-size step time on PyTorch eager (the model's MultiPatch module),
the Python AOTInductor backend and the C++ runtime, and the quality of bf16 whole generations against fp32.

    python scripts/bench_bf16.py --fp32 FP32_BUNDLE --bf16 BF16_BUNDLE [--ddit-run build/cpp/ddit-run]
        [--threads 1,2] [--rounds 7] [--calls 5] [--quality 12] [--json out.json] [--only eager,aoti,cpp,quality]

Both bundles come from ``ddit-export build --backend aoti`` of the same model, one with ``--dtype bf16``. Timing:
batch 1, the bundle's resolution; every round times each (precision, size) once as the median of ``--calls``
calls after a warm-up, fp32 and bf16 interleaved inside the round, so a busy machine slows both alike; the
reported time is the median over rounds. C++: one ``ddit-run BUNDLE --bench-steps CALLS`` process per round and
precision (its "step_s", the median of same-size calls). Quality: the Python AOTInductor backend, ``--quality``
prompts in one batch, fine-only and the model's default schedule, seed 0; PSNR of the decoded images against the
fp32 fine-only images (8-bit pixels, data range 255).
"""
from __future__ import annotations

import argparse
import copy
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPT = "a large red circle at the center"


def quality_prompts(vocab: list[str], max_words: int, n: int) -> list[str]:
    """The first ``n`` prompts of calibration/prompts-graded.txt the model's word encoder reads whole."""
    path = Path(__file__).resolve().parents[1] / "calibration" / "prompts-graded.txt"
    lines = [l.strip() for l in path.read_text().splitlines() if l.strip() and not l.startswith("#")]
    words = set(vocab)
    ok = [l for l in lines if len(l.split()) <= max_words and all(w in words for w in l.split())]
    return ok[:n]


def timed(fn, calls: int) -> float:
    fn()  # warm-up (and the first touch of the weights)
    out = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def step_inputs(loaded, geom, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, geom.tokens(1), geom.token_channels, generator=g)
    cond = loaded.encode([PROMPT])
    t = torch.full((1,), 0.5)
    guidance = torch.full((1,), 3.5) if loaded.guidance_embeds else None
    return x, cond, t, guidance


def bench_in_process(make_backends, loaded, geom, sizes, threads, rounds, calls) -> dict:
    """{precision: {size: median seconds}} of backends made by ``make_backends(threads)`` ({precision: backend})."""
    x, cond, t, guidance = step_inputs(loaded, geom)
    torch.set_num_threads(threads)
    backends = make_backends(threads)
    for b in backends.values():
        b.activate()
    times = {p: {k: [] for k in sizes} for p in backends}
    for _ in range(rounds):
        for k in sizes:
            for p, b in backends.items():
                times[p][k].append(timed(lambda: b.run(k, x, cond, t, guidance, geom.grid), calls))
    for b in backends.values():
        b.deactivate()
    return {p: {k: statistics.median(v) for k, v in d.items()} for p, d in times.items()}


def bench_cpp(exe: Path, bundles: dict, threads: int, rounds: int, calls: int) -> dict:
    times: dict = {p: {} for p in bundles}
    for _ in range(rounds):
        for p, folder in bundles.items():
            cmd = [str(exe), str(folder), "--bench-steps", str(calls), "--threads", str(threads), "--no-verify",
                   "--prompt", PROMPT]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode:
                raise SystemExit(f"error: ddit-run failed: {(r.stdout + r.stderr).strip()[-2000:]}")
            doc = json.loads(re.search(r"^\{\"batch\".*$", r.stdout, re.M).group(0))
            for k, v in doc["sizes"].items():
                times[p].setdefault(int(k), []).append(v["step_s"])
    return {p: {k: statistics.median(v) for k, v in d.items()} for p, d in times.items()}


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(im.convert("RGB"), dtype=np.float64) for im in images])


def psnr255(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    mse = ((a - b) ** 2).reshape(len(a), -1).mean(axis=1)
    return 10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-12))


def quality(bundles: dict, prompts: list[str], threads: int) -> dict:
    from ddit_export.api import generate_images

    runs = {}
    for p, folder in bundles.items():
        for name, kw in (("fine-only", {"policy": "fine"}), ("default schedule", {})):
            t0 = time.perf_counter()
            result, _ = generate_images(bundle=str(folder), backend="aoti", prompts=prompts, threads=threads,
                                        out=None, seed=0, **kw)
            runs[(p, name)] = (result, time.perf_counter() - t0)
    ref = pixels(runs[("fp32", "fine-only")][0].images)
    ref_lat = runs[("fp32", "fine-only")][0].latents
    out = {}
    for (p, name), (result, secs) in runs.items():
        db = psnr255(pixels(result.images), ref)
        out[f"{p} {name}"] = {
            "psnr_vs_fp32_fine_db": {"median": float(np.median(db)), "min": float(db.min()),
                                     "mean": float(db.mean())} if (p, name) != ("fp32", "fine-only") else None,
            "latent_max_abs_vs_fp32_fine": float((result.latents - ref_lat).abs().max()),
            "sizes": list(result.trace.sizes), "seconds": secs}
    same = runs[("bf16", "default schedule")][0].trace.sizes == runs[("fp32", "default schedule")][0].trace.sizes
    out["default schedule: bf16 sizes == fp32 sizes"] = bool(same)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fp32", type=Path, required=True)
    ap.add_argument("--bf16", type=Path, required=True)
    ap.add_argument("--ddit-run", type=Path, default=None)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--quality", type=int, default=12, help="prompts of the quality check (0: skip)")
    ap.add_argument("--quality-threads", type=int, default=1)
    ap.add_argument("--only", default="eager,aoti,cpp,quality")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    from ddit_export.models.registry import load_model
    from ddit_export.runtime.backends.aoti import AotiBackend
    from ddit_export.runtime.backends.torch import TorchBackend
    from ddit_export import bundle as bundle_mod

    bundles = {"fp32": a.fp32, "bf16": a.bf16}
    man = bundle_mod.load(a.fp32, hashes=False)
    assert bundle_mod.load(a.bf16, hashes=False).dtype == "bf16", "--bf16 is not a bf16 bundle"
    sizes = tuple(man.sizes)
    loaded = load_model(man.model["name"], sizes=sizes)
    geom = loaded.geometry(man.model["height"], man.model["width"])
    only = set(a.only.split(","))
    report = {"model": man.model["name"], "resolution": [man.model["height"], man.model["width"]],
              "torch": torch.__version__, "rounds": a.rounds, "calls": a.calls, "batch": 1, "step_s": {}}
    fp32_mp = loaded.transformer.float().eval()
    bf16_mp = copy.deepcopy(fp32_mp).to(torch.bfloat16).eval()
    for threads in [int(t) for t in a.threads.split(",")]:
        row = report["step_s"].setdefault(f"threads={threads}", {})
        if "eager" in only:
            row["pytorch eager"] = bench_in_process(
                lambda th: {"fp32": TorchBackend(fp32_mp), "bf16": TorchBackend(bf16_mp)}, loaded, geom, sizes,
                threads, a.rounds, a.calls)
        if "aoti" in only:
            row["python aoti"] = bench_in_process(
                lambda th: {p: AotiBackend(f, threads=th, verify=False) for p, f in bundles.items()}, loaded, geom,
                sizes, threads, a.rounds, a.calls)
        if "cpp" in only and a.ddit_run:
            row["c++ ddit-run"] = bench_cpp(a.ddit_run, bundles, threads, a.rounds, a.calls)
        for path, d in row.items():
            for k in sizes:
                f, b = d["fp32"][k], d["bf16"][k]
                print(f"threads={threads} {path:14s} k={k}: fp32 {f * 1e3:8.2f} ms  bf16 {b * 1e3:8.2f} ms  "
                      f"speed-up {f / b:.2f}x", flush=True)
    if "quality" in only and a.quality:
        vocab = man.text_encoder["vocab"]
        prompts = quality_prompts(vocab, man.text_encoder["max_length"], a.quality)
        report["quality_prompts"] = prompts
        report["quality"] = quality(bundles, prompts, threads=a.quality_threads)
        for k, v in report["quality"].items():
            print(k, json.dumps(v) if not isinstance(v, dict) else
                  {kk: vv for kk, vv in v.items() if kk != "sizes"}, flush=True)
    if a.json:
        a.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
