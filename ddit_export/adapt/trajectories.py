"""The training states: the model's own sampling trajectories with the fine teacher's velocity, cached as
safetensors shards in ``WORK/trajectories/`` (reused while their key matches)."""
from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..settings import AdaptSettings
from .prompts import PromptBank
from .student import autocast_for, position_ids, velocity

TRAJ_FORMAT = "ddit-trajectories/1"
TRAJ = "trajectories"
CHUNK = 16  # trajectories sampled together (one shard, one noise seed, one schedule)


@dataclass
class Trajectories:
    """Cached training states: latent z_t, timestep t, prompt index, teacher velocity v(z_t, 1)."""

    latents: torch.Tensor  # (S, N, C)
    velocity: torch.Tensor  # (S, N, C)
    timestep: torch.Tensor  # (S,) float32, in [0, 1] (what the transformer takes)
    prompt: torch.Tensor  # (S,) int64
    step: torch.Tensor  # (S,) int64, step of the sampler
    coarse: torch.Tensor  # (S,) bool: state of a trajectory that took coarse steps

    def __len__(self):
        return self.latents.shape[0]

    @classmethod
    def cat(cls, parts: list[dict]) -> "Trajectories":
        return cls(*(torch.cat([p[k] for p in parts]) for k in ("latents", "velocity", "timestep", "prompt",
                                                                   "step", "coarse")))


def mixed_schedule(steps: int, coarse_sizes: list[int], rng: np.random.Generator, warmup: int = 3) -> list[int]:
    """A random schedule: fine for ``warmup`` steps and the last one, else coarse (random size) with p = 1/2."""
    return [int(rng.choice(coarse_sizes)) if warmup <= i < steps - 1 and rng.random() < 0.5 else 1
            for i in range(steps)]


# The deployed policy family at 28 steps (scaled to other step counts): the ranges `calibrate` sweeps for the
# ladder (head 0, n4 steps at size 4, size 2 up to a fine tail) and the step cache settings the README recommends
# and the Pareto chart measures (interval, warm-up, tail).
LADDER_N4 = (6, 14)  # inclusive range, at 28 steps
LADDER_TAIL = (5, 11)
CACHE_INTERVALS = (3, 4, 5, 6, 8)
CACHE_WARMUPS = (2, 3)
CACHE_TAILS = (0, 1, 2)


def cache_plan(steps: int, interval: int, warmup: int, tail: int) -> list[int]:
    """1 = computed, 0 = extrapolated: the runtime step cache's own ``taylor`` decisions (no threshold, so they
    depend on the step index alone), read off :class:`ddit_export.runtime.cache.StepCache`."""
    from ..runtime.cache import StepCache
    from ..settings import CacheSettings

    cache = StepCache(CacheSettings(mode="taylor", interval=interval, order=0, warmup=warmup, tail=tail), steps)
    plan = []
    for i in range(steps):
        plan.append(int(cache.should_compute(i, 0.0)))
        if plan[-1]:
            cache.update(i, 0.0, torch.zeros(1))
    return plan


def policy_schedule(steps: int, coarse_sizes: list[int], rng: np.random.Generator,
                    with_cache: bool) -> tuple[list[int], list[int] | None]:
    """A schedule of the deployed family: a ladder over the calibrate range (sizes this grid lacks run fine)
    and, ``with_cache``, a step-cache plan over the recommended intervals."""
    from ..schedule.static import ladder_sizes

    scale = steps / 28
    n4 = int(round(rng.integers(LADDER_N4[0], LADDER_N4[1] + 1) * scale))
    tail = max(1, int(round(rng.integers(LADDER_TAIL[0], LADDER_TAIL[1] + 1) * scale)))
    n4 = min(n4, steps - tail)
    sizes = [k if k in coarse_sizes else 1 for k in ladder_sizes(steps, 0, n4, tail)]
    if not with_cache:
        return sizes, None
    plan = cache_plan(steps, int(rng.choice(CACHE_INTERVALS)), int(rng.choice(CACHE_WARMUPS)),
                      int(rng.choice(CACHE_TAILS)))
    return sizes, plan


def draw_plans(kind: str, n: int, mix: float, steps: int, coarse_sizes: list[int],
               rng: np.random.Generator) -> list[tuple[list[int], list[int] | None]]:
    """(sizes, cache plan or None) for ``n`` chunks: fine-only with probability 1 - ``mix``, else a schedule drawn
    as ``kind`` (settings.ADAPT_SCHEDULES) says."""
    out = []
    for _ in range(n):
        if not rng.random() < mix:
            out.append(([1] * steps, None))
            continue
        pick = kind if kind != "both" else ("random" if rng.random() < 1 / 3 else "ladders")
        if pick == "random":
            out.append((mixed_schedule(steps, coarse_sizes, rng), None))
        else:
            out.append(policy_schedule(steps, coarse_sizes, rng, with_cache=bool(rng.random() < 0.5)))
    return out


