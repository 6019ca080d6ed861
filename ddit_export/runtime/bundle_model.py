"""A model whose every network comes from a bundle: what ``generate --bundle`` runs (pixel models: ONNX Runtime
alone; FLUX.1-dev bundles hold the transformer, and its text encoders and VAE come from ``--weights``)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..bundle import is_video
from ..errors import ConfigError
from ..settings import CacheSettings, ScheduleSettings
from ..shapes import geometry_from_entry


@dataclass
class BundleModel:
    name: str
    manifest: object
    backend: object
    pipeline_model: object = None  # LoadedModel of a FLUX folder, for text encoders and VAE

    def __post_init__(self):
        m = self.manifest.model
        self.scheduler_config = m["scheduler_config"]
        self.default_steps = m["default_steps"]
        self.guidance_embeds = m["guidance_embeds"]
        self.default_prompt = m.get("default_prompt", "a red circle")
        self.schedule_defaults = ScheduleSettings(**self.manifest.schedule)
        self.cache_defaults = CacheSettings.from_dict(getattr(self.manifest, "cache", None))
        self.transformer_config = m["transformer_config"]
        self.lora_rank = m["lora_rank"]
        self.vae_scale = m["vae_scale"]
        self.latent_channels = m["latent_channels"]
        self.trained_resolutions = self.manifest.trained_resolutions
        self.trained_frames = self.manifest.trained_frames
        self.schedule_resolution = self.manifest.schedule_resolution
        self.schedule_frames = self.manifest.schedule_frames
        self.family = "wan" if is_video(self.manifest) else "flux"
        self.default_frames = m.get("frames")
        self.extras = self.pipeline_model.extras if self.pipeline_model is not None else {}

    def geometry(self, height=None, width=None, frames=None):
        m = self.manifest.model
        if (height or m["height"]) != m["height"] or (width or m["width"]) != m["width"]:
            raise ConfigError(f"this bundle was built for {m['height']}x{m['width']}; rebuild with "
                              f"--height {height or m['height']} --width {width or m['width']}")
        if self.family == "wan" and (frames or m["frames"]) != m["frames"]:
            raise ConfigError(f"this bundle was built for {m['frames']} frames; rebuild with --frames {frames}")
        if self.family != "wan" and frames is not None:
            raise ConfigError(f"--frames applies to video bundles; {self.name} makes images")
        return geometry_from_entry(m)

    def encode(self, prompts):
        from ..models.registry import Conditioning
        from ..models.text import tokenize

        if self.pipeline_model is not None:
            return self.pipeline_model.encode(prompts)
        te = self.manifest.text_encoder
        if te is None:
            raise ConfigError("this bundle has no text encoder: give --weights DIR for the model's text encoders")
        ids, mask = tokenize(te["vocab"], te["max_length"], list(prompts))
        states, pooled = self.backend.encode_words(ids, mask)
        return Conditioning(torch.from_numpy(states), torch.from_numpy(pooled),
                            torch.zeros(states.shape[1], 3))

    def decode(self, latents, geom):
        from ..images import pixels_to_pil

        if self.pipeline_model is not None:
            return self.pipeline_model.decode(latents, geom)
        if self.family == "wan":
            from ..models.wan import video_pixels_to_frames

            return video_pixels_to_frames(latents, geom)
        return pixels_to_pil(latents, geom)


BACKENDS = ("auto", "onnxruntime", "tensorrt", "aoti")


def open_bundle(folder, *, weights=None, threads=None, providers=None, verify=True, backend="auto",
                fallback: bool = False, memory: str = "shared"):
    """(BundleModel, active backend) for a bundle folder.

    ``backend="auto"`` runs TensorRT when the bundle has engines and tensorrt imports, else ONNX Runtime.
    ``"tensorrt"`` insists on TensorRT and fails with what to rebuild, unless ``fallback`` asks for ONNX Runtime.
    ``"aoti"`` runs the AOTInductor package (``build --backend aoti``), the word encoder too when the package has
    it (pixel bundles built with it in: what the C++ runtime runs); else the word encoder stays on ONNX Runtime.
    """
    from .backends.onnxruntime import OrtBundleBackend

    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    ort_backend = OrtBundleBackend(folder, threads=threads, providers=providers, verify=verify, memory=memory)
    man = ort_backend.manifest
    if man.model["kind"] == "flux" and weights is None:
        raise ConfigError("a FLUX.1-dev bundle holds the transformer only: give --weights DIR for its text "
                          "encoders and VAE")
    if man.model["kind"] == "wan" and weights is None:
        raise ConfigError("a Wan 2.1 bundle holds the transformer only: give --weights DIR (the local Wan 2.1 "
                          "diffusers folder) for its text encoder and VAE")
    if man.quantized and backend in ("aoti", "tensorrt"):  # QDQ graphs: ONNX Runtime only (issue 22)
        from ..bundle import quantized_unsupported

        raise ConfigError(quantized_unsupported({"aoti": "AOTInductor", "tensorrt": "TensorRT"}[backend],
                                                man.effective_precision))
    if backend == "auto":
        backend = "tensorrt" if man.tensorrt and _tensorrt_importable() else "onnxruntime"
    if backend == "tensorrt":
        from .backends.tensorrt import open_tensorrt

        # the files (engines included) were hashed just above: once is enough
        run_backend = open_tensorrt(folder, fallback="onnxruntime" if fallback else None, verify=False)
        ort_backend.text_only = True  # the word encoder stays on ONNX Runtime
    elif backend == "aoti":
        from .backends.aoti import AotiBackend, AotiTextEncoder

        run_backend = AotiBackend(folder, manifest=man, threads=threads)  # the files were hashed just above
        ort_backend.text_only = True
        run_backend.activate()
        if man.text_encoder and AotiTextEncoder.available(run_backend.section):
            text_backend = AotiTextEncoder(folder, run_backend.section)
            text_backend.activate()
            return BundleModel(man.model["name"], man, text_backend, None), run_backend
    else:
        run_backend = ort_backend
    pipeline_model = None
    if man.model["kind"] in ("flux", "wan"):
        from ..models.registry import load_model

        # the bundle brings the transformer; the folder its text encoders and VAE
        pipeline_model = load_model(man.model["kind"], weights, transformer=False)
        pipeline_model.extras["text_len"] = man.model["text_len"]  # T5 length the graphs were built for
    ort_backend.activate()
    return BundleModel(man.model["name"], man, ort_backend, pipeline_model), run_backend


def _tensorrt_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorrt") is not None
