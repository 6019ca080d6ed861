"""The HTTP API's request and response shapes, and request validation (no Ray here: unit-testable alone).

``POST /v1/images/generations`` takes a JSON object in the shape of OpenAI's images endpoint where it fits
(``prompt``, ``n``, ``size`` "WxH", ``response_format`` "b64_json") plus this project's generation options under the
CLI's names (``seed``, ``steps``, ``guidance``, ``policy``, ``schedule``, ``coarse_first``, ``tau``, ``eps``,
``warmup``, ``window``, ``sizes``, ``carry``, ``cache``, ``cache_interval``, ...). A video bundle (wan-mini) takes
``frames`` too and answers with clips: ``response_format`` "b64_gif" (default: one GIF per clip) or "b64_json" (the
clip's frames as PNGs). Validation runs the same code as
``ddit-export generate`` (``api.build_settings``, the size checks, the tokenizer), so an HTTP 400 body carries the
CLI's ``error:`` message word for word.
"""
from __future__ import annotations

import base64
import dataclasses
import io
import json
import math
import time
from dataclasses import dataclass

from ..errors import ConfigError
from ..settings import GenerateSettings

#: Request fields (JSON name -> expected JSON type). Everything else is an error naming the field.
FIELDS = {
    "prompt": str, "n": int, "size": str, "seed": int, "steps": int, "height": int, "width": int, "frames": int,
    "guidance": float, "tau": float, "eps": float, "warmup": int, "window": str, "policy": str,
    "schedule": (str, list), "coarse_first": (str, list), "sizes": (str, list), "carry": str,
    "cache": str, "cache_interval": int, "cache_order": int, "cache_warmup": int, "cache_tail": int,
    "cache_threshold": float, "cache_switch": bool, "response_format": str, "trace": bool, "timeout": float,
    "model": str,
    "user": str,
}
RESPONSE_FORMATS = ("b64_json", "b64_gif")  # b64_gif: video bundles only
VIDEO_FPS = 8  # a served clip's GIF frame rate (generate's default)
#: A request body nested deeper than this is refused (a valid request is at most 2 levels: an object of lists).
MAX_JSON_DEPTH = 16
#: Default request-size limit (``serve --max-body-bytes``): a request is a prompt and a few options.
MAX_BODY_BYTES = 1_000_000
#: Longest error message (characters) an error body carries: anything echoing the input is cut there.
MAX_MESSAGE_CHARS = 1000


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (the server's settings)."""

    max_n: int = 4
    max_steps: int = 200
    timeout_s: float = 120.0  # default per-request deadline (queue + run)
    max_timeout_s: float = 600.0


@dataclass(frozen=True)
class Job:
    """One validated request, as the model replica takes it."""

    settings: GenerateSettings
    n: int = 1
    trace: bool = True
    timeout_s: float = 120.0
    accepted_at: float = 0.0  # time.time() at the front end
    warnings: tuple[str, ...] = ()
    response_format: str = "b64_json"  # video: "b64_gif" (default) or "b64_json" (PNG frames)


def _typed(body: dict, name: str):
    """body[name] checked against FIELDS (None when absent or null)."""
    v = body.get(name)
    if v is None:
        return None
    want = FIELDS[name]
    kinds = want if isinstance(want, tuple) else (want,)
    ok = any(isinstance(v, k) and not (isinstance(v, bool) and k is not bool) for k in kinds)
    if float in kinds and isinstance(v, int) and not isinstance(v, bool):
        ok, v = True, float(v)
    if not ok:
        names = " or ".join({str: "a string", int: "an integer", float: "a number", bool: "true/false",
                             list: "a list"}[k] for k in kinds)
        raise ConfigError(f"field {name!r} must be {names}, got {v!r}")
    if isinstance(v, float) and not math.isfinite(v):
        raise ConfigError(f"field {name!r} must be a finite number, got {v!r}")
    return v


def _int_list(body: dict, name: str, cli_flag: str):
    from ..parsing import int_list as _ints

    v = _typed(body, name)
    if v is None or isinstance(v, str):
        return _ints(v, cli_flag)
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        raise ConfigError(f"{cli_flag} must be comma-separated integers, got {v!r}")
    return tuple(v)


def parse_size(size: str) -> tuple[int, int]:
    """OpenAI's ``size`` "WIDTHxHEIGHT" -> (height, width)."""
    w, sep, h = size.lower().partition("x")
    try:
        if not sep:
            raise ValueError
        return int(h), int(w)
    except ValueError:
        raise ConfigError(f"size must be WIDTHxHEIGHT in pixels, e.g. 32x32, got {size!r}") from None


def parse_request(body, model, limits: Limits = Limits()) -> Job:
    """A request body (parsed JSON) -> Job, or ConfigError/VocabularyError with the CLI's message. ``model``: a
    BundleModel (its manifest gives the defaults, sizes and vocabulary; no session is needed)."""
    from ..api import _check_sizes, build_settings
    from ..parsing import coarse_first as _coarse

    if not isinstance(body, dict):
        raise ConfigError("the request body must be a JSON object")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise ConfigError(f"unknown field(s) {', '.join(map(repr, unknown))}; known: {', '.join(FIELDS)}")
    video = getattr(model, "family", "flux") == "wan"
    fmt = _typed(body, "response_format") or ("b64_gif" if video else "b64_json")
    if fmt not in RESPONSE_FORMATS or (fmt == "b64_gif" and not video):
        raise ConfigError(f"response_format {fmt!r} is not supported: use b64_json (images come back inline)"
                          if not video else f"response_format {fmt!r} is not supported: use b64_gif (one GIF per "
                          f"clip) or b64_json (the clip's frames as PNGs)")
    name = _typed(body, "model")
    if name is not None and name != model.name:
        raise ConfigError(f"model {name!r} is not served here; this service serves {model.name!r}")
    n = _typed(body, "n")
    n = 1 if n is None else n
    if not 1 <= n <= limits.max_n:
        raise ConfigError(f"n must be in [1, {limits.max_n}], got {n}")
    height, width = _typed(body, "height"), _typed(body, "width")
    size = _typed(body, "size")
    if size is not None:
        if height is not None or width is not None:
            raise ConfigError("give size or height/width, not both")
        height, width = parse_size(size)
    steps = _typed(body, "steps")
    if steps is not None and steps > limits.max_steps:
        raise ConfigError(f"steps must be <= {limits.max_steps} on this service, got {steps}")
    timeout = _typed(body, "timeout")
    timeout = limits.timeout_s if timeout is None else timeout
    if not 0 < timeout <= limits.max_timeout_s:
        raise ConfigError(f"timeout must be in (0, {limits.max_timeout_s:g}] seconds, got {timeout:g}")
    coarse = _typed(body, "coarse_first")
    if isinstance(coarse, list):
        coarse = ":".join(str(x) for x in coarse)
    prompt = _typed(body, "prompt")
    cache = dict(mode=_typed(body, "cache"), interval=_typed(body, "cache_interval"),
                 order=_typed(body, "cache_order"), warmup=_typed(body, "cache_warmup"),
                 tail=_typed(body, "cache_tail"), threshold=_typed(body, "cache_threshold"),
                 switch=_typed(body, "cache_switch"))
    if cache["mode"] is not None and cache["mode"] not in ("off", "taylor"):
        raise ConfigError(f"cache must be off or taylor, got {cache['mode']!r}")
    sizes = _int_list(body, "sizes", "--sizes")
    if sizes is not None:
        from ..settings import check_sizes

        sizes = check_sizes(sizes)
    seed = _typed(body, "seed")
    settings = build_settings(
        model, prompts=None if prompt is None else [prompt] * n, seed=0 if seed is None else seed, steps=steps,
        height=height, width=width, frames=_typed(body, "frames"), guidance=3.5 if _typed(body, "guidance") is None else _typed(body, "guidance"),
        tau=_typed(body, "tau"), eps=_typed(body, "eps"), warmup=_typed(body, "warmup"),
        window=_typed(body, "window"), policy=_typed(body, "policy"),
        static=_int_list(body, "schedule", "--schedule"), coarse_first=_coarse(coarse), sizes=sizes, cache=cache,
        carry=_typed(body, "carry"))
    if prompt is None and n > 1:
        settings = dataclasses.replace(settings, prompts=settings.prompts * n)
    warnings: list[str] = []
    _check_sizes(settings, model, tuple(model.manifest.sizes), "this bundle has", warnings.append)
    _check_schedule(settings, model)
    te = getattr(model.manifest, "text_encoder", None)
    if te and getattr(model, "pipeline_model", None) is None:
        from ..models.text import tokenize

        tokenize(te["vocab"], te["max_length"], list(settings.prompts[:1]))
    return Job(settings, n, True if _typed(body, "trace") is None else _typed(body, "trace"), timeout,
               time.time(), tuple(warnings), fmt)


def _check_schedule(settings: GenerateSettings, model):
    """Build the policy once (a static schedule naming a size the bundle lacks fails here, not in the replica)."""
    from ..runtime.generate import usable_sizes
    from ..schedule import make_policy

    from ..runtime.generate import model_geometry

    geom = model_geometry(model, settings)  # a video bundle's frames checked here: HTTP 400, not a replica error
    make_policy(settings, geom.grid, usable_sizes(settings, geom, tuple(model.manifest.sizes)))


def is_json_content_type(content_type: str | None) -> bool:
    """A request's Content-Type is JSON: application/json or application/*+json (parameters such as charset
    allowed); no header at all is taken as JSON."""
    if not content_type:
        return True
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _depth(value) -> int:
    """Nesting depth of parsed JSON (a scalar 0, {} or [] 1), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, d)
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def parse_json_body(raw: bytes, max_depth: int = MAX_JSON_DEPTH):
    """The request's bytes -> parsed JSON, or ConfigError: not valid JSON (or not UTF-8), or nested deeper than
    ``max_depth`` (json's own recursion limit included: never a RecursionError)."""
    too_deep = f"the request body is nested too deeply (at most {max_depth} levels of objects and lists)"
    try:
        body = json.loads(raw)
    except RecursionError:
        raise ConfigError(too_deep) from None
    except ValueError:
        raise ConfigError("the request body is not valid JSON") from None
    if _depth(body) > max_depth:
        raise ConfigError(too_deep)
    return body


def clip_message(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """The first line of ``message``, cut to ``limit`` characters (saying how much was left out)."""
    line = message.splitlines()[0] if message else ""
    if len(line) <= limit:
        return line
    return f"{line[:limit]}... ({len(line) - limit} more characters)"


def error_body(message: str, kind: str = "invalid_request_error", code: int = 400) -> dict:
    """OpenAI's error shape: {"error": {"message", "type", "code"}}; the message is one line of at most
    MAX_MESSAGE_CHARS characters (an echoed input is cut), no traceback."""
    return {"error": {"message": clip_message(message) if message else kind, "type": kind, "code": code}}


def png_b64(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_png(b64: str):
    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")


def gif_b64(frames, fps: int = VIDEO_FPS) -> str:
    """A clip (PIL frames) as one looping GIF, base64 (video_io's GIF writer)."""
    import tempfile
    from pathlib import Path

    from ..video_io import video_writer

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.gif"
        video_writer(frames, path, fps)(path)
        return base64.b64encode(path.read_bytes()).decode("ascii")


def decode_gif(b64: str) -> list:
    """A b64_gif entry -> its frames (PIL RGB)."""
    from PIL import Image, ImageSequence

    im = Image.open(io.BytesIO(base64.b64decode(b64)))
    return [f.convert("RGB") for f in ImageSequence.Iterator(im)]


def _data(job: Job, item) -> dict:
    """One response entry: an image (base64 PNG), or a clip (a list of frames) as a GIF or PNG frames."""
    if not isinstance(item, list):
        return {"b64_json": png_b64(item)}
    if job.response_format == "b64_gif":
        return {"b64_gif": gif_b64(item), "frames": len(item), "fps": VIDEO_FPS}
    return {"b64_json_frames": [png_b64(f) for f in item], "frames": len(item)}


def response_body(job: Job, result, model_name: str, timings: dict) -> dict:
    """A finished job -> the response JSON: images (base64 PNG) or clips (GIF or PNG frames), the per-step trace,
    schedule summary, timings."""
    t = result.trace
    body = {
        "created": int(job.accepted_at or time.time()),
        "model": model_name,
        "data": [_data(job, im) for im in result.images],
        "schedule": {"sizes": t.sizes, "kinds": t.kinds, "coarse_fraction": t.coarse_fraction,
                     "cached_fraction": t.cached_fraction, "flops_ratio": t.flops_ratio},
        "timings": timings,
    }
    if job.trace:
        body["trace"] = t.to_dict()
    if job.warnings:
        body["warnings"] = list(job.warnings)
    return body
