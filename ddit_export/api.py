"""The Python API behind the CLI commands: plain functions taking plain values, returning results."""
from __future__ import annotations

from pathlib import Path

from .errors import ConfigError
from .settings import DEFAULT_SIZES, CacheSettings, GenerateSettings, ScheduleSettings


def build_settings(model, *, prompts=(), seed=0, steps=None, height=None, width=None, guidance=3.5, tau=None,
                   eps=None, warmup=None, window=None, static=None, coarse_first=None,
                   cache: dict | CacheSettings | None = None) -> GenerateSettings:
    """GenerateSettings with the model's defaults (steps, size, calibrated τ/ε/warm-up, cache profile) filled in.
    ``cache``: a CacheSettings, or a dict of fields overriding the model's (a bundle manifest's) cache profile."""
    base = model.schedule_defaults
    sched = ScheduleSettings(tau=base.tau if tau is None else tau, eps=base.eps if eps is None else eps,
                             warmup=base.warmup if warmup is None else warmup,
                             window=base.window if window is None else window)
    return GenerateSettings(prompts=tuple(prompts) or (model.default_prompt,), seed=seed,
                            steps=steps or model.default_steps, height=height, width=width, guidance=guidance,
                            schedule=sched, static=static, coarse_first=coarse_first,
                            cache=cache_settings(model, cache))


def cache_settings(model, cache: dict | CacheSettings | None) -> CacheSettings:
    if isinstance(cache, CacheSettings):
        return cache
    base = getattr(model, "cache_defaults", None) or CacheSettings()
    given = {k: v for k, v in (cache or {}).items() if v is not None}
    if given and "mode" not in given and base.mode == "off":
        given["mode"] = "taylor"  # a cache knob without --cache means the cache
    return CacheSettings.from_dict({**base.to_dict(), **given})


def generate_images(*, model="flux-mini", weights=None, adapters=None, sizes=None, prompts=(), out=None,
                    trace_path=None, bundle=None, device="cpu", threads=None, backend="auto", fallback=False,
                    **settings_kw):
    """Load a model (or a bundle, run by ONNX Runtime), generate, save images and trace.
    Returns (GenerationResult, image paths)."""
    from .runtime.generate import generate

    if bundle is not None:
        from .runtime.bundle_model import open_bundle

        loaded, backend = open_bundle(bundle, weights=weights, threads=threads, backend=backend, fallback=fallback)
    else:
        from .models.registry import load_model
        from .runtime.backends.torch import TorchBackend

        if backend not in ("auto", "torch"):
            raise ConfigError(f"--backend {backend} runs a bundle: give --bundle DIR")
        loaded = load_model(model, weights, adapters=adapters, sizes=sizes or DEFAULT_SIZES, device=device)
        backend = TorchBackend(loaded.transformer)
    settings = build_settings(loaded, prompts=prompts, **settings_kw)
    with backend:
        result = generate(loaded, backend, settings)
    paths = save_images(result.images, out) if out else []
    if trace_path:
        result.trace.save(trace_path)
    return result, paths


def save_images(images, out) -> list[Path]:
    out = Path(out)
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
        out = out / "image.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out] if len(images) == 1 else [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(len(images))]
    for im, p in zip(images, paths):
        im.save(p)
    return paths
