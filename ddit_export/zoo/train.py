"""Train flux-mini: a FLUX-architecture pixel-space model on the procedural scenes of :mod:`.scenes`.

``python -m ddit_export.zoo.train --out ddit_export/zoo/weights/flux-mini --work runs/flux-mini --minutes 70``

- Model: diffusers' ``FluxTransformer2DModel`` with ``patch_size=1, in_channels=12`` (RGB packed 2x2 exactly as
  FLUX packs latents: 32x32 px = 16x16 = 256 tokens), no guidance embedding, plus a ``WordTextEncoder`` trained
  jointly.
- Objective: FLUX's rectified flow. ``x_s = (1 - s) x0 + s noise``, target ``v = noise - x0``, timestep input ``s``.
  ``s`` is logit-normal, shifted by the same ``mu`` the sampler uses at 256 tokens (``calculate_shift``).
- AdamW, linear warm-up, then warmup-stable-decay: constant lr, cosine decay over the last ``decay_frac`` of the
  run, where progress is the larger of step/steps and elapsed/budget (so a time budget works without knowing
  the step count). With a step budget only, runs are bit-reproducible; batches depend only on (seed, step).
- ``--work`` holds ``loss.csv``, ``eval.csv``, sample grids and ``ckpt/`` (weights, EMA, optimizer moments, all
  safetensors, plus ``state.json``). Re-running the same command resumes from it; ``--minutes`` and ``--steps``
  are totals over all resumed runs. A checkpoint is written every ``--ckpt-minutes``, at the end, and on
  Ctrl-C/SIGTERM; each one also (re)writes the model folder ``--out`` (EMA weights) via ``save_pixel_model``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..training import ThreadTuner, no_cudnn_attention
from ..images import pack
from ..shapes import TokenGeometry
from ..fsutil import replace_dir
from . import grow, scenes
from .flux_mini import (MICRO, SAMPLE_PROMPTS, Pair, TrainConfig, build, export_model, generate,  # noqa: F401
                        save_grid)
from .grow import init_from  # noqa: F401 (train.init_from: --init's loader)

CKPT = "ckpt"
STATE = "state.json"
# ---- data and objective ------------------------------------------------------------------------------------
def batch_at(cfg: TrainConfig, step: int, split: str = "train", n: int | None = None, side: int | None = None,
             graded: bool | None = None):
    """The batch of ``step``: packed clean tokens, captions. A function of (seed, step) only; the resolution is
    ``cfg.side_at(step)`` unless ``side`` is given; graded-grammar scenes on a ``cfg.graded_frac`` of the steps
    (or as ``graded`` says)."""
    side = side or cfg.side_at(step)
    graded = grow.is_graded_step(cfg.seed, step, cfg.graded_frac) if graded is None else graded
    make = grow.graded_batch if graded else scenes.make_batch
    images, captions, _ = make(np.random.default_rng([cfg.seed, step]), n or cfg.batch, split, side=side)
    geom = TokenGeometry(side, side, 1, 3)
    return torch.from_numpy(pack(images, geom)), captions, geom.grid


def _batch_numpy(cfg: TrainConfig, step: int):
    """:func:`batch_at` for a data worker process (numpy crosses the process boundary cheaply)."""
    x0, caps, grid = batch_at(cfg, step)
    return x0.numpy(), caps, grid


class Prefetch:
    """Batches of steps ``start, start+1, ...`` made ``ahead`` steps in advance by ``workers`` processes (spawned,
    so a CUDA parent is safe); ``workers=0`` makes them inline. Same batches either way: they depend on the step."""

    def __init__(self, cfg: TrainConfig, start: int, workers: int, ahead: int | None = None):
        self.cfg, self.next, self.pending = cfg, start, []
        self.pool = None
        if workers > 0:
            import multiprocessing as mp

            self.pool = mp.get_context("spawn").Pool(workers)
            self.ahead = ahead or 2 * workers
            self._fill()

    def _fill(self):
        while len(self.pending) < self.ahead:
            self.pending.append(self.pool.apply_async(_batch_numpy, (self.cfg, self.next + len(self.pending))))

    def get(self, step: int):
        if self.pool is None:
            return batch_at(self.cfg, step)
        if step != self.next:
            raise RuntimeError(f"prefetch expected step {self.next}, got {step}")
        x0, caps, grid = self.pending.pop(0).get()
        self.next += 1
        self._fill()
        return torch.from_numpy(x0), caps, tuple(grid)

    def close(self):
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


def sample_sigmas(cfg: TrainConfig, n: int, gen: torch.Generator, side: int | None = None) -> torch.Tensor:
    """Logit-normal s, shifted like the sampler's sigmas (exp(mu) time shift) at the batch's token count."""
    u = torch.sigmoid(torch.randn(n, generator=gen))
    e = math.exp(cfg.mu_at(side or cfg.side))
    return e * u / (1 + (e - 1) * u)


def flow_loss(model: Pair, cfg: TrainConfig, x0, captions, grid, gen, s=None):
    """Rectified-flow loss; noise and s come from the CPU generator ``gen`` (the same on every device)."""
    side = 2 * grid[0]
    s = sample_sigmas(cfg, x0.shape[0], gen, side) if s is None else s
    noise = torch.randn(x0.shape, generator=gen).to(x0.device)
    s = s.to(x0.device)
    xt = (1 - s[:, None, None]) * x0 + s[:, None, None] * noise
    v = model.velocity(xt, s, captions, grid)
    return torch.mean((v - (noise - x0)) ** 2)


def lr_at(cfg: TrainConfig, step: int, progress: float) -> float:
    warm = min(1.0, (step + 1) / max(1, cfg.warmup_steps))
    start = 1 - cfg.decay_frac
    if progress <= start or cfg.decay_frac <= 0:
        return cfg.lr * warm
    t = min(1.0, (progress - start) / cfg.decay_frac)
    return cfg.lr * warm * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * t)))


# ---- checkpoints -------------------------------------------------------------------------------------------
def _save_ckpt(work: Path, model: Pair, ema: dict, opt: torch.optim.Optimizer, names: list[str], state: dict):
    from safetensors.torch import save_file

    tmp = work / (CKPT + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
    save_file({k: v.cpu().contiguous() for k, v in ema.items()}, tmp / "ema.safetensors")
    moments = {}
    for name, p in zip(names, opt.param_groups[0]["params"]):
        st = opt.state.get(p, {})
        if st:
            moments[f"exp_avg.{name}"] = st["exp_avg"].cpu()
            moments[f"exp_avg_sq.{name}"] = st["exp_avg_sq"].cpu()
    save_file(moments, tmp / "optim.safetensors")
    (tmp / STATE).write_text(json.dumps(state, indent=2))
    replace_dir(tmp, work / CKPT, owned=lambda d: (d / STATE).is_file())


def _load_ckpt(work: Path, model: Pair, ema: dict, opt: torch.optim.Optimizer, names: list[str]) -> dict:
    from safetensors.torch import load_file

    ck = work / CKPT
    dev = next(model.parameters()).device
    model.load_state_dict(load_file(ck / "model.safetensors"))
    for k, v in load_file(ck / "ema.safetensors").items():
        ema[k].copy_(v)
    state = json.loads((ck / STATE).read_text())
    moments = load_file(ck / "optim.safetensors")
    for name, p in zip(names, opt.param_groups[0]["params"]):
        if f"exp_avg.{name}" in moments:
            opt.state[p] = {"step": torch.tensor(float(state["step"])), "exp_avg": moments[f"exp_avg.{name}"].to(dev),
                            "exp_avg_sq": moments[f"exp_avg_sq.{name}"].to(dev)}
    return state


# ---- the loop ----------------------------------------------------------------------------------------------
def _config_from_work(work: Path, cfg: TrainConfig) -> TrainConfig:
    f = work / CKPT / STATE
    if not f.is_file():
        return cfg
    saved = json.loads(f.read_text())["config"]
    saved["axes_dims_rope"] = tuple(saved["axes_dims_rope"])
    saved["mix"] = tuple(saved.get("mix", ()))
    return TrainConfig(**saved)


@torch.no_grad()
def evaluate(model: Pair, cfg: TrainConfig, n: int = 64) -> dict:
    """Flow loss on fixed train/held-out batches at fixed sigmas: comparable across checkpoints."""
    out = {}
    s = torch.linspace(0.05, 0.95, n)
    dev = next(model.parameters()).device
    for side in sorted(set(cfg.sides)):
        tag = "" if len(set(cfg.sides)) == 1 else f"_{side}"
        for split in ("train", "heldout") + (("graded",) if cfg.graded_frac > 0 else ()):
            x0, caps, grid = batch_at(cfg, 2**31, "heldout" if split == "graded" else split, n, side=side,
                                      graded=split == "graded")
            out[split + tag] = float(flow_loss(model, cfg, x0.to(dev), caps, grid,
                                               torch.Generator().manual_seed(1), s))
    return out


def train(cfg: TrainConfig, out: Path, work: Path, minutes: float | None = None, steps: int | None = None,
          ckpt_minutes: float = 5.0, threads: int | str = 2, progress: bool = True, samples: bool = True,
          device: str = "cpu", bf16: bool = False, workers: int = 0) -> dict:
    """Train (or resume) until ``steps`` total steps or ``minutes`` total minutes; returns the final state.

    ``device="cuda"`` with ``bf16`` (autocast; weights, EMA and optimizer moments stay fp32) and ``workers`` data
    processes is the GPU path; checkpoints are the same files either way, so a run can move between machines."""
    from tqdm import tqdm

    if minutes is None and steps is None:
        raise ValueError("give a time budget (minutes) or a step count (steps)")
    prev_threads = torch.get_num_threads()
    tuner = ThreadTuner() if threads == "auto" else None
    torch.set_num_threads(2 if tuner else int(threads))
    work, out = Path(work), Path(out)
    work.mkdir(parents=True, exist_ok=True)
    cfg = _config_from_work(work, cfg)
    trunk, text, sched = build(cfg)
    model = Pair(trunk, text).train()
    if cfg.init and not (work / CKPT / STATE).is_file():
        init_from(model, cfg.init)
        print(f"starting from {cfg.init}", file=sys.stderr)
    if device != "cpu":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model.to(device)
    names = [n for n, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay)
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state = {"step": 0, "elapsed_s": 0.0}
    if (work / CKPT / STATE).is_file():
        state = _load_ckpt(work, model, ema, opt, names)
        print(f"resuming from {work / CKPT} at step {state['step']}", file=sys.stderr)
    amp = torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=bf16)
    ema_params = [ema[n] for n in names]
    buffers = [(ema[n], b) for n, b in model.named_buffers() if n in ema]

    stop = {"flag": False}

    def on_signal(signum, frame):
        stop["flag"] = True

    old_handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    loss_log = open(work / "loss.csv", "a")
    if loss_log.tell() == 0:
        loss_log.write("step,loss,lr,elapsed_s,s_per_step,threads\n")
    budget = None if minutes is None else minutes * 60
    step, t_prev = state["step"], state["elapsed_s"]
    t0 = time.time()
    last_ckpt = t0

    def elapsed():
        return t_prev + time.time() - t0

    def frac():
        p = 0.0 if steps is None else step / steps
        return max(p, 0.0 if budget is None else elapsed() / budget)

    def checkpoint():
        st = {"step": step, "elapsed_s": elapsed(), "config": dataclasses.asdict(cfg)}
        _save_ckpt(work, model, ema, opt, names, st)
        export_model(out, cfg, ema, sched)
        with amp:
            ev = evaluate(_ema_model(cfg, ema).to(device), cfg)
        new = not (work / "eval.csv").exists()
        with open(work / "eval.csv", "a") as f:
            f.write("step,elapsed_s," + ",".join(f"{k}_loss" for k in ev) + "\n" if new else "")
            f.write(f"{step},{st['elapsed_s']:.1f}," + ",".join(f"{v:.5f}" for v in ev.values()) + "\n")
        if samples:
            sampler = _ema_model(cfg, ema)
            for side in sorted(set(cfg.sides)):
                prompts = SAMPLE_PROMPTS + (grow.GRADED_SAMPLE_PROMPTS if cfg.graded_frac > 0 else [])
                imgs = generate(sampler, sched, prompts, side, cfg.sample_steps)
                tag = "" if len(set(cfg.sides)) == 1 else f"_{side}"
                save_grid(imgs, work / f"samples{tag}_{step:06d}.png")
        return st

    bar = tqdm(total=steps, initial=step, disable=not progress, mininterval=5.0, dynamic_ncols=True,
               file=sys.stderr)
    data = Prefetch(cfg, step, workers)
    try:
        while not stop["flag"] and (steps is None or step < steps) and (budget is None or elapsed() < budget):
            nthreads = tuner.before_step() if tuner else torch.get_num_threads()
            ts = time.time()
            lr = lr_at(cfg, step, frac())
            for g in opt.param_groups:
                g["lr"] = lr
            x0, caps, grid = data.get(step)
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
            with amp, no_cudnn_attention(device):
                loss = flow_loss(model, cfg, x0.to(device, non_blocking=True), caps, grid, gen)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            decay = min(cfg.ema, (1 + step) / (10 + step))
            torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1 - decay)
            for e, b in buffers:
                e.copy_(b)
            step += 1
            dt = time.time() - ts
            if tuner:
                tuner.after_step(dt)
            loss_log.write(f"{step},{loss.item():.5f},{lr:.3e},{elapsed():.1f},{dt:.3f},{nthreads}\n")
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.1e}", s_step=f"{dt:.2f}", thr=nthreads, refresh=False)
            if step % 20 == 0:
                loss_log.flush()
            if time.time() - last_ckpt > ckpt_minutes * 60:
                loss_log.flush()
                checkpoint()
                last_ckpt = time.time()
        state = checkpoint()
    finally:
        data.close()
        bar.close()
        loss_log.close()
        for sig, h in old_handlers.items():
            signal.signal(sig, h)
        torch.set_num_threads(prev_threads)
    state["stopped_by_signal"] = stop["flag"]
    return state


def _ema_model(cfg: TrainConfig, ema: dict) -> Pair:
    trunk, text, _ = build(cfg)
    m = Pair(trunk, text).eval()
    m.load_state_dict(ema)
    return m


def main(argv=None):
    d = TrainConfig()
    ap = argparse.ArgumentParser(prog="python -m ddit_export.zoo.train", description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="model folder to write (EMA weights), e.g. "
                                                 "ddit_export/zoo/weights/flux-mini")
    ap.add_argument("--work", required=True, help="run folder: checkpoints, loss.csv, samples; resumed if present")
    ap.add_argument("--minutes", type=float, default=None, help="total training time budget")
    ap.add_argument("--steps", type=int, default=None, help="total step budget")
    ap.add_argument("--ckpt-minutes", type=float, default=5.0)
    ap.add_argument("--threads", default="2", help="intra-op threads, or 'auto' (see ThreadTuner)")
    ap.add_argument("--micro", action="store_true", help="a tiny config for smoke tests")
    for f in ("batch", "lr", "width", "heads", "double_blocks", "single_blocks", "text_dim", "seed",
              "warmup_steps"):
        ap.add_argument("--" + f.replace("_", "-"), type=type(getattr(d, f)), default=None)
    ap.add_argument("--no-samples", action="store_true")
    ap.add_argument("--side", type=int, default=None, help="the exported model's resolution (default 32)")
    ap.add_argument("--mix", default=None, help="training resolutions cycled per step, e.g. 32,64 (default: --side)")
    ap.add_argument("--name", default=None, help="the exported model's name (default flux-mini)")
    ap.add_argument("--init", default=None, help="a pixel-model folder to start from (same architecture; its text "
                    "encoder grows to this run's vocabulary and --max-words)")
    ap.add_argument("--graded-frac", type=float, default=None, help="fraction of batches from the graded grammar "
                    "(detail grades 1-4; default 0); > 0 uses GRADED_VOCAB and --max-words 72")
    ap.add_argument("--max-words", type=int, default=None, help="text positions (default 40; 72 with --graded-frac)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU path; fp32 master weights)")
    ap.add_argument("--workers", type=int, default=0, help="data worker processes (0: inline)")
    a = ap.parse_args(argv)
    over = dict(MICRO) if a.micro else {}
    over.update({f: getattr(a, f) for f in ("batch", "lr", "width", "heads", "double_blocks", "single_blocks",
                                            "text_dim", "seed", "warmup_steps") if getattr(a, f) is not None})
    if "width" in over or "heads" in over:
        hd = over.get("width", d.width) // over.get("heads", d.heads)
        over.setdefault("axes_dims_rope", (hd - 2 * (3 * hd // 8), 3 * hd // 8, 3 * hd // 8))
    if a.side is not None:
        over["side"] = a.side
    if a.mix:
        over["mix"] = tuple(int(v) for v in a.mix.split(","))
    if a.name:
        over["name"] = a.name
    if a.init:
        over["init"] = str(a.init)
    if a.graded_frac:
        over.update(graded_frac=a.graded_frac, max_words=scenes.GRADED_MAX_WORDS)
    if a.max_words is not None:
        over["max_words"] = a.max_words
    cfg = dataclasses.replace(d, **over)
    if a.minutes is None and a.steps is None:
        ap.error("give --minutes and/or --steps")
    threads = a.threads if a.threads == "auto" else int(a.threads)
    state = train(cfg, Path(a.out), Path(a.work), a.minutes, a.steps, a.ckpt_minutes, threads,
                  progress=True, samples=not a.no_samples, device=a.device, bf16=a.bf16, workers=a.workers)
    print(json.dumps({k: v for k, v in state.items() if k != "config"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
