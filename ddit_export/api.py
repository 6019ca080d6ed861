"""The Python API behind the CLI commands: plain functions taking plain values, returning results."""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from .errors import ConfigError
from .fsutil import check_writable, write_files_atomic
from .settings import (DEFAULT_MODEL, DEFAULT_SIZES, MAX_FPS, CacheSettings, GenerateSettings, check_prompts,
                       check_shape, check_sizes, parse_policy)

#: Image types ``save_images`` writes, by suffix (PIL format names).
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
#: Video types ``save_videos`` writes (video_io.save_video: GIF with Pillow, MP4 with imageio-ffmpeg).
VIDEO_FORMATS = (".gif", ".mp4")
VIDEO_MODELS = ("wan", "wan-mini", "tiny-wan")  # presets of the Wan family
VIDEO_FOLDER_FORMAT = "ddit-pixel-video/1"


def build_settings(model, *, prompts=None, seed=0, steps=None, height=None, width=None, frames=None, guidance=None,
                   tau=None,
                   eps=None, warmup=None, window=None, static=None, coarse_first=None, policy=None,
                   schedule=None, sizes=None, cache: dict | CacheSettings | None = None,
                   carry=None) -> GenerateSettings:
    """GenerateSettings with the model's defaults (steps, size, calibrated schedule profile, cache profile) filled
    in. ``prompts``: None for the model's default prompt, one str, or a non-empty sequence of str. Only None means
    "the default": 0 steps or 0 pixels are errors, not defaults. ``policy``: a ``NAME[:KNOB=VALUE,...]`` spec over
    the model's profile; ``schedule``: a whole ScheduleSettings instead of the profile; ``tau``/``eps``/``warmup``/
    ``window`` override the rule's knobs (and, without ``policy``, select the rule). ``cache``: a CacheSettings, or
    a dict of fields overriding the model's (a bundle manifest's) cache profile. ``carry``: "off" or "fine" over
    the profile's detail carry (runtime/carry.py), whatever the policy; without it the profile's carry holds for
    the profile's own policy (its knobs changed or not) and is off for another policy, a ``static`` or a
    ``coarse_first`` schedule, unless the ``policy`` spec names it."""
    sched = schedule if schedule is not None else model.schedule_defaults
    if policy is not None:
        sched = parse_policy(policy, sched)
    over = {k: v for k, v in dict(tau=tau, eps=eps, warmup=warmup, window=window).items() if v is not None}
    if over and policy is None and static is None and coarse_first is None:
        over["policy"] = "ddit"  # a DDiT knob asks for the rule, whatever policy the profile names
    sched = dataclasses.replace(sched, **over)
    if carry is not None:
        sched = dataclasses.replace(sched, carry=carry)
    elif schedule is None and sched.carry != "off" and "carry=" not in (policy or "") and (
            static is not None or coarse_first is not None or sched.policy != model.schedule_defaults.policy):
        # detail carry belongs to the profile's operating point: another policy or an explicit schedule runs without
        # it unless asked (carry=fine in the spec, or carry=): the rule's τ, for one, was calibrated without it
        sched = dataclasses.replace(sched, carry="off")
    if guidance is None:  # the model's own default (Wan 2.1: CFG scale 5), else FLUX's distilled guidance 3.5
        guidance = getattr(model, "extras", {}).get("guidance", 3.5)
    return GenerateSettings(prompts=_prompts(prompts, model.default_prompt), seed=seed,
                            steps=model.default_steps if steps is None else steps, height=height, width=width,
                            frames=frames, guidance=guidance, schedule=sched, static=static, coarse_first=coarse_first,
                            sizes=sizes, cache=cache_settings(model, cache))


