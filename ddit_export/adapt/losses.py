"""The distillation objective and its schedule: learning rate, batches, per-size losses."""
from __future__ import annotations

import math

import torch

from ..settings import AdaptSettings
from .prompts import PromptBank
from ..training import no_cudnn_attention
from .student import velocity
from .trajectories import Trajectories


def lr_at(s: AdaptSettings, step: int, progress: float, decay_frac: float = 0.3, min_frac: float = 0.05) -> float:
    """Linear warm-up, constant, cosine decay over the last ``decay_frac`` of the budget (step or time)."""
    warm = min(1.0, (step + 1) / max(1, s.lr_warmup))
    start = 1 - decay_frac
    if progress <= start:
        return s.lr * warm
    t = min(1.0, (progress - start) / decay_frac)
    return s.lr * warm * (min_frac + (1 - min_frac) * 0.5 * (1 + math.cos(math.pi * t)))


def batch_indices(s: AdaptSettings, step: int, n: int) -> torch.Tensor:
    """The states of ``step``'s batch: a function of (seed, step) only, so resumes replay exactly."""
    g = torch.Generator().manual_seed(s.seed * 1_000_003 + step)
    return torch.randint(n, (s.batch,), generator=g)


def distill_losses(loaded, data: Trajectories, bank: PromptBank, idx: torch.Tensor, sizes, grid, guidance,
                   amp, objective: str = "full") -> dict[int, torch.Tensor]:
    """MSE(v_student(z_t, k), v_teacher(z_t, 1)) for every coarse size k, on the states ``idx``. ``objective``
    "blocks": the MSE of the difference's size-k block means only (runtime/carry.py's ``block_mean``), the part of
    a coarse step's velocity that a carried step keeps."""
    from ..models.patching import image_ids
    from ..runtime.carry import block_mean

    mp = loaded.transformer
    video = len(grid) == 3
    device = mp.device
    x = data.latents[idx].to(device=device, dtype=mp.dtype)
    target = data.velocity[idx].to(device=device, dtype=torch.float32)
    t = data.timestep[idx].to(device=device, dtype=mp.dtype)
    cond = bank.take(data.prompt[idx], device)
    g = None if guidance is None else torch.full((len(idx),), guidance, device=device, dtype=mp.dtype)
    ids = None if video else image_ids(grid, dtype=mp.dtype, device=device)
    out = {}
    for k in sizes:
        with amp, no_cudnn_attention(device):
            v = velocity(mp, x, cond, t, ids, g, k, grid)
        d = v.float() - target
        if objective == "blocks":
            d = block_mean(d, grid, k, d.shape[-1] // loaded.latent_channels, channels_first=not video)
        out[k] = torch.mean(d ** 2)
    return out


@torch.no_grad()
def eval_losses(loaded, data: Trajectories, bank: PromptBank, sizes, grid, guidance, amp, batch: int = 64,
                limit: int = 512, objective: str = "full") -> dict[int, float]:
    """Mean distillation loss (``objective``'s) per size over (a fixed subset of) ``data``."""
    n = len(data)
    sel = torch.arange(n) if n <= limit else torch.linspace(0, n - 1, limit).round().long()
    tot = {k: 0.0 for k in sizes}
    for i in range(0, len(sel), batch):
        idx = sel[i:i + batch]
        for k, v in distill_losses(loaded, data, bank, idx, sizes, grid, guidance, amp, objective).items():
            tot[k] += float(v) * len(idx)
    return {k: v / len(sel) for k, v in tot.items()}
