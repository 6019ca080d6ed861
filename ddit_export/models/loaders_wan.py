"""The video family (Wan 2.1): the tiny random Wan, pixel video model folders (wan-mini), a diffusers Wan 2.1 folder,
and the config-only model that lets every check run before a Wan pipeline loads. ``registry.load_model`` dispatches
here.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import WeightsError
from ..settings import ScheduleSettings
from .flux import ADAPTER_FILE
from .loaded import (VIDEO_FORMAT, WAN_FOLDERS, Conditioning, LoadedModel, _check_folder, _folder_parts,
                     _refuse_family, _schedule_size, write_model_folder)


def tiny_wan_components(seed: int = 0, vocab=None, frames_patch: int = 2):
    """Random-weight Wan trunk (pixel space, patch (2, 4, 4): 8 frames x 32 x 32 -> 4 x 8 x 8 tokens) + word
    encoder with the video clips' vocabulary + a static-shift flow-match scheduler."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanTransformer3DModel

    from .text import WordTextEncoder

    if vocab is None:
        from .vocab import VIDEO_VOCAB as vocab
    torch.manual_seed(seed)
    trunk = WanTransformer3DModel(patch_size=(frames_patch, 4, 4), num_attention_heads=2, attention_head_dim=12,
                                  in_channels=3, out_channels=3, text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2,
                                  rope_max_seq_len=64)
    text = WordTextEncoder(vocab=list(vocab), dim=32, joint_attention_dim=32, pooled_projection_dim=32)
    return trunk, text, FlowMatchEulerDiscreteScheduler(shift=2.0, use_dynamic_shifting=False)


def save_video_model(folder: str | Path, trunk, text_encoder, scheduler, *, name: str, height: int, width: int,
                     frames: int, steps: int = 28, model=None, schedule: ScheduleSettings | None = None,
                     prompt: str | None = None) -> Path:
    """Write a pixel video model folder (format ``ddit-pixel-video/1``) loadable by :func:`load_model`."""
    meta = {"format": VIDEO_FORMAT, "name": name, "height": height, "width": width, "frames": frames,
            "steps": steps}
    return write_model_folder(folder, trunk, text_encoder, scheduler, meta, model=model, schedule=schedule,
                              prompt=prompt)


def _load_video_folder(folder: Path, meta: dict, adapters, sizes, adapter, dtype, device) -> LoadedModel:
    from diffusers import WanTransformer3DModel

    # (WanTransformer3DModel keeps some modules in fp32, which diffusers allows only with low_cpu_mem_usage)
    trunk, text, sched, adapters = _folder_parts(folder, WanTransformer3DModel, adapters)
    schedule = ScheduleSettings(**meta["schedule"]) if "schedule" in meta else ScheduleSettings()
    m = _video_model(meta["name"], trunk, text, dict(sched.config), meta["height"], meta["width"], meta["frames"],
                     meta.get("steps", 28), adapters, sizes, adapter, dtype, device, schedule=schedule)
    m.default_prompt = meta.get("prompt", m.default_prompt)
    m.trained_resolutions = ((meta["height"], meta["width"]),)
    m.trained_frames = (int(meta["frames"]),)
    _schedule_size(m, meta, folder)
    return m


def _multipatch_wan(trunk, adapters, sizes, adapter):
    from .wan import MultiPatchWan

    if adapters is not None:
        return MultiPatchWan.from_trunk_and_adapters(trunk, adapters)
    return MultiPatchWan(trunk, sizes=sizes, adapter=adapter)


def _video_model(name, trunk, text, sched_cfg, height, width, frames, steps, adapters, sizes, adapter, dtype, device,
                 schedule=ScheduleSettings()):
    from .wan import video_pixels_to_frames

    mp = _multipatch_wan(trunk.eval(), adapters, sizes, adapter).to(device=device, dtype=dtype).eval()
    text = text.to(device=device).eval()

    def encode(prompts):
        with torch.no_grad():
            states, _ = text.encode(list(prompts))
        return Conditioning(states.to(dtype), None, None)

    return LoadedModel(name=name, transformer=mp, encode=encode, decode=video_pixels_to_frames,
                       scheduler_config=sched_cfg, vae_scale=1, latent_channels=trunk.config.in_channels,
                       default_height=height, default_width=width, default_steps=steps, schedule_defaults=schedule,
                       default_prompt="a large red circle moving right on a black background",
                       extras={"text_encoder": text}, family="wan", default_frames=frames)


