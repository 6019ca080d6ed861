"""The denoising loop: rectified flow with per-step patch-size dispatch, for images (FLUX) and video (Wan).

State stays in fine-token form; each step the policy picks a size from the latent history, the backend runs that
variant, and the model's diffusers scheduler takes the step (FlowMatchEulerDiscreteScheduler for FLUX and the
pixel models, Wan 2.1's UniPCMultistepScheduler for a real Wan folder). The same loop drives every backend and
both families: a video's fine tokens are (frame, row, column) ordered, its grid is (F, h, w).
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..errors import ConfigError
from ..flops import step_flops
from ..schedule import Trace, StepRecord, make_policy
from ..settings import GenerateSettings
from ..shapes import TokenGeometry
from .cache import make_cache
from .carry import make_carry


@dataclass
class GenerationResult:
    latents: torch.Tensor  # final fine-token latents (B, N, C)
    trace: Trace
    images: list | None = None


def flux_timesteps(scheduler_config: dict, steps: int, image_tokens: int):
    """FLUX's sigmas: linspace(1, 1/steps) shifted by the resolution-dependent mu (as FluxPipeline does)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler.from_config(scheduler_config)
    c = sched.config
    mu = calculate_shift(image_tokens, c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                         c.get("base_shift", 0.5), c.get("max_shift", 1.15))
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    sched.set_begin_index(0)
    return sched


def model_timesteps(scheduler_config: dict, steps: int, image_tokens: int):
    """The scheduler of a model with its timesteps set: FLUX's (resolution-dependent shift) when the config asks
    for dynamic shifting; a static-shift flow-match scheduler gets FLUX's sigma grid linspace(1, 1/steps) (shifted
    by the scheduler); any other scheduler (Wan 2.1's UniPC) its own ``set_timesteps(steps)``."""
    import diffusers

    if scheduler_config.get("use_dynamic_shifting"):
        return flux_timesteps(scheduler_config, steps, image_tokens)
    name = scheduler_config.get("_class_name", "FlowMatchEulerDiscreteScheduler")
    cls = getattr(diffusers, name, None)
    if cls is None:
        raise ConfigError(f"scheduler {name!r} (from the model's scheduler config) is not in diffusers "
                          f"{diffusers.__version__}")
    sched = cls.from_config(scheduler_config)
    if name == "FlowMatchEulerDiscreteScheduler":
        sched.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps))
    else:
        sched.set_timesteps(steps)
    if hasattr(sched, "set_begin_index"):
        sched.set_begin_index(0)
    return sched


