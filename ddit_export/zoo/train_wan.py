"""Train wan-mini: a small Wan-architecture (diffusers' WanTransformer3DModel) text-to-video model in pixel space,
on the procedural clips of zoo/clips.py, with its own word-level text encoder. Resumable; CPU or CUDA.

    python -m ddit_export.zoo.train_wan --work runs/wan-mini --minutes 70 [--out ddit_export/zoo/weights/wan-mini]
        [--threads 1|2|auto] [--init MODEL_FOLDER] [--layers N] [--batch N] [--two-shape FRAC]
    python -m ddit_export.zoo.train_wan --time-steps 8 --layers 4 --batch 16 --threads 1   # median s/step, no run
    python -m ddit_export.zoo.train_wan --work W --minutes 8 --device cuda --bf16 ...    # the GPU machine

Every checkpoint (``--ckpt-minutes``) writes ``WORK/ckpt.pt`` atomically and exports the EMA weights as a pixel
video model folder (``WORK/model``, or ``--out``; written beside and renamed into place), with a loss curve and a
sample sheet, so a stopped run always leaves a usable model. Rerunning the same command resumes; a run with other
settings in the same ``--work`` is refused (``error: ...``, exit 2). Batches are a function of (seed, step): a
resumed run sees the batches an uninterrupted one would. ``--init`` starts a fresh run (a fresh optimiser) from an
exported model folder of the same architecture and continues its training record (:func:`wan_mini.lineage`: steps
and clips in all, one entry per run), so weights continued session after session (checkpoints/wan-mini) say what
they hold. ``--device cuda --bf16`` is the GPU path (bf16 autocast; weights, EMA and optimizer moments stay fp32; the
held-out loss, probe, samples and export run on CPU copies of the EMA weights): the checkpoint is the same file on
either device, so a run can move between the CPU and the GPU machine and back. ``--bf16`` on the CPU is 1.3x faster
a step on an AVX512-BF16 CPU (``--time-steps 6 --layers 6 --batch 32 --threads 1 [--bf16]``).
``--two-shape FRAC`` sets the share of two-shape clips in the training batches (default 0.3, the mix every held-out
draw keeps): the captions that name two shapes are the ones the model reads worst.
``--threads auto`` uses zoo/train.py's ThreadTuner: on 2 cores shared with other work, 2
intra-op threads stall whenever the other core is busy (the first wan-mini run, at 2 threads: 1.2 s/step, then
4.8 s/step while a test suite ran beside it).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from . import clips as C
from .wan_mini import (MICRO, VIDEO_FORMAT, Pair, WanTrainConfig, build, export_model, init_from,  # noqa: F401
                       lineage, load_exported, sample, save_sheet)
from .train import lr_at  # flux-mini's schedule: warm-up, constant, cosine decay; same config fields

def batch_at(cfg: WanTrainConfig, step: int, split: str = "train", n: int | None = None):
    """Clean clips (B, 3, F, H, W) and captions of ``step``: a function of (seed, step) only. Training batches have
    ``cfg.two_shape`` two-shape clips; held-out ones the evaluation's mix (C.TWO_SHAPE), so that held-out losses of
    runs with other mixes compare."""
    two = cfg.two_shape if split == "train" else C.TWO_SHAPE
    arr, caps, _ = C.make_batch(np.random.default_rng([cfg.seed, step]), n or cfg.batch, split, cfg.frames, cfg.side,
                                two)
    return torch.from_numpy(arr).permute(0, 2, 1, 3, 4).contiguous(), caps


def sample_sigmas(cfg: WanTrainConfig, n: int, gen: torch.Generator) -> torch.Tensor:
    u = torch.sigmoid(torch.randn(n, generator=gen))
    return cfg.shift * u / (1 + (cfg.shift - 1) * u)


def flow_loss(model: Pair, cfg: WanTrainConfig, x0, captions, gen):
    s = sample_sigmas(cfg, x0.shape[0], gen).to(x0.device)
    noise = torch.randn(x0.shape, generator=gen).to(x0.device)
    xt = (1 - s[:, None, None, None, None]) * x0 + s[:, None, None, None, None] * noise
    return torch.mean((model.velocity(xt, s, captions) - (noise - x0)) ** 2)


def ema_decay(cfg: WanTrainConfig, step: int) -> float:
    """zoo/train.py's EMA warm-up: (1 + step) / (10 + step) up to ``cfg.ema``, so that an early export is not
    mostly the random init (0.998 ** 641 = 28% of it at step 641 without the warm-up)."""
    return min(cfg.ema, (1 + step) / (10 + step))


@torch.no_grad()
def held_out_loss(model: Pair, cfg: WanTrainConfig, n: int = 32) -> float:
    x0, caps = batch_at(cfg, 10**9, "heldout", n)
    gen = torch.Generator().manual_seed(1234)
    return float(flow_loss(model, cfg, x0, caps, gen))


def time_steps(cfg: WanTrainConfig, n: int = 8, threads: int | None = None, bf16: bool = False) -> dict:
    """Median wall time of ``n`` training steps (after one warm-up step) of ``cfg`` on the CPU, fp32 or bf16
    autocast: for choosing a config."""
    if threads:
        torch.set_num_threads(threads)
    trunk, text, _ = build(cfg)
    model = Pair(trunk, text).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    gen, times = torch.Generator().manual_seed(0), []
    for step in range(n + 1):
        t0 = time.perf_counter()
        x0, caps = batch_at(cfg, step)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = flow_loss(model, cfg, x0, caps, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    med = float(np.median(times[1:]))
    return {"layers": cfg.layers, "batch": cfg.batch, "threads": torch.get_num_threads(), "bf16": bf16,
            "params_M": round(sum(p.numel() for p in trunk.parameters()) / 1e6, 3), "s_per_step": round(med, 3),
            "clips_per_s": round(cfg.batch / med, 2)}


def probe_motion(model: Pair, cfg: WanTrainConfig, n: int = 32, split: str = "heldout", seed: int = 0,
                 steps: int | None = None) -> dict:
    """Generate ``n`` clips for ``split`` captions and read them with quality/motion.py's probe: the fractions of
    clips whose colours / motions / both match the caption, the motion rate per motion word, and per motion word
    what the probe saw instead (``seen``)."""
    from ..quality import motion as M

    clips = [C.sample_clip(np.random.default_rng([seed, 10**6 + i]), split) for i in range(n)]
    out = []
    for i in range(0, n, 16):
        part = clips[i:i + 16]
        out.append(sample(model, cfg, [c.caption for c in part], steps=steps or cfg.steps, seed=seed + i))
    gen = np.concatenate(out).transpose(0, 2, 1, 3, 4)  # (n, F, 3, H, W)
    results = [M.adherence(g, c) for g, c in zip(gen, clips)]
    return {"split": split, "n": n, **M.aggregate(results), "by_motion": M.rates_by_motion(results, clips),
            "seen": M.confusion(results, clips)}


def _ema_copy(cfg: WanTrainConfig, ema: dict) -> Pair:
    """A CPU model of the EMA weights (wherever the run trains)."""
    trunk, text, _ = build(cfg)
    m = Pair(trunk, text)
    m.load_state_dict({k: v.detach().cpu() for k, v in ema.items()})
    return m.eval()


def train(cfg: WanTrainConfig, work: Path, out: Path | None = None, minutes: float | None = None,
          steps: int | None = None, ckpt_minutes: float = 5.0, threads: int | str | None = None, log=print,
          init: str | Path | None = None, samples: bool = True, probe_n: int = 16, device: str = "cpu",
          bf16: bool = False) -> dict:
    """Train (or resume) until ``minutes`` of wall time (this run) or ``steps`` total steps. ``threads``: a count,
    "auto" (zoo/train.py's ThreadTuner) or None (torch's default). Every checkpoint also generates ``probe_n``
    held-out clips with the EMA model and logs quality/motion.py's rates (0: no probe)."""
    from ..training import ThreadTuner

    tuner = ThreadTuner() if threads == "auto" else None
    if threads and not tuner:
        torch.set_num_threads(int(threads))
    if device != "cpu" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: this torch has no CUDA device (torch {torch.__version__})")
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    out = Path(out) if out else work / "model"
    if device != "cpu":
        torch.backends.cuda.matmul.allow_tf32 = True
    trunk, text, _ = build(cfg)
    model = Pair(trunk, text).train().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ckpt, state = work / "ckpt.pt", {"step": 0, "seconds": 0.0, "losses": []}
    if ckpt.is_file():
        d = torch.load(ckpt, weights_only=False, map_location=device)  # a CPU checkpoint on the GPU and back
        # a field added since the checkpoint was written reads as its default (the run it holds used that)
        if {**dataclasses.asdict(WanTrainConfig()), **d["config"]} != dataclasses.asdict(cfg):
            raise ConfigError(f"{work} holds a run with other settings; use another --work")
        model.load_state_dict(d["model"])
        opt.load_state_dict(d["opt"])
        ema, state = d["ema"], d["state"]
        log(f"resumed at step {state['step']}")
    elif init:
        init_from(model, init)
        model.to(device)
        ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
        # the record this run continues, and where it starts: a fresh optimiser on exported EMA weights should not
        # lose what they held (the first checkpoint's held-out loss against this one says whether it did)
        state["base"] = {**lineage(init), "init": str(init), "init_heldout": held_out_loss(_ema_copy(cfg, ema), cfg)}
        log(f"starting from {init} (held-out flow loss {state['base']['init_heldout']:.4f}"
            + (f", {state['base']['steps']} steps of training before)" if "steps" in state["base"] else ")"))
    n_params = sum(p.numel() for p in model.trunk.parameters())
    log(f"wan-mini trunk {n_params / 1e6:.2f} M parameters, text encoder "
        f"{sum(p.numel() for p in model.text.parameters()) / 1e6:.2f} M; batch {cfg.batch}, "
        f"{torch.get_num_threads()} threads" + (f", {device}{' bf16' if bf16 else ''}" if device != "cpu" or bf16
                                                else ""))
    amp = torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=bf16)
    # under bf16 autocast Wan's RMSNorm takes bf16 input and fp32 weights, which torch only says is unfused
    warnings.filterwarnings("ignore", message="Mismatch dtype between input and weight")
    stop = {"flag": False}

    def on_signal(signum, frame):
        stop["flag"] = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)

    def checkpoint(final=False):
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"config": dataclasses.asdict(cfg), "model": model.state_dict(), "opt": opt.state_dict(),
                    "ema": ema, "state": state}, tmp)
        tmp.replace(ckpt)
        em = _ema_copy(cfg, ema)
        hl = held_out_loss(em, cfg)
        state.setdefault("heldout", []).append([state["step"], hl])
        pr = probe_motion(em, cfg, probe_n, "heldout") if probe_n else None
        if pr:
            state.setdefault("probe", []).append([state["step"], pr["colour"], pr["motion"], pr["all"]])
        export_model(out, cfg, em, _record(cfg, state, hl, pr, device, bf16))
        _plot(work, state)
        caps = [c.caption for c in [C.sample_clip(np.random.default_rng([7, i]), "heldout") for i in range(6)]]
        if samples:
            save_sheet(sample(em, cfg, caps, steps=cfg.steps), caps, work / "samples.png")
        (work / "state.json").write_text(json.dumps({k: v for k, v in state.items() if k != "losses"}, indent=1))
        seen = (f"; probe on {probe_n} held-out clips: colour {pr['colour']:.2f}, motion {pr['motion']:.2f}"
                if pr else "")
        log(f"checkpoint step {state['step']}: held-out flow loss {hl:.4f}{seen}; exported {out}")

    t_start, last_ckpt, step0 = time.monotonic(), time.monotonic(), state["step"]
    budget = minutes * 60 if minutes else None
    gen = torch.Generator()
    try:
        while not stop["flag"]:
            if steps is not None and state["step"] >= steps:
                break
            elapsed = time.monotonic() - t_start
            if budget is not None and elapsed >= budget:
                break
            progress = (elapsed / budget) if budget else (state["step"] / steps if steps else 0.0)
            for g in opt.param_groups:
                g["lr"] = lr_at(cfg, state["step"], progress)
            if tuner:
                tuner.before_step()
            t_step = time.perf_counter()
            x0, caps = batch_at(cfg, state["step"])
            gen.manual_seed(cfg.seed * 7_919 + state["step"])
            with amp:
                loss = flow_loss(model, cfg, x0.to(device, non_blocking=True), caps, gen)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {state['step']}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            decay = ema_decay(cfg, state["step"])
            with torch.no_grad():
                for k, v in model.state_dict().items():
                    if v.is_floating_point():
                        ema[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
                    else:
                        ema[k].copy_(v)
            if tuner:
                tuner.after_step(time.perf_counter() - t_step)
            state["step"] += 1
            state["losses"].append(loss.item())
            if state["step"] % 50 == 0:
                log(f"step {state['step']}: loss {np.mean(state['losses'][-50:]):.4f} "
                    f"({(time.monotonic() - t_start) / max(1, state['step'] - step0):.2f} s/step this run)")
            if time.monotonic() - last_ckpt > ckpt_minutes * 60:
                state["seconds"] += time.monotonic() - last_ckpt
                last_ckpt = time.monotonic()
                checkpoint()
    finally:
        state["seconds"] += time.monotonic() - last_ckpt
        checkpoint(final=True)
    return state


def _round(x, n=5):
    return None if x is None else round(x, n)


def _record(cfg: WanTrainConfig, state: dict, heldout: float, probe: dict | None, device: str,
            bf16: bool = False) -> dict:
    """The exported weights' training record (:func:`wan_mini.lineage`): the init's record with this run added."""
    base = state.get("base", {})
    run = {"init": base.get("init"), "steps": state["step"], "batch": cfg.batch, "two_shape": cfg.two_shape,
           "seconds": round(state["seconds"]),
           "device": device + (" bf16" if bf16 else ""), "heldout_loss_start": _round(base.get("init_heldout")),
           "heldout_loss": round(heldout, 5)}
    if probe:
        run["probe"] = {k: probe[k] for k in ("split", "n", "colour", "motion")}
    prior = base.get("runs", [])
    return {"steps": base.get("steps", 0) + state["step"], "clips": base.get("clips", 0) + state["step"] * cfg.batch,
            "runs": prior + [run]}


def _plot(work: Path, state: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = np.asarray(state["losses"])
    if len(losses) < 2:
        return
    k = max(1, len(losses) // 200)
    smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(np.arange(len(smooth)) + k, smooth, label="train (smoothed)")
    if state.get("heldout"):
        h = np.asarray(state["heldout"])
        ax.plot(h[:, 0], h[:, 1], "o-", label="held-out")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("flow loss")
    ax.legend(loc="upper left")
    if state.get("probe"):
        pr = np.asarray(state["probe"])
        ax2 = ax.twinx()
        ax2.plot(pr[:, 0], pr[:, 2], "s--", color="tab:green", label="held-out motion right (probe)")
        ax2.set_ylim(0, 1)
        ax2.set_ylabel("fraction of clips")
        ax2.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(work / "loss.png", dpi=100)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m ddit_export.zoo.train_wan", description="train wan-mini (resumable)")
    p.add_argument("--work", type=Path, help="run folder (checkpoint, log plots, samples; resumed if present)")
    p.add_argument("--out", type=Path)
    p.add_argument("--minutes", type=float)
    p.add_argument("--steps", type=int)
    p.add_argument("--ckpt-minutes", type=float, default=5.0)
    p.add_argument("--threads", help="intra-op threads: a count or 'auto' (default: torch's)")
    p.add_argument("--batch", type=int)
    p.add_argument("--layers", type=int)
    p.add_argument("--two-shape", type=float, metavar="FRAC",
                   help=f"share of two-shape clips in training batches (default {C.TWO_SHAPE}, the evaluation's mix)")
    p.add_argument("--micro", action="store_true", help="a tiny config for tests")
    p.add_argument("--init", type=Path, help="an exported wan-mini folder to start from (same architecture)")
    p.add_argument("--no-samples", action="store_true", help="no sample sheet at checkpoints")
    p.add_argument("--device", default="cpu", help="cpu or cuda (the GPU machine)")
    p.add_argument("--bf16", action="store_true",
                   help="bf16 autocast, on CUDA or the CPU (weights, EMA, optimizer moments stay fp32)")
    p.add_argument("--probe", type=Path, metavar="MODEL_FOLDER",
                   help="generate --probe-n clips per split with an exported model, print the motion probe's rates")
    p.add_argument("--probe-n", type=int, default=16, help="clips per probe (--probe; and at every checkpoint)")
    p.add_argument("--time-steps", type=int, metavar="N",
                   help="print the median time of N training steps of this config as JSON and exit")
    a = p.parse_args(argv)
    if a.threads is not None and a.threads != "auto" and not a.threads.isdigit():
        p.error(f"--threads must be a count or 'auto', got {a.threads!r}")
    over = dict(MICRO) if a.micro else {}
    over.update({k: v for k, v in (("batch", a.batch), ("layers", a.layers), ("two_shape", a.two_shape))
                 if v is not None})
    if a.two_shape is not None and not 0 <= a.two_shape <= 1:
        p.error(f"--two-shape must be a fraction in [0, 1], got {a.two_shape}")
    cfg = WanTrainConfig(**over)
    if a.probe:
        if a.threads not in (None, "auto"):
            torch.set_num_threads(int(a.threads))
        try:
            model, pcfg = load_exported(a.probe)
        except (ConfigError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        for split in ("train", "heldout"):
            print(json.dumps(probe_motion(model, pcfg, a.probe_n, split)), flush=True)
        return 0
    if a.time_steps:
        print(json.dumps(time_steps(cfg, a.time_steps, int(a.threads) if a.threads not in (None, "auto") else None,
                                    a.bf16)))
        return 0
    if a.work is None:
        p.error("give --work")
    if a.minutes is None and a.steps is None:
        p.error("give --minutes or --steps")
    try:
        train(cfg, a.work, a.out, a.minutes, a.steps, a.ckpt_minutes, a.threads,
              log=lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", flush=True), init=a.init,
              samples=not a.no_samples, probe_n=a.probe_n, device=a.device, bf16=a.bf16)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
