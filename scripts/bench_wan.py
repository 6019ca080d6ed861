"""Per-step time of each patch size of a video model on the CPU: PyTorch eager and the bundle on ONNX Runtime, in one
process, medians over several runs (compare the ratios; the machine is shared and noisy).

    python scripts/bench_wan.py --model wan-mini --repeats 15 --threads 2 [--bundle engines/wan-mini] [--cpp build/cpp]

Without --bundle, the model is built into a temporary bundle first (ONNX, fp32, sizes 1,2,4). A bundle built with
``--backend aoti`` is also timed on its AOTInductor package (the Python ``aoti`` backend) and, with ``--cpp`` (the
CMake build folder of runtime/cpp), by the C++ runtime (``ddit-run --bench-steps``: the C API's per-size call).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def cpp_step_times(build: Path, bundle, model, like: list, repeats: int, threads: int) -> list:
    """The C++ runtime's median call per size (``ddit-run --bench-steps``, one process), as SizeTimings beside the
    Python rows ``like`` (the same sizes, tokens and FLOPs)."""
    import subprocess

    from ddit_export.bench import SizeTiming

    r = subprocess.run([str(build / "ddit-run"), str(bundle), "--prompt", model.default_prompt, "--bench-steps",
                        str(repeats), "--threads", str(threads)], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"ddit-run failed: {r.stderr.strip()}")
    got = json.loads(r.stdout.strip().splitlines()[-1])["sizes"]
    return [SizeTiming(x.size, x.tokens, got[str(x.size)]["step_s"], [], x.flops) for x in like]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="wan-mini")
    p.add_argument("--bundle", type=Path)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, help="also write the numbers here")
    p.add_argument("--cpp", type=Path, help="runtime/cpp's build folder: time the C++ runtime too (aoti bundles)")
    a = p.parse_args(argv)
    import torch

    from ddit_export.bench import format_table, step_times
    from ddit_export.export.build import build_bundle
    from ddit_export.models.registry import load_model
    from ddit_export.runtime.backends.torch import TorchBackend
    from ddit_export.runtime.bundle_model import open_bundle
    from ddit_export.settings import BuildSettings

    torch.set_num_threads(a.threads)
    model = load_model(a.model)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = a.bundle or build_bundle(BuildSettings(model=a.model, out=str(Path(tmp) / "b")), progress=False,
                                          log=lambda *m: None)
        bm, ort = open_bundle(bundle, threads=a.threads)
        with TorchBackend(model.transformer) as tb, ort:
            rows = {"torch": step_times(model, tb, repeats=a.repeats),
                    "onnxruntime": step_times(bm, ort, repeats=a.repeats)}
        if bm.manifest.aoti:
            am, aoti = open_bundle(bundle, threads=a.threads, backend="aoti")
            with aoti:
                rows["aoti"] = step_times(am, aoti, repeats=a.repeats)
            if a.cpp:
                rows["cpp"] = cpp_step_times(a.cpp, bundle, am, rows["aoti"], a.repeats, a.threads)
    geom = model.geometry()
    print(f"{model.name}: grid {geom.grid} ({geom.tokens(1)} fine tokens), torch {torch.__version__}, "
          f"{a.threads} threads, median of {a.repeats}")
    for name, r in rows.items():
        print(f"\n{name}\n{format_table(r)}")
    if a.json:
        a.json.write_text(json.dumps({n: [{"size": x.size, "tokens": x.tokens, "median_ms": x.median_s * 1e3,
                                          "flops": x.flops} for x in r] for n, r in rows.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