def calculate_shift(image_seq_len, base_seq_len=256, max_seq_len=4096, base_shift=0.5, max_shift=1.15):
    """diffusers.pipelines.flux.pipeline_flux.calculate_shift, copied: importing that module needs transformers."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * m + (base_shift - m * base_seq_len)


def initial_noise(geom: TokenGeometry, batch: int, seed: int, device="cpu") -> torch.Tensor:
    """FluxPipeline's initial latents for a seed: randn on (B, C, h, w) from a CPU generator, then packed. A video
    geometry: randn on (B, C, F, H, W) (WanPipeline's latent shape), packed into fine video tokens."""
    from ..images import pack

    g = torch.Generator("cpu").manual_seed(seed)
    if getattr(geom, "is_video", False):
        from ..models.wan import pack_video

        noise = torch.randn(batch, *geom.latent_shape, generator=g, dtype=torch.float32)
        return pack_video(noise, geom.patch).to(device)
    lh, lw = geom.latent_hw
    noise = torch.randn(batch, geom.latent_channels, lh, lw, generator=g, dtype=torch.float32)
    return pack(noise, geom).to(device)


def generate(model, backend, settings: GenerateSettings, *, progress: bool = True,
             decode: bool = True, latents: torch.Tensor | None = None) -> GenerationResult:
    """Generate ``settings.prompts`` with ``backend``; ``model`` (a LoadedModel) gives text encoding, decoding and
    the scheduler config."""
    from tqdm.auto import tqdm

    geom = model_geometry(model, settings)
    cond = model.encode(list(settings.prompts))
    b = len(settings.prompts)
    sizes = usable_sizes(settings, geom, tuple(backend.sizes))
    policy = make_policy(settings, geom.grid, sizes)
    device = cond.states.device
    if latents is not None:
        _check_latents(latents, (b, geom.tokens(1), geom.token_channels), geom)
    x = initial_noise(geom, b, settings.seed, device) if latents is None else latents.to(device)
    guidance = torch.full((b,), settings.guidance, device=device) if model.guidance_embeds else None
    sched = model_timesteps(model.scheduler_config, settings.steps, geom.tokens(1))
    video = getattr(geom, "is_video", False)
    # FLUX's transformer takes sigma (t / 1000) and scales it itself; Wan's takes the scheduler's timestep as is
    t_scale = 1.0 if video else 1000.0
    negative = _negative(model, settings, cond, b)  # true classifier-free guidance (Wan 2.1): the uncond states
    calls = 1 if negative is None else 2
    cfg, rank = model.transformer_config, model.lora_rank
    text_tokens = cond.states.shape[1]
    trace = Trace(model.name, geom.grid, {"generate": _jsonable(settings), "sizes": list(sizes)},
                  fine_flops_per_step=calls * step_flops(cfg, geom.tokens(1), text_tokens, 1, batch=b))
    history: deque = deque(maxlen=4)
    # The policy decides every step, cached ones included, on the latents the loop actually produced (a cached
    # step's latent is the Euler step of the extrapolated velocity): static schedules stay aligned to the step
    # index and the rule's Δ³ window never has gaps. A cached step records the size the policy chose, 0 FLOPs.
    cache = make_cache(settings.cache, settings.steps)
    observe = getattr(policy, "observe", None)
    needs_history = getattr(policy, "needs_history", True)  # static schedules decide without the latents
    carry = make_carry(settings.schedule, geom)  # None unless the schedule carries fine detail into coarse steps
    for i, t in enumerate(tqdm(sched.timesteps, desc="denoise", disable=not progress, leave=False)):
        if needs_history:  # a device-to-host copy per step: only for policies that read the latents
            history.append(x.detach().float().cpu().numpy())
        decision = policy.decide(i, history)
        k = decision.size
        t0 = time.perf_counter()
        sigma = float(t / 1000)
        if cache is None or cache.should_compute(i, sigma, k):
            kind = "model"
            tt = (t / t_scale).expand(b).to(device)
            v = backend.run(k, x, cond, tt, guidance, geom.grid)
            if negative is not None:
                v_uncond = backend.run(k, x, negative, tt, guidance, geom.grid)
                v = v_uncond + settings.guidance * (v - v_uncond)
            if carry is not None:
                v = carry.apply(k, v)
            if cache is not None:
                cache.update(i, sigma, v, k)
        else:
            kind, v = "cached", cache.predict(sigma)
        if observe is not None:  # policies that read more than the latent history (schedule/probe.py)
            observe(i, x, v, float(sched.sigmas[i]), float(sched.sigmas[i + 1]))  # tensors: it copies what it reads
        x = sched.step(v.to(x.dtype), t, x, return_dict=False)[0]
        flops = float(calls * step_flops(cfg, geom.tokens(1), text_tokens, k, rank, b)) if kind == "model" else 0.0
        trace.steps.append(StepRecord(i, sigma, k, decision.reason, geom.tokens(k), flops,
                                      decision.sigmas, time.perf_counter() - t0, kind))
    images = model.decode(x, geom) if decode else None
    return GenerationResult(x, trace, images)


def model_geometry(model, settings):
    """The token geometry of a generation or a build (GenerateSettings / BuildSettings: height, width, frames):
    (height, width) for an image model, plus the frame count for video."""
    if getattr(model, "family", "flux") == "wan":
        return model.geometry(settings.height, settings.width, settings.frames)
    if settings.frames is not None:
        raise ConfigError(f"--frames applies to video models; {model.name} makes images")
    return model.geometry(settings.height, settings.width)


def _negative(model, settings: GenerateSettings, cond, batch: int):
    """Wan 2.1 runs true classifier-free guidance: the negative prompt's states (the model's encoder gives them)
    when the model asks for CFG and the guidance scale is above 1; else None (one call per step)."""
    encode_negative = getattr(model, "extras", {}).get("encode_negative") if hasattr(model, "extras") else None
    if encode_negative is None or settings.guidance <= 1.0:
        return None
    return encode_negative(batch)


def usable_sizes(settings: GenerateSettings, geom: TokenGeometry, have: tuple) -> tuple:
    """The sizes the schedule may use: the asked-for ones (each must be in the backend and divide the grid), else
    every backend size that divides the grid."""
    if settings.sizes is None:
        return geom.available_sizes(have)
    lacking = [k for k in settings.sizes if k not in have]
    if lacking:
        raise ConfigError(f"patch size(s) {lacking} were asked for, but the backend has {list(have)}")
    bad = [k for k in settings.sizes if not geom.available(k)]
    if bad:
        raise ConfigError(f"patch size(s) {bad} do not divide the token grid {geom.grid} of {geom.height}x{geom.width}")
    return settings.sizes


def _check_latents(latents, want: tuple, geom: TokenGeometry):
    shape = tuple(getattr(latents, "shape", ()))
    if shape != want:
        raise ConfigError(f"latents have shape {shape}; {geom.height}x{geom.width} with {want[0]} prompt(s) needs "
                          f"{want} (batch, fine tokens, channels), as initial_noise makes")
    if not torch.isfinite(torch.as_tensor(latents)).all():
        raise ConfigError("latents contain NaN or infinite values")


def _jsonable(settings: GenerateSettings) -> dict:
    d = asdict(settings)
    d["prompts"] = list(d["prompts"])
    d["cache"] = settings.cache.to_dict()
    return d
