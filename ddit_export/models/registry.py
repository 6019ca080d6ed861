"""Model presets and loading. One loading path: ``from_pretrained`` on a local folder, for the tiny test model,
flux-mini and a real FLUX.1-dev checkout alike.

Two folder kinds are understood:
- a *pixel model* folder (``ddit_model.json``, ``transformer/``, ``text_encoder/``, ``scheduler/``): the tiny
  preset when saved, and flux-mini;
- a diffusers FLUX pipeline folder (``model_index.json`` with ``transformer/``, ``vae/``, text encoders):
  ``--model flux --weights DIR``.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..errors import ConfigError, ModelNotFoundError, WeightsError
from ..settings import DEFAULT_MODEL, AdapterSettings, DEFAULT_SIZES, ScheduleSettings
from ..shapes import TokenGeometry, parse_resolutions
from .vocab import TINY_VOCAB  # re-exported: the tiny preset's words
from .flux import ADAPTER_FILE, MultiPatchFlux

PIXEL_FORMAT = "ddit-pixel-model/1"
VIDEO_FORMAT = "ddit-pixel-video/1"  # a pixel-space Wan model folder (wan-mini): same layout, a Wan transformer
PIXEL_META = "ddit_model.json"
PACKAGE_WEIGHTS = Path(__file__).resolve().parent.parent / "zoo" / "weights"
ZOO_MODELS = ("flux-mini", "flux-mini-64", "wan-mini")  # trained here, shipped in zoo/weights/<name>
PRESETS = ZOO_MODELS + ("tiny", "random-20m", "flux", "tiny-wan", "wan")
VIDEO_PRESETS = ("wan-mini", "tiny-wan", "wan")
WAN_FOLDERS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
# Random-weight FLUX-architecture presets in pixel space: (width, heads, (double, single) blocks, image side in px).
RANDOM_PRESETS = {
    "tiny": (64, 2, (1, 1), 32),  # for tests: 256 fine tokens
    "random-20m": (384, 6, (2, 4), 64),  # for benchmarks: 20.6 M parameters, 1024 fine tokens
}
FLUX_FOLDERS = ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")

# The random tiny model's Δ³ is ~0.002-0.05 (see `ddit-export schedule` on its trace): the paper's 0.001 would
# keep it all-fine, so the preset carries a threshold at which its schedule visibly switches sizes.
TINY_SCHEDULE = ScheduleSettings(tau=0.01)


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
    folder = Path(folder)
    trunk.save_pretrained(folder / "transformer")
    text_encoder.save_pretrained(folder / "text_encoder")
    scheduler.save_pretrained(folder / "scheduler")
    if model is not None:
        model.save_adapters(folder / "transformer" / ADAPTER_FILE)
    meta = {"format": PIXEL_FORMAT, "name": name, "height": height, "width": width, "steps": steps}
    if schedule is not None:
        meta["schedule"] = dataclasses.asdict(schedule)
    if prompt:
        meta["prompt"] = prompt
    if trained_resolutions is not None:
        meta["trained_resolutions"] = [list(r) for r in parse_resolutions(trained_resolutions)]
    (folder / PIXEL_META).write_text(json.dumps(meta, indent=2))
    return folder


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


# ---- Wan (video) -------------------------------------------------------------------------------------------
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
    folder = Path(folder)
    trunk.save_pretrained(folder / "transformer")
    text_encoder.save_pretrained(folder / "text_encoder")
    scheduler.save_pretrained(folder / "scheduler")
    if model is not None:
        model.save_adapters(folder / "transformer" / ADAPTER_FILE)
    meta = {"format": VIDEO_FORMAT, "name": name, "height": height, "width": width, "frames": frames,
            "steps": steps}
    if schedule is not None:
        meta["schedule"] = dataclasses.asdict(schedule)
    if prompt:
        meta["prompt"] = prompt
    (folder / PIXEL_META).write_text(json.dumps(meta, indent=2))
    return folder


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