def load_config_only(model: str, weights=None) -> LoadedModel | None:
    """``--model wan``: a LoadedModel of the folder's JSON configs alone (no weights; ``transformer`` None, encode and
    decode refuse), enough for the geometry (frames, sides, RoPE, sizes), the defaults and the schedule, so that
    every check on them runs before the whole pipeline (UMT5, VAE, transformer) loads. None for the other models
    (their checks run on the loaded model)."""
    if model != "wan" or weights is None:
        return None
    folder = Path(weights)
    _refuse_family(folder, "wan")
    _check_folder(folder, ["model_index.json"] + list(WAN_FOLDERS) + ["transformer/config.json"])
    try:
        trunk_config = json.loads((folder / "transformer" / "config.json").read_text())
        vae = json.loads((folder / "vae" / "config.json").read_text())
        patch = list(trunk_config["patch_size"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise WeightsError(f"could not read the Wan configs in {folder}: {e}") from None

    def refuse(*_):
        raise RuntimeError("load_config_only: a config-only model has no weights (load_model loads them)")

    m = LoadedModel(name="wan", transformer=None, encode=refuse, decode=refuse, scheduler_config={},
                    vae_scale=int(vae.get("scale_factor_spatial", 8)),  # AutoencoderKLWan's defaults
                    latent_channels=int(vae.get("z_dim", trunk_config.get("in_channels", 16))),
                    default_height=480, default_width=832, default_steps=50, extras={"guidance": 5.0},
                    family="wan", default_frames=81, vae_temporal=int(vae.get("scale_factor_temporal", 4)))
    m.__dict__["_trunk_config"] = {**trunk_config, "patch_size": patch}
    m.schedule_defaults = _saved_drop_in_schedule(folder) or m.schedule_defaults
    return m


# written beside the trunk by runtime/pipeline.py's DDiTTransformer.save_pretrained (runtime sits above models/)
DROP_IN_SCHEDULE_FILE = "ddit_schedule.json"


def _saved_drop_in_schedule(folder: Path) -> ScheduleSettings | None:
    """The schedule of a WanPipeline saved with the DDiT drop-in as its transformer (``ddit_schedule.json``)."""
    path = folder / "transformer" / DROP_IN_SCHEDULE_FILE
    if not path.is_file():
        return None
    try:
        return ScheduleSettings(**json.loads(path.read_text())["schedule"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise WeightsError(f"{path} is not a readable ddit schedule: {e}") from None


def _load_wan(folder: Path, adapters, sizes, adapter, dtype, device, transformer: bool = True) -> LoadedModel:
    """A local diffusers Wan 2.1 text-to-video folder, loaded with ``WanPipeline.from_pretrained``."""
    _check_folder(folder, ["model_index.json"] + list(WAN_FOLDERS) + ["transformer/config.json"])
    try:
        from diffusers import WanPipeline

        skip = {} if transformer else {"transformer": None}
        pipe = WanPipeline.from_pretrained(str(folder), local_files_only=True, torch_dtype=dtype, **skip)
    except ImportError as e:
        raise WeightsError(f"loading Wan 2.1 needs transformers, sentencepiece and ftfy "
                           f"(pip install 'ddit-export[flux]'): {e}") from None
    except (OSError, ValueError, RuntimeError, TypeError) as e:
        raise WeightsError(f"could not load Wan weights from {folder}: {str(e).splitlines()[0]}") from None
    pipe.to(device)
    schedule = _saved_drop_in_schedule(folder)
    if transformer and hasattr(pipe.transformer, "model") and hasattr(pipe.transformer.model, "trunk"):
        pipe.transformer = pipe.transformer.model.trunk  # a saved drop-in: its trunk (its adapters are beside it)
    if adapters is None and (folder / "transformer" / ADAPTER_FILE).is_file():
        adapters = folder / "transformer" / ADAPTER_FILE
    if transformer:
        mp = _multipatch_wan(pipe.transformer.eval(), adapters, sizes, adapter).to(device=device, dtype=dtype).eval()
        trunk_config = dict(pipe.transformer.config)
    else:
        mp = None
        trunk_config = json.loads((folder / "transformer" / "config.json").read_text())
    extras = {"pipeline": pipe, "text_len": 512, "guidance": 5.0, "negative_prompt": ""}

    def encode(prompts):
        with torch.no_grad():
            states, _ = pipe.encode_prompt(prompt=list(prompts), do_classifier_free_guidance=False,
                                           max_sequence_length=extras["text_len"], device=device)
        return Conditioning(states.to(dtype), None, None)

    def encode_negative(batch: int):  # WanPipeline's default negative prompt is the empty string
        return encode([extras["negative_prompt"]] * batch)

    extras["encode_negative"] = encode_negative

    def decode(latents, geom):
        from .wan import unpack_video

        vae = pipe.vae
        lat = unpack_video(latents, (geom.latent_frames,) + geom.latent_hw, geom.patch).to(vae.dtype)
        mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1).to(lat)
        std = 1.0 / torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1).to(lat)
        with torch.no_grad():
            video = vae.decode(lat / std + mean, return_dict=False)[0]
        frames = pipe.video_processor.postprocess_video(video, output_type="pil")
        return [list(clip) for clip in frames]

    m = LoadedModel(name="wan", transformer=mp, encode=encode, decode=decode,
                    scheduler_config=dict(pipe.scheduler.config), vae_scale=pipe.vae_scale_factor_spatial,
                    latent_channels=pipe.vae.config.z_dim, default_height=480, default_width=832,
                    default_steps=50, extras=extras, family="wan", default_frames=81,
                    vae_temporal=pipe.vae_scale_factor_temporal)
    m.default_prompt = "a cat walks on the grass, realistic"
    if schedule is not None:
        m.schedule_defaults = schedule
    if mp is None:
        m.__dict__["_trunk_config"] = trunk_config
    return m