def cache_settings(model, cache: dict | CacheSettings | None) -> CacheSettings:
    """``cache`` over the model's (a bundle manifest's) cache profile; ``model=None``: over the cache off."""
    if isinstance(cache, CacheSettings):
        return cache
    base = getattr(model, "cache_defaults", None) or CacheSettings()
    given = {k: v for k, v in (cache or {}).items() if v is not None}
    if given and "mode" not in given and base.mode == "off":
        given["mode"] = "taylor"  # a cache knob without --cache means the cache
    return CacheSettings.from_dict({**base.to_dict(), **given})


def _prompts(prompts, default: str) -> tuple:
    if prompts is None:
        return (default,)
    if isinstance(prompts, str):
        return (prompts,)
    prompts = tuple(prompts)
    if not prompts:
        raise ConfigError("prompts is empty: give at least one prompt, or leave prompts out (None) for the "
                          "model's default prompt")
    return prompts


def check_device(device: str):
    """Refuse a torch device this machine cannot run (no silent fall-back to the CPU)."""
    import torch

    try:
        d = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown --device {device!r}: use cpu or cuda (cuda:N)") from None
    if d.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: torch sees no CUDA GPU here (torch {torch.__version__}, "
                          f"CUDA build {torch.version.cuda or 'none'}); use --device cpu")
    if d.type == "cuda" and d.index is not None and d.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if d.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {device}: only cpu and cuda are supported")


def model_family(model: str | None, weights=None, bundle=None) -> str:
    """"wan" (video) or "flux" (images), read cheaply before any weights load: a bundle's manifest kind, a preset
    name, a pixel-model folder's format or a diffusers folder's pipeline class."""
    import json

    if bundle is not None:
        from .bundle import is_video, read_manifest

        return "wan" if is_video(read_manifest(bundle)) else "flux"
    if model in VIDEO_MODELS:
        return "wan"
    folder = Path(weights) if weights else (Path(model) if model and Path(model).is_dir() else None)
    if folder is not None:
        for name, key, video in (("ddit_model.json", "format", VIDEO_FOLDER_FORMAT),
                                 ("model_index.json", "_class_name", "WanPipeline")):
            try:
                if json.loads((folder / name).read_text()).get(key) == video:
                    return "wan"
            except (OSError, ValueError, AttributeError):
                pass
    return "flux"


def check_family(model: str | None, bundle) -> str:
    """The bundle's family; an explicitly named model that is not the bundle's (of the other family, or another
    model of the same family: ``--bundle engines/wan-mini --model tiny-wan``) is an error (one line), read from the
    manifest and the model's name before anything loads."""
    family = model_family(None, bundle=bundle)
    if model is not None:
        asked = model_family(model)
        if asked != family:
            what = {"wan": "a video (Wan)", "flux": "an image (FLUX-family)"}
            raise ConfigError(f"--model {model} is {what[asked]} model, but bundle {bundle} holds {what[family]} "
                              f"model; leave --model out with --bundle, or build a bundle of {model}")
        name, holds = declared_name(model), _bundle_model_name(bundle)
        if name is not None and holds is not None and name != holds:
            raise ConfigError(f"--model {model} is not the model of bundle {bundle}, which holds {holds!r}; leave "
                              f"--model out with --bundle (the bundle says what it holds), or build a bundle of "
                              f"{model}")
    return family


def declared_name(model: str | None) -> str | None:
    """The name a model would load (and build a bundle) under, read cheaply: a preset's own name, a model folder's
    ``ddit_model.json`` name; None when it cannot be told without loading."""
    import json

    from .models.registry import PRESETS

    if model is None:
        return None
    if model in PRESETS:
        return model
    try:
        name = json.loads((Path(model) / "ddit_model.json").read_text()).get("name")
    except (OSError, ValueError, AttributeError):
        return None
    return name if isinstance(name, str) else None


def _bundle_model_name(bundle) -> str | None:
    from .bundle import read_manifest

    name = read_manifest(bundle).model.get("name")
    return name if isinstance(name, str) else None


