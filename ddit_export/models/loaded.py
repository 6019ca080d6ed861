"""What every loader returns (:class:`LoadedModel`, :class:`Conditioning`), the model-folder formats, and the folder
checks the FLUX and Wan loaders share. ``registry.py`` (the presets and ``load_model``) and ``loaders_wan.py`` (the
video family) build on it; it imports neither.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..errors import ConfigError, WeightsError
from ..settings import ScheduleSettings
from ..shapes import TokenGeometry, parse_resolutions
from .flux import ADAPTER_FILE, MultiPatchFlux

PIXEL_FORMAT = "ddit-pixel-model/1"
VIDEO_FORMAT = "ddit-pixel-video/1"  # a pixel-space Wan model folder (wan-mini): same layout, a Wan transformer
PIXEL_META = "ddit_model.json"
FLUX_FOLDERS = ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
WAN_FOLDERS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")


@dataclass
class Conditioning:
    """FLUX's text conditioning: per-token states, pooled vector and text position ids."""

    states: torch.Tensor
    pooled: torch.Tensor | None  # None for Wan (no pooled vector)
    txt_ids: torch.Tensor | None  # None for Wan (its RoPE covers the video tokens only)


@dataclass
class LoadedModel:
    """Everything a generation needs, independent of where the weights came from."""

    name: str
    transformer: MultiPatchFlux
    encode: Callable[[list[str]], Conditioning]
    decode: Callable[[torch.Tensor, TokenGeometry], "list"]  # fine-token latents -> PIL images
    scheduler_config: dict
    vae_scale: int
    latent_channels: int
    default_height: int
    default_width: int
    default_steps: int = 28
    guidance_embeds: bool = False
    schedule_defaults: ScheduleSettings = ScheduleSettings()
    default_prompt: str = "a large red circle at the center"
    extras: dict = field(default_factory=dict)
    #: (height, width) pairs the weights were trained at (``generate`` warns outside them); None: not known or not
    #: one list (random presets, FLUX.1-dev with its many aspect ratios), no warning
    trained_resolutions: tuple[tuple[int, int], ...] | None = None
    #: (height, width) its schedule profile was calibrated at (``generate`` warns when the profile runs at another
    #: size); None: not recorded (profiles older than the field), no warning
    schedule_resolution: tuple[int, int] | None = None
    #: video: the clip length its schedule profile was calibrated at (with ``schedule_resolution``); None: not recorded
    schedule_frames: int | None = None
    family: str = "flux"  # "wan": a video model (MultiPatchWan; geometry takes frames)
    default_frames: int | None = None  # video: the clip length by default
    vae_temporal: int = 1  # video: the VAE's temporal factor (Wan 2.1: 4; pixel space: 1)
    #: video: the clip lengths (frames) the weights were trained at (``generate`` warns at another); None: not known
    trained_frames: tuple[int, ...] | None = None

    @property
    def transformer_config(self) -> dict:
        if self.transformer is None:  # loaded without it (a bundle brings the transformer)
            return dict(self.__dict__.get("_trunk_config") or {})
        return dict(self.transformer.config)

    @property
    def lora_rank(self) -> int:
        return self.transformer.adapter_settings.rank

    def _check_rope(self, geom):
        """Wan's rotary position table covers ``rope_max_seq_len`` tokens per axis: a longer clip (or a larger side)
        is one error line here, not a reshape RuntimeError inside the transformer."""
        rope = self.transformer_config.get("rope_max_seq_len")
        if not rope:
            return
        p_t, p_h, p_w = geom.patch
        f, h, w = geom.grid
        if f > rope:
            latent = rope * p_t
            most = (latent - 1) * geom.vae_temporal + 1 if geom.vae_temporal > 1 else latent
            raise ConfigError(f"frames {geom.frames} make {f} token frames; {self.name} supports at most {rope} "
                              f"(rope_max_seq_len): at most {most} frames")
        for name, n, p, side in (("height", h, p_h, geom.height), ("width", w, p_w, geom.width)):
            if n > rope:
                raise ConfigError(f"{name} {side} makes {n} tokens; {self.name} supports at most {rope} "
                                  f"(rope_max_seq_len): at most {rope * p * geom.vae_scale} pixels")

    def geometry(self, height: int | None = None, width: int | None = None, frames: int | None = None):
        if self.family == "wan":
            from ..shapes import VideoGeometry

            geom = VideoGeometry(frames or self.default_frames, height or self.default_height,
                                 width or self.default_width, self.vae_scale, self.vae_temporal,
                                 tuple(self.transformer_config["patch_size"]), self.latent_channels)
            self._check_rope(geom)
            return geom
        if frames is not None:
            raise ConfigError(f"--frames applies to video models; {self.name} makes images")
        return TokenGeometry(height or self.default_height, width or self.default_width, self.vae_scale,
                             self.latent_channels)


