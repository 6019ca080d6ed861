"""Text embeddings to files, for the C++ runtime (``ddit-export encode``): the arrays ``ddit-run --states/--pooled``
reads and a service passes as ``ddit_request.states/pooled``.

FLUX.1-dev bundles (kind "flux") hold the transformer only: CLIP and T5 come from the ``--weights`` folder and T5
runs at the bundle's ``model.text_len``. Pixel bundles carry their word encoder (ONNX) and need nothing else."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ConfigError

DEFAULT_TEXT_LEN = 512  # FLUX.1-dev's T5 length (models.registry._load_flux)
STATES, POOLED = "states.npy", "pooled.npy"


def encode(prompts, *, bundle=None, weights=None, text_len=None) -> tuple[np.ndarray, np.ndarray]:
    """(states (B, text_len, joint_dim), pooled (B, pooled_dim)) as float32, checked against ``bundle``'s shapes."""
    prompts = list(prompts)
    if not prompts:
        raise ConfigError("give at least one --prompt")
    if any(not isinstance(p, str) or not p.strip() for p in prompts):
        raise ConfigError("every --prompt must be non-empty text")
    man = None
    if bundle is not None:
        from .. import bundle as bundle_mod

        man = bundle_mod.load(bundle, hashes=False)  # only the text encoder is read; no 23 GB hash
        if bundle_mod.is_video(man):
            raise ConfigError("encode writes image embeddings for the C++ runtime; video bundles are not run there")
        want = man.model["text_len"]
        if text_len is not None and text_len != want:
            raise ConfigError(f"--text-len {text_len} differs from the bundle's text length {want}: leave it out")
        text_len = want
    if man is not None and man.model["kind"] != "flux":
        if weights is not None:
            raise ConfigError(f"bundle {bundle} ({man.model['name']}) brings its own text encoder: leave --weights "
                              f"out")
        states, pooled = _bundle_words(bundle, man, prompts)
    else:
        if weights is None:
            raise ConfigError("FLUX embeddings need --weights DIR (the FLUX.1-dev diffusers folder, for CLIP and "
                              "T5)" + ("" if man is not None else ", or --bundle B of a pixel model"))
        from ..models.registry import load_model

        model = load_model("flux", weights, transformer=False)
        model.extras["text_len"] = text_len or DEFAULT_TEXT_LEN
        cond = model.encode(prompts)
        states, pooled = cond.states, cond.pooled
    states = states.detach().float().cpu().numpy() if hasattr(states, "detach") else np.asarray(states, np.float32)
    pooled = pooled.detach().float().cpu().numpy() if hasattr(pooled, "detach") else np.asarray(pooled, np.float32)
    if man is not None:
        tc = man.model["transformer_config"]
        need_s = (len(prompts), man.model["text_len"], tc["joint_attention_dim"])
        need_p = (len(prompts), tc["pooled_projection_dim"])
        if states.shape != need_s or pooled.shape != need_p:
            raise ConfigError(f"the text encoders give states {states.shape} and pooled {pooled.shape}; bundle "
                              f"{bundle} needs {need_s} and {need_p}: are --weights the folder it was built from?")
    return np.ascontiguousarray(states, np.float32), np.ascontiguousarray(pooled, np.float32)


def _bundle_words(bundle, man, prompts):
    from .backends.onnxruntime import OrtBundleBackend
    from .bundle_model import BundleModel

    if man.text_encoder is None:
        raise ConfigError(f"bundle {bundle} has no text encoder: give --weights DIR for the model's text encoders")
    ort = OrtBundleBackend(bundle, verify=False)
    ort.text_only = True
    ort.activate()
    try:
        cond = BundleModel(man.model["name"], man, ort).encode(prompts)
    finally:
        ort.deactivate()
    return cond.states, cond.pooled


def encode_to_folder(prompts, out, **kw) -> tuple[np.ndarray, np.ndarray]:
    """:func:`encode`, then ``out/states.npy`` and ``out/pooled.npy``."""
    states, pooled = encode(prompts, **kw)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / STATES, states)
    np.save(out / POOLED, pooled)
    return states, pooled