def generate_images(*, model=None, weights=None, adapters=None, sizes=None, prompts=None, out=None,
                    trace_path=None, bundle=None, device="cpu", threads=None, backend="auto", fallback=False,
                    warn=None, memory="shared", fps: int = 8, progress: bool = True, **settings_kw):
    """Load a model (or a bundle, run by ONNX Runtime), generate, save images (or, for a video model, one GIF or
    MP4 per prompt) and trace. ``model=None``: the default model, or with a bundle whatever the bundle holds; a
    named model that is not the bundle's (the other family, or another model's name) is an error. ``sizes``: the patch sizes the schedule may use (None:
    all the model or bundle has; asking for one it lacks is an error). ``warn``: where a warning line goes
    (default: stderr). ``progress``: the per-step bar on stderr. Returns (GenerationResult, written paths)."""
    from .runtime.generate import generate

    sizes = None if sizes is None else check_sizes(sizes)
    check_shape(**{k: settings_kw.get(k) for k in ("steps", "height", "width", "frames")})  # before any load
    check_prompts(prompts)
    if isinstance(fps, bool) or not isinstance(fps, int) or not 1 <= fps <= MAX_FPS:
        raise ConfigError(f"--fps must be an integer in [1, {MAX_FPS}], got {fps!r}")
    if memory not in ("shared", "fast"):
        raise ConfigError(f"--memory must be shared or fast, got {memory!r}")
    if memory != "shared" and bundle is None:
        raise ConfigError(f"--memory {memory} applies to a bundle on ONNX Runtime: give --bundle DIR (the PyTorch "
                          f"path holds the weights once)")
    if bundle is not None:
        family = check_family(model, bundle)
    else:
        model = model or DEFAULT_MODEL
        family = model_family(model, weights)
    if family != "wan" and settings_kw.get("frames") is not None:
        raise ConfigError(f"--frames applies to video models (wan-mini, wan); {model or 'this bundle'} makes images")
    # before any work: an unknown suffix, or an image suffix for a video model and the reverse, is an error
    out = (video_path(out) if family == "wan" else image_path(out)) if out else None
    _check_outputs(out, trace_path, prompts)  # and every output writable, before any model loads
    if bundle is not None:
        from .runtime.bundle_model import open_bundle

        if device != "cpu":
            raise ConfigError(f"--device {device} applies to the PyTorch path; a bundle runs on its backend "
                              f"(--backend tensorrt for the GPU)")
        loaded, backend = open_bundle(bundle, weights=weights, threads=threads, backend=backend, fallback=fallback,
                                      memory=memory)
        have, what = tuple(loaded.manifest.sizes), "this bundle has"
    else:
        from .models.registry import load_config_only, load_model
        from .runtime.backends.torch import TorchBackend

        if backend not in ("auto", "torch"):
            raise ConfigError(f"--backend {backend} runs a bundle: give --bundle DIR")
        check_device(device)
        stub = load_config_only(model, weights)
        if stub is not None:  # --model wan: frames, sides, sizes, steps and schedule checked before the pipeline loads
            _check_all(build_settings(stub, prompts=prompts, sizes=sizes, **settings_kw), stub,
                       sizes or DEFAULT_SIZES, "this model's adapters cover", lambda line: None)
        loaded = load_model(model, weights, adapters=adapters, sizes=sizes or DEFAULT_SIZES, device=device)
        backend = TorchBackend(loaded.transformer)
        have, what = tuple(loaded.transformer.sizes), "this model's adapters cover"
    settings = build_settings(loaded, prompts=prompts, sizes=sizes, **settings_kw)
    settings = _check_all(settings, loaded, have, what, warn or _stderr)
    with backend:
        result = generate(loaded, backend, settings, progress=progress)
    writes = [] if not out else video_writes(result.images, out, fps) if family == "wan" else \
        image_writes(result.images, out)
    paths = [p for p, _ in writes]
    if trace_path:
        writes.append((Path(trace_path), result.trace.save))
    write_files_atomic(writes)  # the images and the trace together, or none of them
    return result, paths


