"""ONNX vs torch on random inputs, per variant, through polygraphy's Comparator and its ONNX Runtime runner."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def variant_parity(onnx_path: Path, model, size: int, geom, text_len: int, dtype=torch.float32, seed: int = 123,
                   batch: int = 1) -> float | None:
    """Max |ONNX − torch| of the velocity on one random input; None where ONNX Runtime's CPU provider cannot run
    ``dtype`` (bf16)."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.comparator import Comparator
    from polygraphy.logger import G_LOGGER

    from .onnx import variant_input_names, variant_inputs, variant_module

    args = variant_inputs(model, geom, text_len, dtype, batch=batch, seed=seed)
    with torch.no_grad():
        ref = variant_module(model, size, geom)(*args).float().numpy()
    if dtype == torch.bfloat16:
        return None  # ORT's CPU provider has no bfloat16 kernels for these ops
    feeds = {n: a.numpy() for n, a in zip(variant_input_names(model), args)}
    G_LOGGER.module_severity = G_LOGGER.WARNING
    runner = OnnxrtRunner(SessionFromOnnx(str(onnx_path), providers=["cpu"]))
    results = Comparator.run([runner], data_loader=[feeds])
    out = results[0][1][0]["velocity"].astype(np.float32)
    return float(np.abs(out - ref).max())


def aoti_parity(folder, section: dict, model, size: int, geom, text_len: int, dtype=torch.float32,
                seed: int = 123) -> tuple[float, float]:
    """(max |AOTInductor package − torch|, max |torch|) of the velocity on one random input (the same input as
    :func:`variant_parity`), the constants read from weights.bin; ``section``: the manifest's ``aoti`` section. What
    ``build --backend aoti`` checks before it writes that section, and how ``validate`` checks a bundle ONNX
    Runtime's CPU provider cannot run (bf16)."""
    from ..bundle import WEIGHTS
    from ..runtime.backends.aoti import load_variant, map_weights
    from .onnx import variant_input_names, variant_inputs, variant_module

    device = section["device"]
    args = variant_inputs(model, geom, text_len, dtype, batch=1, seed=seed)
    with torch.no_grad():
        ref = variant_module(model, size, geom)(*(a.to(device) for a in args)).float()
    named = dict(zip(variant_input_names(model), args))
    folder = Path(folder)
    entry = next(e for e in section["variants"] if int(e["size"]) == size)
    fn = load_variant(folder / section["package"], entry, map_weights(folder / WEIGHTS), device=device, cache={})
    with torch.inference_mode():
        out = fn(*[named[n].to(device).contiguous() for n in section["inputs"]])
    out = out[0] if isinstance(out, (list, tuple)) else out
    return float((out.float() - ref).abs().max()), float(ref.abs().max())
