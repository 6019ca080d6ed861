"""Re-checking a built bundle against the torch model it came from."""
from __future__ import annotations

from pathlib import Path

from ..bundle import load

# why parity cannot run, per bundle dtype: ORT's CPU provider is the reference runtime of `validate`
PARITY_NOT_RUN = {"bf16": "ONNX Runtime's CPU provider has no bfloat16 MatMul (measured, onnxruntime 1.32)"}


def validate_bundle(folder, *, weights=None):
    """{size: max abs diff (None if not runnable on ORT CPU)} and the manifest; hashes are verified first."""
    from ..models.registry import load_model
    from ..settings import BuildSettings
    from ..shapes import geometry_from_entry
    from .parity import variant_parity

    manifest = load(folder)
    model = manifest.model
    source = model["kind"] if model["kind"] in ("flux", "wan") else model["name"]
    loaded = load_model(source, weights, sizes=manifest.sizes)
    dtype = BuildSettings(model=source, dtype=manifest.dtype).torch_dtype
    mp = loaded.transformer.to(dtype)
    geom = geometry_from_entry(model)
    return {v.size: variant_parity(Path(folder) / v.file, mp, v.size, geom, model["text_len"], dtype)
            for v in manifest.variants}, manifest