def _check_outputs(out: Path | None, trace_path, prompts):
    """Before any work: every file this generation will write (each image or clip of the batch, the trace) can be
    written, and no two are the same file."""
    n = 1 if prompts is None or isinstance(prompts, str) else max(len(tuple(prompts)), 1)
    paths = (numbered_paths(out, n) if out else []) + ([Path(trace_path)] if trace_path else [])
    seen = {}
    for p in paths:
        check_writable(p)
        key = p.resolve()
        if key in seen:
            raise ConfigError(f"{seen[key]} and {p} are the same file: give --out and --trace different paths")
        seen[key] = p


def _stderr(line: str):
    print(line, file=sys.stderr)


def _check_all(settings: GenerateSettings, loaded, have: tuple, what: str, warn) -> GenerateSettings:
    """Every check of a generation's settings against the model (sizes, trained resolution, profile resolution,
    the schedule against the steps and the sizes left), warnings included; returns the settings to run, the
    model's profile fitted to the sizes left (:func:`fit_profile`)."""
    from .runtime.generate import model_geometry, usable_sizes
    from .schedule import make_policy

    lines = []  # the warnings, said once every check has passed (never a warning followed by an error)
    _check_sizes(settings, loaded, have, what, lines.append)
    _check_resolution(settings, loaded, lines.append)
    _check_profile_resolution(settings, loaded, lines.append)
    geom = model_geometry(loaded, settings)
    usable = usable_sizes(settings, geom, have)
    settings = fit_profile(settings, loaded.schedule_defaults, usable)
    make_policy(settings, geom.grid, usable)  # a schedule that does not fit the steps or the sizes: an error now
    for line in lines:
        warn(line)
    return settings


def fit_profile(settings: GenerateSettings, profile, usable) -> GenerateSettings:
    """The model's own schedule profile (not one the user gave) asking for a size this resolution or ``--sizes``
    leaves out runs with the sizes left: a ladder or probe's size-4 steps at size 2 (n4 = 0), or every step fine
    (policy ``fine``) when size 2 is out too. A schedule the user gave is kept as given (an error if it does not
    fit); the DDiT rule picks among the sizes left by itself."""
    sc = settings.schedule
    if settings.static is not None or settings.coarse_first is not None or sc != profile:
        return settings
    if sc.policy not in ("ladder", "probe"):
        return settings
    if 2 not in usable:
        sc = dataclasses.replace(sc, policy="fine")
    elif 4 not in usable and sc.n4:
        sc = dataclasses.replace(sc, n4=0)
    else:
        return settings
    return dataclasses.replace(settings, schedule=sc)


def _check_sizes(settings: GenerateSettings, loaded, have: tuple, what: str, warn):
    """Asked-for sizes the model lacks or the resolution cannot use: error. Default sizes the resolution cannot
    use: one warning line saying which and why."""
    from .runtime.generate import model_geometry

    geom = model_geometry(loaded, settings)
    grid = "x".join(map(str, geom.grid[-2:]))  # the spatial token grid (a video's per frame)
    if settings.sizes is not None:
        lacking = [k for k in settings.sizes if k not in have]
        if lacking:
            raise ConfigError(f"--sizes asks for {lacking}, but {what} patch sizes {list(have)}")
        bad = [k for k in settings.sizes if not geom.available(k)]
        if bad:
            raise ConfigError(f"patch size(s) {bad} do not divide the {grid} token grid of "
                              f"{geom.height}x{geom.width}; choose other --sizes or another --height/--width")
        return
    dropped = [k for k in have if not geom.available(k)]
    if dropped:
        warn(f"warning: patch size(s) {dropped} are not used at {geom.height}x{geom.width}: they do not divide its "
             f"{grid} token grid (sizes used: {list(geom.available_sizes(have))})")


