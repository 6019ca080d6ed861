"""A model whose every network comes from a bundle: what ``generate --bundle`` runs (pixel models: ONNX Runtime
alone; FLUX.1-dev bundles hold the transformer, and its text encoders and VAE come from ``--weights``)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError
from ..settings import ScheduleSettings
from ..shapes import TokenGeometry


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
        self.transformer_config = m["transformer_config"]
        self.lora_rank = m["lora_rank"]
        self.vae_scale = m["vae_scale"]
        self.latent_channels = m["latent_channels"]

    def geometry(self, height=None, width=None) -> TokenGeometry:
        m = self.manifest.model
        if (height or m["height"]) != m["height"] or (width or m["width"]) != m["width"]:
            raise ConfigError(f"this bundle was built for {m['height']}x{m['width']}; rebuild with "
                              f"--height {height or m['height']} --width {width or m['width']}")
        return TokenGeometry(m["height"], m["width"], self.vae_scale, self.latent_channels)

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
        from .images import pixels_to_pil

        if self.pipeline_model is not None:
            return self.pipeline_model.decode(latents, geom)
        return pixels_to_pil(latents, geom)


def open_bundle(folder, *, weights=None, threads=None, providers=None, verify=True):
    """(BundleModel, active OrtBundleBackend) for a bundle folder."""
    from .backends.onnxruntime import OrtBundleBackend

    backend = OrtBundleBackend(folder, threads=threads, providers=providers, verify=verify)
    man = backend.manifest
    pipeline_model = None
    if man.model["kind"] == "flux":
        if weights is None:
            raise ConfigError("a FLUX.1-dev bundle holds the transformer only: give --weights DIR for its text "
                              "encoders and VAE")
        from ..models.registry import load_model

        pipeline_model = load_model("flux", weights)
        pipeline_model.extras["text_len"] = man.model["text_len"]  # T5 length the graphs were built for
    backend.activate()
    return BundleModel(man.model["name"], man, backend, pipeline_model), backend
