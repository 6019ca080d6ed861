"""Temporal merging for Wan's coarse sizes (issue 23 item 2), measured against spatial-only at equal FLOPs.

A spatial size k merges k x k tokens inside a token frame; a temporal-merge size "k x k x 2" also merges two token
frames (tokens / (2 k^2)). Both families get the same adapters, trained the same way from the same start: a fresh
stem (embedding tiled from the fine patch embedding, de-embedding tiled from the fine head, a zero size vector and a
zero residual) and LoRA of the project's rank on the feed-forward, distilled from the fine model's velocity on its
own fine-only trajectories (train-split clip captions), for the same steps and batches. Then each variant runs
ladders (``head`` fine steps, ``n`` steps of the variant, the rest fine) on held-out captions, scored against
fine-only with the same caption and noise: per-frame PSNR, the frame-change ratio (1 = as much change as fine-only;
a temporal merge could freeze or smear motion) and the FLOP ratio (flops.wan_step_flops at each variant's tokens).

    python scripts/temporal_merge.py --model wan-mini --work runs/temporal-merge [--train-steps 600] \\
        [--captions 48] [--prompts 16] [--threads 1] [--json OUT] [--mixes "t1x6+s2x4,s2x4+t1x6"]

``--mixes``: schedules that chain variants after the fine head (``t1x6+s2x4``: 6 steps of t1, then 4 of s2, the
rest fine), evaluated after (or instead of, with ``--lengths ""``) the single-variant ladders.

The trained adapters are saved in WORK (``adapters.pt``); a rerun with the same settings evaluates them again
without training. Research code: the product's sizes stay spatial (nothing here is exported).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VARIANTS = {"s2": (2, 1), "s4": (4, 1), "t1": (1, 2), "t2": (2, 2)}  # name: (spatial k, temporal kt)


def merge(x, grid, k, kt):
    """(B, F*h*w, C) fine tokens -> (B, F/kt * h/k * w/k, kt*k*k*C), sub-tokens ordered (t, y, x)."""
    b, _, c = x.shape
    f, h, w = grid
    x = x.reshape(b, f // kt, kt, h // k, k, w // k, k, c).permute(0, 1, 3, 5, 2, 4, 6, 7)
    return x.reshape(b, (f // kt) * (h // k) * (w // k), kt * k * k * c)


def unmerge(x, grid, k, kt):
    b, _, n = x.shape
    f, h, w = grid
    c = n // (kt * k * k)
    x = x.reshape(b, f // kt, h // k, w // k, kt, k, k, c).permute(0, 1, 4, 2, 5, 3, 6, 7)
    return x.reshape(b, f * h * w, c)


def positions(grid, k, kt):
    """(N, 3) float64 (frame, row, column) of the merged tokens: each at the mean of what it merges."""
    f, h, w = grid
    t = torch.arange(f // kt, dtype=torch.float64) * kt + (kt - 1) / 2
    y = torch.arange(h // k, dtype=torch.float64) * k + (k - 1) / 2
    xx = torch.arange(w // k, dtype=torch.float64) * k + (k - 1) / 2
    tt, yy, xg = torch.meshgrid(t, y, xx, indexing="ij")
    return torch.stack([tt, yy, xg], -1).reshape(-1, 3)


class Stem(nn.Module):
    """A merged size's embedding, de-embedding, size vector and residual, tiled from the fine ones (as WanStem)."""

    def __init__(self, trunk, n: int):
        super().__init__()
        conv = trunk.patch_embedding
        d = conv.out_channels
        w_fine = conv.weight.detach().float().permute(0, 2, 3, 4, 1).reshape(d, -1)
        c_in, c_out = w_fine.shape[1], trunk.proj_out.out_features
        self.embed, self.deembed = nn.Linear(n * c_in, d), nn.Linear(d, n * c_out)
        self.size_id = nn.Parameter(torch.zeros(d))
        self.residual = nn.Linear(n * c_in, n * c_out)
        with torch.no_grad():
            self.embed.weight.copy_(w_fine.repeat(1, n) / n)
            self.embed.bias.copy_(conv.bias.detach().float())
            self.deembed.weight.copy_(trunk.proj_out.weight.detach().float().repeat(n, 1))
            self.deembed.bias.copy_(trunk.proj_out.bias.detach().float().repeat(n))
            nn.init.zeros_(self.residual.weight)
            nn.init.zeros_(self.residual.bias)