@torch.no_grad()
def sample_chunk(loaded, bank: PromptBank, prompt_idx: list[int], noise_seed: int, steps: int, geom, guidance,
                 schedule: list[int], amp, cache: list[int] | None = None) -> dict:
    """Run the sampler on ``prompt_idx`` (fine-only, or ``schedule``; with ``cache``, a step-cache plan: its 0
    steps move on the velocity extrapolated from the last computed ones); every step's state and teacher
    velocity."""
    from ..runtime.cache import StepCache
    from ..runtime.generate import initial_noise, model_timesteps
    from ..settings import CacheSettings

    mp = loaded.transformer
    device = mp.device
    b = len(prompt_idx)
    cond = bank.take(torch.tensor(prompt_idx), device)
    x = initial_noise(geom, b, noise_seed, device).to(mp.dtype)
    g = None if guidance is None else torch.full((b,), guidance, device=device, dtype=mp.dtype)
    ids = position_ids(geom, mp.dtype, device)
    sched = model_timesteps(loaded.scheduler_config, steps, geom.tokens(1))
    sc = None if cache is None else StepCache(CacheSettings(mode="plan", plan=tuple(cache)), steps)
    lat, vel, ts = [], [], []
    for i, t in enumerate(sched.timesteps):
        tt = (t / 1000).expand(b).to(device=device, dtype=mp.dtype)
        sigma = float(sched.sigmas[i])

        def run(k):
            with amp:
                return velocity(mp, x, cond, tt, ids, g, k, geom.grid)

        v_teacher = run(1)
        if sc is not None and not sc.should_compute(i, sigma):
            v = sc.predict(sigma)
        else:
            v = v_teacher if schedule[i] == 1 else run(schedule[i])
            if sc is not None:
                sc.update(i, sigma, v)
        lat.append(x.cpu())
        vel.append(v_teacher.to(x.dtype).cpu())
        ts.append(float(t / 1000))
        x = sched.step(v.to(x.dtype), t, x, return_dict=False)[0]
    n = len(ts)
    return {"latents": torch.stack(lat).flatten(0, 1).contiguous(),
            "velocity": torch.stack(vel).flatten(0, 1).contiguous(),
            "timestep": torch.tensor(ts, dtype=torch.float32).repeat_interleave(b),
            "prompt": torch.tensor(prompt_idx, dtype=torch.int64).repeat(n),
            "step": torch.arange(n, dtype=torch.int64).repeat_interleave(b),
            "coarse": torch.full((n * b,), any(k > 1 for k in schedule) or bool(cache and 0 in cache),
                                 dtype=torch.bool)}


def build_trajectories(loaded, s: AdaptSettings, bank: PromptBank, n_prompts: int, folder: Path, key: dict,
                       tag: str, mix: float, log, stop: dict, progress: bool, geom=None) -> Trajectories | None:
    """Sample (or reuse from ``folder``) the trajectories of prompts 0..n_prompts-1 of ``bank`` at ``geom``
    (default: the run's height and width).

    Returns None when stopped by a signal (finished shards stay cached)."""
    from safetensors.torch import load_file, save_file
    from tqdm import tqdm

    folder.mkdir(parents=True, exist_ok=True)
    geom = geom if geom is not None else loaded.geometry(s.height, s.width)
    steps = s.sample_steps or loaded.default_steps
    guidance = s.guidance if loaded.guidance_embeds else None
    coarse_sizes = [k for k in s.sizes if k > 1 and geom.available(k)]
    meta = json.dumps(key, sort_keys=True)
    rng = np.random.default_rng([s.seed, 0x7A, len(tag)])
    chunks = [list(range(i, min(i + CHUNK, n_prompts))) for i in range(0, n_prompts, CHUNK)]
    if s.schedules == "random":  # the draws of the runs before ADAPT_SCHEDULES: their cached shards stay valid
        plans = [(mixed_schedule(steps, coarse_sizes, rng) if rng.random() < mix else [1] * steps, None)
                 for _ in chunks]
    else:
        plans = draw_plans(s.schedules, len(chunks), mix, steps, coarse_sizes, rng)
    parts, todo = [], 0
    amp = autocast_for(s, loaded.transformer.device)
    bar = tqdm(total=len(chunks), desc=f"sampling {tag} trajectories", disable=not progress, leave=False,
               file=sys.stderr, mininterval=5.0)
    try:
        for c, (idx, (plan, cache)) in enumerate(zip(chunks, plans)):
            path = folder / f"{tag}_{c:05d}.safetensors"
            part = None
            if path.is_file():
                try:
                    from safetensors import safe_open

                    with safe_open(str(path), "pt") as f:
                        ok = (f.metadata() or {}).get("key") == meta
                    part = load_file(str(path)) if ok else None
                except Exception:  # a damaged cache shard is re-sampled
                    part = None
            if part is None:
                if stop["flag"]:
                    return None
                todo += 1
                part = sample_chunk(loaded, bank, idx, s.seed * 1_000_003 + c + (0 if tag == "train" else 1 << 20),
                                    steps, geom, guidance, plan, amp, cache)
                tmp = path.with_suffix(".tmp")
                extra = {} if cache is None else {"cache": ",".join(map(str, cache))}
                save_file(part, str(tmp), metadata={"format": TRAJ_FORMAT, "key": meta, **extra,
                                                    "schedule": ",".join(map(str, plan))})
                tmp.replace(path)
            parts.append(part)
            bar.update(1)
    finally:
        bar.close()
    if todo:
        log(f"sampled {todo} of {len(chunks)} {tag} chunks ({n_prompts} prompts x {steps} steps)")
    return Trajectories.cat(parts)


def held_out(loaded, s, bank, train_prompts, eval_prompts, folder, key, log, stop, progress, geom=None):
    """Trajectories of the eval prompts (bank rows after the training prompts), fine-only."""
    n0 = len(train_prompts)
    sub = PromptBank(bank.states[n0:], None if bank.pooled is None else bank.pooled[n0:], bank.txt_ids)
    data = build_trajectories(loaded, s, sub, len(eval_prompts), folder, key, "eval", 0.0, log, stop, progress,
                              geom)
    return data if data is None else dataclasses.replace(data, prompt=data.prompt + n0)
