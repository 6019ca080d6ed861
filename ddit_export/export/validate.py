"""Re-checking a built bundle against the torch model it came from."""
from __future__ import annotations

from pathlib import Path

from ..bundle import aoti_section, load

# why parity cannot run, per bundle dtype: ORT's CPU provider is the reference runtime of `validate`
PARITY_NOT_RUN = {"bf16": "ONNX Runtime's CPU provider has no bfloat16 MatMul (measured, onnxruntime 1.32)"}


def validate_bundle(folder, *, weights=None, tol: float | None = None):
    """({size: {"diff": max abs diff or None (no runtime here can run it), "limit": the largest diff accepted,
    "runtime": what ran it}}, the manifest); hashes are verified first. ONNX Runtime checks the ONNX graphs against
    ``tol`` (default: by dtype); a dtype its CPU provider cannot run (bf16) is checked on the bundle's AOTInductor
    package when it has one, with the limit ``build --backend aoti`` applies (bf16: relative to the output)."""
    from ..settings import PARITY_TOL
    from .aoti import _parity_limit

    from ..models.registry import load_model
    from ..settings import BuildSettings
    from ..shapes import geometry_from_entry
    from .parity import aoti_parity, variant_parity

    manifest = load(folder)
    model = manifest.model
    source = model["kind"] if model["kind"] in ("flux", "wan") else model["name"]
    loaded = load_model(source, weights, sizes=manifest.sizes)
    dtype = BuildSettings(model=source, dtype=manifest.dtype).torch_dtype
    mp = loaded.transformer.to(dtype)
    geom = geometry_from_entry(model)
    tol = tol if tol is not None else PARITY_TOL[manifest.dtype]
    results = {}
    for v in manifest.variants:
        diff = variant_parity(Path(folder) / v.file, mp, v.size, geom, model["text_len"], dtype)
        results[v.size] = {"diff": diff, "limit": tol, "runtime": "ONNX Runtime"}
        if diff is None and manifest.aoti is not None:
            diff, ref_max = aoti_parity(folder, aoti_section(Path(folder), manifest), mp, v.size, geom,
                                        model["text_len"], dtype)
            results[v.size] = {"diff": diff, "limit": _parity_limit(tol, manifest.dtype, ref_max),
                               "runtime": "AOTInductor"}
    return results, manifest