class Student(nn.Module):
    """The shared trunk (frozen) under a MultiPatchWan with no coarse sizes of its own, plus a stem and a LoRA bank
    per variant name (the LoRA hooks apply the bank of ``mp.active(name)``)."""

    def __init__(self, trunk, rank: int):
        super().__init__()
        from ddit_export.models import lora as lora_mod
        from ddit_export.models.wan import MultiPatchWan
        from ddit_export.settings import AdapterSettings

        self.mp = MultiPatchWan(trunk, sizes=(1, 2), adapter=AdapterSettings(rank=rank))  # hooks on the trunk
        del self.mp.stems["2"], self.mp.loras["2"]
        self.stems = nn.ModuleDict()
        for name, (k, kt) in VARIANTS.items():
            self.stems[name] = Stem(trunk, kt * k * k)
            self.mp.loras[name] = lora_mod.make_loras(trunk, self.mp.lora_targets, rank, None)
        for p in trunk.parameters():
            p.requires_grad_(False)

    def adapter_parameters(self, name):
        return list(self.stems[name].parameters()) + list(self.mp.loras[name].parameters())

    def velocity(self, x, t, states, grid, name: str):
        """The fine model (name "fine") or a variant, on fine tokens x (B, F*h*w, C); t in 0..1000."""
        if name == "fine":
            return self.mp(x, t, states, size=1, grid=grid)
        k, kt = VARIANTS[name]
        stem = self.stems[name]
        m = merge(x, grid, k, kt)
        out = self.mp._trunk_at(stem.embed(m) + stem.size_id, t, states, positions(grid, k, kt), name)
        return unmerge(stem.deembed(out) + stem.residual(m), grid, k, kt)


