"""The whole-bundle TensorRT lint: every graph against TensorRT's operator table (``trt_compat``) and, for a quantized
bundle, the Q/DQ rules (``trt_qdq``). Above both, so neither imports the other."""
from __future__ import annotations

from pathlib import Path

from .trt_compat import Problem, check_file
from .trt_qdq import bundle_quant


def check_bundle(folder, plan: dict | None = None, *, census: dict | None = None, **kw) -> list[Problem]:
    """Every ONNX graph of a bundle: the variants, the text encoder and, with a plan, the trunk/stem/head graphs
    against their profiles; a quantized bundle's graphs also get the Q/DQ lint (``trt_qdq``: errors TensorRT's
    parser refuses, warnings for matmuls it will not run quantized). ``census``: that lint, if already run."""
    from ..bundle import read_manifest

    folder = Path(folder)
    m = read_manifest(folder)
    qdq = []
    if m.quantized:
        census = census if census is not None else bundle_quant(folder, m)
        qdq = [p for c in census.values() for p in c.problems]
    profiles = {e["onnx"]: e["profiles"] for e in (plan or {}).get("engines", [])}
    files = [f for f in m.files if f.endswith(".onnx")] + [f for f in profiles if f not in m.files]
    out = []
    for f in files:
        if not (folder / f).is_file():
            out.append(Problem(f, "missing", str(folder / f), "graph file missing"))
            continue
        out += check_file(folder / f, profiles.get(f), **kw)
    return out + qdq
