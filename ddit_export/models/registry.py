"""Model presets and loading. One loading path: ``from_pretrained`` on a local folder, for the tiny test model,
flux-mini and a real FLUX.1-dev checkout alike.

The video family's loaders live in ``loaders_wan.py``; what every loader returns (``LoadedModel``) and the folder
formats in ``loaded.py``. Two folder kinds are understood here:
- a *pixel model* folder (``ddit_model.json``, ``transformer/``, ``text_encoder/``, ``scheduler/``): the tiny
  preset when saved, and flux-mini;
- a diffusers FLUX pipeline folder (``model_index.json`` with ``transformer/``, ``vae/``, text encoders):
  ``--model flux --weights DIR``.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import ConfigError, ModelNotFoundError, WeightsError
from ..settings import DEFAULT_MODEL, AdapterSettings, DEFAULT_SIZES, ScheduleSettings
from ..shapes import parse_resolutions
from .flux import ADAPTER_FILE, MultiPatchFlux
# re-exported: what callers import from the registry (one place to look for a model)
from .loaded import (FLUX_FOLDERS, PIXEL_FORMAT, PIXEL_META, VIDEO_FORMAT, WAN_FOLDERS, Conditioning,  # noqa: F401
                     LoadedModel, _check_folder, _folder_parts, _refuse_family, _schedule_size, write_model_folder)
from .loaders_wan import (DROP_IN_SCHEDULE_FILE, _load_video_folder, _load_wan, _video_model,  # noqa: F401
                          load_config_only, save_video_model, tiny_wan_components)
from .vocab import TINY_VOCAB  # re-exported: the tiny preset's words

PACKAGE_WEIGHTS = Path(__file__).resolve().parent.parent / "zoo" / "weights"
ZOO_MODELS = ("flux-mini", "flux-mini-64", "wan-mini")  # trained here, shipped in zoo/weights/<name>
PRESETS = ZOO_MODELS + ("tiny", "random-20m", "flux", "tiny-wan", "wan")
VIDEO_PRESETS = ("wan-mini", "tiny-wan", "wan")
# Random-weight FLUX-architecture presets in pixel space: (width, heads, (double, single) blocks, image side in px).
RANDOM_PRESETS = {
    "tiny": (64, 2, (1, 1), 32),  # for tests: 256 fine tokens
    "random-20m": (384, 6, (2, 4), 64),  # for benchmarks: 20.6 M parameters, 1024 fine tokens
}

# The random tiny model's Δ³ is ~0.002-0.05 (see `ddit-export schedule` on its trace): the paper's 0.001 would
# keep it all-fine, so the preset carries a threshold at which its schedule visibly switches sizes.
TINY_SCHEDULE = ScheduleSettings(tau=0.01)


# ---- building the tiny random model ------------------------------------------------------------------------
def tiny_components(seed: int = 0, vocab=TINY_VOCAB, width: int = 64, layers=(1, 1), guidance_embeds=False,
                    heads: int = 2):
    """Random-weight FLUX trunk + word encoder in pixel space (RGB packed 2x2: 12 channels per token)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    from .text import WordTextEncoder

    torch.manual_seed(seed)
    trunk = FluxTransformer2DModel(patch_size=1, in_channels=12, num_layers=layers[0], num_single_layers=layers[1],
                                   attention_head_dim=width // heads, num_attention_heads=heads,
                                   joint_attention_dim=32, pooled_projection_dim=32,
                                   guidance_embeds=guidance_embeds, axes_dims_rope=(width // heads - 24, 12, 12))
    text = WordTextEncoder(vocab=list(vocab), dim=32, joint_attention_dim=32, pooled_projection_dim=32)
    sched = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=True, base_image_seq_len=64,
                                            max_image_seq_len=1024, base_shift=0.5, max_shift=1.15)
    return trunk, text, sched


def save_pixel_model(folder: str | Path, trunk, text_encoder, scheduler, *, name: str, height: int, width: int,
                     steps: int = 28, model: MultiPatchFlux | None = None,
                     schedule: ScheduleSettings | None = None, prompt: str | None = None,
                     trained_resolutions=None) -> Path:
    """Write a pixel-model folder loadable by :func:`load_model` (and by plain diffusers for the trunk).
    ``trained_resolutions``: ``[(h, w), ...]`` the weights were trained at (default: just ``height`` x ``width``)."""
    meta = {"format": PIXEL_FORMAT, "name": name, "height": height, "width": width, "steps": steps}
    extra = None
    if trained_resolutions is not None:
        extra = {"trained_resolutions": [list(r) for r in parse_resolutions(trained_resolutions)]}
    return write_model_folder(folder, trunk, text_encoder, scheduler, meta, model=model, schedule=schedule,
                              prompt=prompt, extra=extra)


def zoo_folder(name: str) -> Path | None:
    """The shipped folder of a zoo model (``flux-mini``, ``flux-mini-64``), else None."""
    return PACKAGE_WEIGHTS / name if name in ZOO_MODELS else None


# ---- loading -----------------------------------------------------------------------------------------------
def load_model(model: str = DEFAULT_MODEL, weights: str | Path | None = None, *, adapters: str | Path | None = None,
               sizes=DEFAULT_SIZES, adapter: AdapterSettings = AdapterSettings(), dtype=torch.float32,
               device="cpu", transformer: bool = True) -> LoadedModel:
    """Load a preset (``flux-mini``, ``tiny``, ``flux`` with ``weights``) or a pixel-model folder path.
    ``transformer=False`` (``flux`` only): text encoders, VAE and scheduler without the transformer, for a bundle
    that holds the transformer itself (the returned model's ``transformer`` is None)."""
    if model == "flux":
        if weights is None:
            raise ConfigError("--model flux needs --weights DIR (a local FLUX.1-dev diffusers folder)")
        _refuse_family(Path(weights), "flux")
        return _load_flux(Path(weights), adapters, sizes, adapter, dtype, device, transformer)
    if model == "wan":
        if weights is None:
            raise ConfigError("--model wan needs --weights DIR (a local Wan 2.1 diffusers folder)")
        _refuse_family(Path(weights), "wan")
        return _load_wan(Path(weights), adapters, sizes, adapter, dtype, device, transformer)
    if model == "tiny-wan" and weights is None:
        trunk, text, sched = tiny_wan_components()
        return _video_model("tiny-wan", trunk, text, dict(sched.config), 32, 32, 8, 28, adapters, sizes, adapter,
                            dtype, device, schedule=TINY_SCHEDULE)
    if model in RANDOM_PRESETS and weights is None:
        width, heads, layers, side = RANDOM_PRESETS[model]
        trunk, text, sched = tiny_components(width=width, layers=layers, heads=heads)
        m = _pixel_model(model, trunk, text, dict(sched.config), side, side, 28, None, sizes, adapter, dtype, device)
        m.schedule_defaults = TINY_SCHEDULE
        return m
    if model in ZOO_MODELS and weights is None:
        weights = zoo_folder(model)
        if not (weights / PIXEL_META).is_file():
            raise WeightsError(f"{model} weights are not in this installation ({weights}); "
                               f"use --model tiny or --model flux --weights DIR")
    elif model not in PRESETS:
        if Path(model).is_dir():
            weights = Path(model)
        else:
            raise ModelNotFoundError(f"unknown model {model!r}: choose one of {', '.join(PRESETS)} "
                                     f"or give a model folder")
    elif model in RANDOM_PRESETS or model == "tiny-wan":
        raise ConfigError(f"--weights does not apply to the random preset {model!r}")
    return _load_pixel_folder(Path(weights), adapters, sizes, adapter, dtype, device)


def _load_pixel_folder(folder, adapters, sizes, adapter, dtype, device) -> LoadedModel:
    from diffusers import FluxTransformer2DModel

    _check_folder(folder, [PIXEL_META, "transformer/config.json", "text_encoder/config.json",
                           "scheduler/scheduler_config.json"])
    meta = json.loads((folder / PIXEL_META).read_text())
    if meta.get("format") == VIDEO_FORMAT:
        return _load_video_folder(folder, meta, adapters, sizes, adapter, dtype, device)
    if meta.get("format") != PIXEL_FORMAT:
        raise WeightsError(f"{folder / PIXEL_META}: unknown format {meta.get('format')!r}")
    try:
        trained = parse_resolutions(meta.get("trained_resolutions", [[meta["height"], meta["width"]]]))
    except ValueError as e:
        raise WeightsError(f"{folder / PIXEL_META}: {e}") from None
    trunk, text, sched, adapters = _folder_parts(folder, FluxTransformer2DModel, adapters, low_cpu_mem_usage=False)
    m = _pixel_model(meta["name"], trunk, text, dict(sched.config), meta["height"], meta["width"],
                     meta.get("steps", 28), adapters, sizes, adapter, dtype, device)
    if "schedule" in meta:
        m.schedule_defaults = ScheduleSettings(**meta["schedule"])
    m.default_prompt = meta.get("prompt", m.default_prompt)
    m.trained_resolutions = trained
    _schedule_size(m, meta, folder)
    return m


def _multipatch(trunk, adapters, sizes, adapter) -> MultiPatchFlux:
    if adapters is not None:
        return MultiPatchFlux.from_trunk_and_adapters(trunk, adapters)
    return MultiPatchFlux(trunk, sizes=sizes, adapter=adapter)


def _pixel_model(name, trunk, text, sched_cfg, height, width, steps, adapters, sizes, adapter, dtype, device):
    from ..images import pixels_to_pil

    mp = _multipatch(trunk.eval(), adapters, sizes, adapter).to(device=device, dtype=dtype).eval()
    text = text.to(device=device).eval()

    def encode(prompts):
        with torch.no_grad():
            states, pooled = text.encode(list(prompts))
        return Conditioning(states.to(dtype), pooled.to(dtype),
                            torch.zeros(states.shape[1], 3, dtype=dtype, device=device))

    def decode(latents, geom):
        return pixels_to_pil(latents, geom)

    return LoadedModel(name=name, transformer=mp, encode=encode, decode=decode, scheduler_config=sched_cfg,
                       vae_scale=1, latent_channels=trunk.config.in_channels // 4, default_height=height,
                       default_width=width, default_steps=steps,
                       guidance_embeds=bool(trunk.config.guidance_embeds), extras={"text_encoder": text})


def _load_flux(folder: Path, adapters, sizes, adapter, dtype, device, transformer: bool = True) -> LoadedModel:
    _check_folder(folder, ["model_index.json"] + [f"{n}" for n in FLUX_FOLDERS] + ["transformer/config.json"])
    try:
        from diffusers import FluxPipeline

        skip = {} if transformer else {"transformer": None}  # 23 GB not read when a bundle brings its own
        pipe = FluxPipeline.from_pretrained(str(folder), local_files_only=True, torch_dtype=dtype, **skip)
    except ImportError as e:
        raise WeightsError(f"loading FLUX.1-dev needs transformers and sentencepiece "
                           f"(pip install 'ddit-export[flux]'): {e}") from None
    except (OSError, ValueError, RuntimeError) as e:
        raise WeightsError(f"could not load FLUX weights from {folder}: {str(e).splitlines()[0]}") from None
    pipe.to(device)
    if adapters is None and (folder / "transformer" / ADAPTER_FILE).is_file():
        adapters = folder / "transformer" / ADAPTER_FILE
    if transformer:
        mp = _multipatch(pipe.transformer.eval(), adapters, sizes, adapter).to(device=device, dtype=dtype).eval()
        trunk_config = pipe.transformer.config
    else:
        mp = None
        trunk_config = json.loads((folder / "transformer" / "config.json").read_text())

    extras = {"pipeline": pipe, "text_len": 512}

    def encode(prompts):
        with torch.no_grad():
            states, pooled, txt_ids = pipe.encode_prompt(prompt=list(prompts), prompt_2=None, device=device,
                                                         max_sequence_length=extras["text_len"])
        return Conditioning(states, pooled, txt_ids)

    def decode(latents, geom):
        lat = pipe._unpack_latents(latents, geom.height, geom.width, pipe.vae_scale_factor)
        lat = lat / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
        with torch.no_grad():
            image = pipe.vae.decode(lat.to(pipe.vae.dtype), return_dict=False)[0]
        return pipe.image_processor.postprocess(image, output_type="pil")

    return LoadedModel(name="flux", transformer=mp, encode=encode, decode=decode,
                       scheduler_config=dict(pipe.scheduler.config), vae_scale=pipe.vae_scale_factor,
                       latent_channels=trunk_config["in_channels"] // 4, default_height=1024,
                       default_width=1024, default_steps=50,
                       guidance_embeds=bool(trunk_config.get("guidance_embeds")), extras=extras)