def tokens(grid, name):
    f, h, w = grid
    if name == "fine":
        return f * h * w
    k, kt = VARIANTS[name]
    return (f // kt) * (h // k) * (w // k)


def step_flops(cfg, grid, text_len, name, rank):
    """flops.wan_step_flops for a variant that merges m = kt*k*k fine tokens: n = tokens / m, stem and head m times
    the fine patch, the residual and LoRA for every merged variant (the same terms as a spatial size k)."""
    from ddit_export.flops import wan_step_flops

    if name == "fine":
        return wan_step_flops(cfg, tokens(grid, "fine"), text_len, 1, 0)
    k, kt = VARIANTS[name]
    return wan_step_flops(cfg, tokens(grid, "fine"), text_len, k, rank, merge=kt * k * k)


@torch.no_grad()
def sample(student, sched_cfg, states, noise, grid, schedule):
    from ddit_export.runtime.generate import model_timesteps

    sched = model_timesteps(sched_cfg, len(schedule), noise.shape[1])
    x = noise.clone()
    for i, t in enumerate(sched.timesteps):
        v = student.velocity(x, t.expand(x.shape[0]).float(), states, grid, schedule[i])
        x = x + (float(sched.sigmas[i + 1]) - float(sched.sigmas[i])) * v
    return x


@torch.no_grad()
def teacher_states(student, model, captions, geom, steps, log):
    """Every step's (z_t, t, v_fine) of fine-only sampling on ``captions`` (8 at a time)."""
    from ddit_export.runtime.generate import initial_noise, model_timesteps

    xs, ts, vs, idx = [], [], [], []
    for i in range(0, len(captions), 8):
        states = model.encode(captions[i:i + 8]).states
        x = initial_noise(geom, len(states), 10_000 + i)
        sched = model_timesteps(model.scheduler_config, steps, geom.tokens(1))
        for j, t in enumerate(sched.timesteps):
            tt = t.expand(len(states)).float()
            v = student.velocity(x, tt, states, geom.grid, "fine")
            xs.append(x.clone()), ts.append(tt.clone()), vs.append(v.clone())
            idx.append(torch.arange(i, i + len(states)))
            x = x + (float(sched.sigmas[j + 1]) - float(sched.sigmas[j])) * v
        log(f"teacher: {min(i + 8, len(captions))}/{len(captions)} captions")
    return torch.cat(xs), torch.cat(ts), torch.cat(vs), torch.cat(idx)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="wan-mini")
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--train-steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--captions", type=int, default=48, help="train-split captions of the teacher trajectories")
    p.add_argument("--prompts", type=int, default=16, help="held-out captions of the evaluation")
    p.add_argument("--head", type=int, default=6)
    p.add_argument("--lengths", default="4,6,8,12", help="coarse steps n of each ladder")
    p.add_argument("--mixes", default="", help="chained variants after the head, e.g. t1x6+s2x4 (comma-separated)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    from ddit_export.models.registry import load_model
    from ddit_export.quality.video import compare_clips, mean_scores
    from ddit_export.runtime.generate import initial_noise
    from ddit_export.settings import DEFAULT_LORA_RANK
    from ddit_export.zoo import clips as C

    def log(m):
        print(f"[{time.strftime('%H:%M:%S')}] {m}", flush=True)

    model = load_model(a.model)
    trunk = model.transformer.unwrap() if hasattr(model.transformer, "unwrap") else model.transformer.trunk
    student = Student(trunk.eval(), DEFAULT_LORA_RANK)
    geom, steps = model.geometry(), model.default_steps
    grid, cfg = geom.grid, dict(trunk.config)
    a.work.mkdir(parents=True, exist_ok=True)
    saved = a.work / "adapters.pt"
    settings = {"model": a.model, "train_steps": a.train_steps, "batch": a.batch, "lr": a.lr, "captions": a.captions}
    if saved.is_file() and torch.load(saved, weights_only=False)["settings"] == settings:
        d = torch.load(saved, weights_only=False)
        student.stems.load_state_dict(d["stems"])
        for name in VARIANTS:
            student.mp.loras[name].load_state_dict(d["loras"][name])
        log(f"adapters from {saved}")
        losses = d["losses"]
    else:
        train_caps = [C.sample_clip(np.random.default_rng([3, i]), "train").caption for i in range(a.captions)]
        xs, ts, vs, idx = teacher_states(student, model, train_caps, geom, steps, log)
        states = model.encode(train_caps).states.detach()
        params = [q for n in VARIANTS for q in student.adapter_parameters(n)]
        opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0)
        losses = {n: [] for n in VARIANTS}
        g = torch.Generator().manual_seed(0)
        t0 = time.time()
        for step in range(a.train_steps):
            for group in opt.param_groups:  # warm-up 50 steps, cosine over the last 30%
                prog = step / a.train_steps
                warm = min(1.0, (step + 1) / 50)
                group["lr"] = a.lr * warm * (1.0 if prog < 0.7 else 0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * (prog - 0.7) / 0.3)))
            b = torch.randint(len(xs), (a.batch,), generator=g)
            opt.zero_grad(set_to_none=True)
            for name in VARIANTS:  # the same batch for every variant; each owns its parameters
                loss = torch.mean((student.velocity(xs[b], ts[b], states[idx[b]], grid, name) - vs[b]) ** 2)
                loss.backward()
                losses[name].append(loss.item())
            opt.step()
            if (step + 1) % 50 == 0:
                log(f"step {step + 1}/{a.train_steps}: " + ", ".join(
                    f"{n} {np.mean(losses[n][-50:]):.4f}" for n in VARIANTS) + f" ({(time.time() - t0) / (step + 1):.2f} s/step)")
        torch.save({"settings": settings, "stems": student.stems.state_dict(),
                    "loras": {n: student.mp.loras[n].state_dict() for n in VARIANTS}, "losses": losses}, saved)
    clips = [C.sample_clip(np.random.default_rng([0, 10**6 + i]), "heldout") for i in range(a.prompts)]
    states = model.encode([c.caption for c in clips]).states
    noise = initial_noise(geom, len(clips), 0)
    student.eval()

    def frames(x):
        return [np.asarray([np.asarray(f) for f in clip]) for clip in model.decode(x, geom)]

    ref = frames(sample(student, model.scheduler_config, states, noise, grid, ["fine"] * steps))
    text_len = states.shape[1]
    fine_flops = step_flops(cfg, grid, text_len, "fine", DEFAULT_LORA_RANK)
    rows = []
    plans = [(name, [(name, int(n))]) for name in VARIANTS for n in a.lengths.split(",") if n]
    for mix in (m for m in a.mixes.split(",") if m):
        chain = [(v, int(c)) for v, _, c in (part.partition("x") for part in mix.split("+"))]
        if any(v not in VARIANTS for v, _ in chain):
            p.error(f"--mixes {mix!r}: variants are {', '.join(VARIANTS)}")
        plans.append((mix, chain))
    for name, chain in plans:
        n = sum(c for _, c in chain)
        if a.head + n > steps:
            p.error(f"{name}: {a.head} fine steps + {n} coarse ones exceed the {steps} steps")
        sch = ["fine"] * a.head + [v for v, c in chain for _ in range(c)] + ["fine"] * (steps - a.head - n)
        got = frames(sample(student, model.scheduler_config, states, noise, grid, sch))
        sc = mean_scores([compare_clips(g, r) for g, r in zip(got, ref)])
        ratio = sum(step_flops(cfg, grid, text_len, s, DEFAULT_LORA_RANK) for s in sch) / (fine_flops * steps)
        one = chain[0][0] if len(chain) == 1 else None  # a single-variant ladder (else a mix)
        rows.append({"variant": name, "k": VARIANTS[one][0] if one else None,
                     "frames_merged": VARIANTS[one][1] if one else None,
                     "tokens": tokens(grid, one) if one else None, "head": a.head, "coarse_steps": n,
                     "flops_ratio": ratio, "psnr_db": sc["psnr_mean"], "ssim": sc["ssim_mean"],
                     "change_ratio": sc["change_ratio"],
                     "final_distill_loss": float(np.mean(losses[one][-50:])) if one else None})
        r = rows[-1]
        log(f"{name} x{n}: FLOP ratio {ratio:.3f}, {r['psnr_db']:.1f} dB, SSIM {r['ssim']:.3f}, change ratio "
            f"{r['change_ratio']:.3f}")
    if a.json:
        a.json.write_text(json.dumps({"model": a.model, "grid": list(grid), "steps": steps, "settings": settings,
                                      "prompts": a.prompts, "split": "heldout", "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
