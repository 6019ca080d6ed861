"""The Python API behind the CLI commands: plain functions taking plain values, returning results."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from .errors import ConfigError
from .settings import DEFAULT_SIZES, GenerateSettings, parse_policy


def build_settings(model, *, prompts=(), seed=0, steps=None, height=None, width=None, guidance=3.5, tau=None,
                   eps=None, warmup=None, window=None, static=None, coarse_first=None, policy=None,
                   schedule=None) -> GenerateSettings:
    """GenerateSettings with the model's defaults (steps, size, calibrated schedule profile) filled in.
    ``policy``: a ``NAME[:KNOB=VALUE,...]`` spec over the model's profile; ``schedule``: a whole ScheduleSettings
    instead of the profile; ``tau``/``eps``/``warmup``/``window`` override the rule's knobs (and, without ``policy``, select the rule)."""
    sched = schedule if schedule is not None else model.schedule_defaults
    if policy is not None:
        sched = parse_policy(policy, sched)
    over = {k: v for k, v in dict(tau=tau, eps=eps, warmup=warmup, window=window).items() if v is not None}
    if over and policy is None and static is None and coarse_first is None:
        over["policy"] = "ddit"  # a DDiT knob asks for the rule, whatever policy the profile names
    sched = dataclasses.replace(sched, **over)
    return GenerateSettings(prompts=tuple(prompts) or (model.default_prompt,), seed=seed,
                            steps=steps or model.default_steps, height=height, width=width, guidance=guidance,
                            schedule=sched, static=static, coarse_first=coarse_first)


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