# ---- what the loaders share ------------------------------------------------------------------------------------
def _refuse_family(folder: Path, want: str):
    """One clear error for a folder of the other family: a Wan folder for --model flux and the reverse."""
    try:
        cls = json.loads((folder / "model_index.json").read_text()).get("_class_name", "")
    except (OSError, ValueError, AttributeError):
        return  # _check_folder names what is missing
    is_wan = cls.startswith("Wan")
    if want == "flux" and is_wan:
        raise WeightsError(f"{folder} is a {cls} (video) folder: use --model wan --weights {folder}")
    if want == "wan" and not is_wan:
        raise WeightsError(f"{folder} is a {cls or 'non-Wan'} folder, not a Wan 2.1 (WanPipeline) folder: use "
                           f"--model flux for FLUX.1 folders")


def _check_folder(folder: Path, needed: list[str]):
    if not folder.is_dir():
        raise WeightsError(f"weights folder not found: {folder}")
    missing = [n for n in needed if not (folder / n).exists()]
    if missing:
        raise WeightsError(f"weights folder {folder} is incomplete: missing {', '.join(missing)}")


def _schedule_size(m: LoadedModel, meta: dict, folder: Path):
    """The size (a video's: and clip length) the folder's schedule profile was calibrated at, if recorded."""
    if "schedule_resolution" in meta:
        try:
            m.schedule_resolution = parse_resolutions([meta["schedule_resolution"]])[0]
        except ValueError as e:
            raise WeightsError(f"{folder / PIXEL_META}: schedule_resolution: {e}") from None
    f = meta.get("schedule_frames")
    if f is not None:
        if isinstance(f, bool) or not isinstance(f, int) or f < 1:
            raise WeightsError(f"{folder / PIXEL_META}: schedule_frames must be a positive integer, got {f!r}")
        m.schedule_frames = f


def _folder_parts(folder: Path, trunk_cls, adapters, **trunk_kw):
    """(trunk, word text encoder, scheduler, adapters file) of a pixel model folder (image or video); ``adapters``
    None: the folder's own file when it has one."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from .text import WordTextEncoder

    try:
        trunk = trunk_cls.from_pretrained(folder / "transformer", local_files_only=True, **trunk_kw)
        text = WordTextEncoder.from_pretrained(folder / "text_encoder", local_files_only=True,
                                               low_cpu_mem_usage=False)
    except (OSError, ValueError, RuntimeError) as e:
        raise WeightsError(f"could not load weights from {folder}: {str(e).splitlines()[0]}") from None
    sched = FlowMatchEulerDiscreteScheduler.from_pretrained(folder / "scheduler")
    if adapters is None and (folder / "transformer" / ADAPTER_FILE).is_file():
        adapters = folder / "transformer" / ADAPTER_FILE
    return trunk, text, sched, adapters


def write_model_folder(folder: str | Path, trunk, text_encoder, scheduler, meta: dict, *, model=None,
                       schedule: ScheduleSettings | None = None, prompt: str | None = None,
                       extra: dict | None = None) -> Path:
    """A pixel model folder (image or video): the three components with ``save_pretrained``, the adapters of
    ``model`` beside the trunk, and ``ddit_model.json`` = ``meta``, then the schedule and default prompt if given,
    then ``extra``."""
    folder = Path(folder)
    trunk.save_pretrained(folder / "transformer")
    text_encoder.save_pretrained(folder / "text_encoder")
    scheduler.save_pretrained(folder / "scheduler")
    if model is not None:
        model.save_adapters(folder / "transformer" / ADAPTER_FILE)
    meta = dict(meta)
    if schedule is not None:
        meta["schedule"] = dataclasses.asdict(schedule)
        if schedule.carry == "off":  # left out at its default: the folders (and their hashes) as before carry existed
            meta["schedule"].pop("carry")
    if prompt:
        meta["prompt"] = prompt
    meta.update(extra or {})
    (folder / PIXEL_META).write_text(json.dumps(meta, indent=2))
    return folder