def _check_resolution(settings: GenerateSettings, loaded, warn):
    """A size (or a video's clip length) the weights were not trained at: allowed (RoPE extrapolates), with one
    warning line naming the trained resolutions (and frames)."""
    from .shapes import resolution_warning

    from .runtime.generate import model_geometry

    geom = model_geometry(loaded, settings)
    line = resolution_warning(loaded.name, getattr(loaded, "trained_resolutions", None), geom.height, geom.width,
                              getattr(geom, "frames", None), getattr(loaded, "trained_frames", None))
    if line:
        warn(line)


def _check_profile_resolution(settings: GenerateSettings, loaded, warn):
    """The model's calibrated schedule profile used at another size than it was calibrated at: one warning line
    naming both (the profile's quality/speed trade-off was measured only there)."""
    from .runtime.generate import model_geometry
    from .settings import policy_spec
    from .shapes import profile_warning

    own = settings.static is not None or settings.coarse_first is not None
    if own or settings.schedule != loaded.schedule_defaults:
        return  # the user's own schedule, not the profile
    geom = model_geometry(loaded, settings)
    line = profile_warning(loaded.name, policy_spec(settings.schedule), getattr(loaded, "schedule_resolution", None),
                           geom.height, geom.width, getattr(geom, "frames", None),
                           getattr(loaded, "schedule_frames", None))
    if line:
        warn(line)


def image_path(out) -> Path:
    """The image path for ``--out``: a known image suffix is a file; a path without a suffix (or an existing
    folder) is a folder that gets ``image.png``; any other suffix is an error."""
    out = Path(out)
    if out.is_dir() or not out.suffix:
        return out / "image.png"
    if out.suffix.lower() not in IMAGE_FORMATS:
        raise ConfigError(f"--out {out}: unknown image type {out.suffix!r}; use {', '.join(IMAGE_FORMATS)} "
                          f"(a path without a suffix is a folder)")
    return out


def numbered_paths(out: Path, n: int) -> list[Path]:
    """``out`` for one output; NAME_0.SUF, NAME_1.SUF, ... for a batch of ``n``."""
    return [out] if n == 1 else [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(n)]


def save_images(images, out) -> list[Path]:
    """Write the images (NAME_0.png, NAME_1.png, ... for a batch), all or none: each goes to a temporary file first
    and they are renamed into place together, so a full disk or read-only folder leaves no empty image and no part
    of a batch, only an OutputError."""
    return write_files_atomic(image_writes(images, out))


def image_writes(images, out) -> list[tuple]:
    """(path, write) of each image for fsutil.write_files_atomic."""
    out = image_path(out)
    fmt = IMAGE_FORMATS[out.suffix.lower()]
    paths = numbered_paths(out, len(images))
    return [(p, lambda tmp, im=im: im.save(tmp, format=fmt)) for im, p in zip(images, paths)]



def video_path(out) -> Path:
    """The video path for ``--out`` of a video model: .gif or .mp4; a path without a suffix (or an existing folder)
    is a folder that gets ``video.gif``; an image suffix or any other is an error."""
    out = Path(out)
    if out.is_dir() or not out.suffix:
        return out / "video.gif"
    if out.suffix.lower() not in VIDEO_FORMATS:
        raise ConfigError(f"--out {out}: a video model writes {' or '.join(VIDEO_FORMATS)}, not {out.suffix!r} "
                          f"(a path without a suffix is a folder)")
    return out


def save_videos(clips, out, fps: int = 8) -> list[Path]:
    """Write one clip (a list of PIL frames) per prompt (NAME_0.gif, NAME_1.gif, ... for a batch), all or none."""
    return write_files_atomic(video_writes(clips, out, fps))


def video_writes(clips, out, fps: int = 8) -> list[tuple]:
    """(path, write) of each clip for fsutil.write_files_atomic."""
    from .video_io import video_writer

    paths = numbered_paths(video_path(out), len(clips))
    return [(p, video_writer(frames, p, fps)) for frames, p in zip(clips, paths)]
