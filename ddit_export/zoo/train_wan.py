"""Train wan-mini: a small Wan-architecture (diffusers' WanTransformer3DModel) text-to-video model in pixel space,
on the procedural clips of zoo/clips.py, with its own word-level text encoder. Resumable; CPU or CUDA.

    python -m ddit_export.zoo.train_wan --work runs/wan-mini --minutes 70 [--out ddit_export/zoo/weights/wan-mini]
        [--threads 1|2|auto] [--init MODEL_FOLDER] [--layers N] [--batch N]
    python -m ddit_export.zoo.train_wan --time-steps 8 --layers 4 --batch 16 --threads 1   # median s/step, no run

Every checkpoint (``--ckpt-minutes``) writes ``WORK/ckpt.pt`` atomically and exports the EMA weights as a pixel
video model folder (``WORK/model``, or ``--out``; written beside and renamed into place), with a loss curve and a
sample sheet, so a stopped run always leaves a usable model. Rerunning the same command resumes; a run with other
settings in the same ``--work`` is refused (``error: ...``, exit 2). Batches are a function of (seed, step): a
resumed run sees the batches an uninterrupted one would. ``--init`` starts a fresh run from an exported model folder
of the same architecture. ``--threads auto`` uses zoo/train.py's ThreadTuner: on 2 cores shared with other work, 2
intra-op threads stall whenever the other core is busy (the first wan-mini run, at 2 threads: 1.2 s/step, then
4.8 s/step while a test suite ran beside it).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from . import clips as C
from .train import lr_at  # flux-mini's schedule: warm-up, constant, cosine decay; same config fields

VIDEO_FORMAT = "ddit-pixel-video/1"


@dataclass(frozen=True)
class WanTrainConfig:
    """Everything that defines a run; saved in the checkpoint and checked on resume."""

    heads: int = 4
    head_dim: int = 32
    ffn: int = 512
    layers: int = 4
    text_dim: int = 64
    freq_dim: int = 64
    patch: tuple[int, int, int] = (2, 4, 4)
    text_layers: int = 1
    max_words: int = 24
    frames: int = C.FRAMES
    side: int = C.SIDE
    batch: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    decay_frac: float = 0.25
    min_lr_frac: float = 0.05
    grad_clip: float = 1.0
    ema: float = 0.998
    shift: float = 2.0  # static time shift of the sampler's sigmas (and of the training noise levels)
    seed: int = 0
    steps: int = 28  # sampling steps the exported model defaults to
    name: str = "wan-mini"


MICRO = dict(heads=2, head_dim=12, ffn=32, layers=1, text_dim=16, freq_dim=16, batch=2, warmup_steps=2, frames=4,
             side=16)


def build(cfg: WanTrainConfig):
    """Fresh (trunk, text encoder, scheduler), seeded."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanTransformer3DModel

    from ..models.text import WordTextEncoder

    torch.manual_seed(cfg.seed)
    trunk = WanTransformer3DModel(patch_size=tuple(cfg.patch), num_attention_heads=cfg.heads,
                                  attention_head_dim=cfg.head_dim, in_channels=3, out_channels=3,
                                  text_dim=cfg.text_dim, freq_dim=cfg.freq_dim, ffn_dim=cfg.ffn,
                                  num_layers=cfg.layers, cross_attn_norm=True, rope_max_seq_len=64)
    text = WordTextEncoder(vocab=list(C.VIDEO_VOCAB), max_length=cfg.max_words, dim=cfg.text_dim,
                           joint_attention_dim=cfg.text_dim, pooled_projection_dim=cfg.text_dim,
                           num_heads=2, num_layers=cfg.text_layers)
    sched = FlowMatchEulerDiscreteScheduler(shift=cfg.shift, use_dynamic_shifting=False)
    return trunk, text, sched


class Pair(torch.nn.Module):
    """Trunk + text encoder as one module: weights, EMA and optimizer state share one name space."""

    def __init__(self, trunk, text):
        super().__init__()
        self.trunk, self.text = trunk, text

    def velocity(self, x, s, captions):
        """x: (B, 3, F, H, W) in pixel space; s: (B,) noise level in [0, 1]."""
        ids, mask = self.text.tokenize(list(captions))
        states, _ = self.text(ids.to(x.device), mask.to(x.device))
        return self.trunk(hidden_states=x, timestep=s * 1000, encoder_hidden_states=states, return_dict=False)[0]


def batch_at(cfg: WanTrainConfig, step: int, split: str = "train", n: int | None = None):
    """Clean clips (B, 3, F, H, W) and captions of ``step``: a function of (seed, step) only."""
    arr, caps, _ = C.make_batch(np.random.default_rng([cfg.seed, step]), n or cfg.batch, split, cfg.frames, cfg.side)
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
def sample(model: Pair, cfg: WanTrainConfig, captions, steps: int = 28, seed: int = 0) -> np.ndarray:
    """Euler sampling with the shipped scheduler's sigmas; (n, 3, F, H, W) in [-1, 1]."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(shift=cfg.shift, use_dynamic_shifting=False)
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps))
    sig = sched.sigmas
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(len(captions), 3, cfg.frames, cfg.side, cfg.side, generator=gen)
    for i in range(steps):
        x = x + (sig[i + 1] - sig[i]) * model.velocity(x, sig[i].expand(len(captions)), captions)
    return x.clamp(-1, 1).numpy()


@torch.no_grad()
def held_out_loss(model: Pair, cfg: WanTrainConfig, n: int = 32) -> float:
    x0, caps = batch_at(cfg, 10**9, "heldout", n)
    gen = torch.Generator().manual_seed(1234)
    return float(flow_loss(model, cfg, x0, caps, gen))


def save_sheet(clips: np.ndarray, captions, path: Path, scale: int = 3):
    """Rows of frames, one clip a row (for a quick look at the samples)."""
    from PIL import Image

    n, _, f, h, w = clips.shape
    sheet = ((clips.transpose(0, 3, 2, 4, 1).reshape(n * h, f * w, 3) + 1) * 127.5).clip(0, 255).astype(np.uint8)
    Image.fromarray(sheet).resize((f * w * scale, n * h * scale), Image.NEAREST).save(path)
    path.with_suffix(".txt").write_text("\n".join(captions) + "\n")


def export_model(out: Path, cfg: WanTrainConfig, model: Pair):
    """The EMA weights as a pixel video folder (format in models/registry.py), written beside and renamed."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.trunk.save_pretrained(tmp / "transformer")
    model.text.save_pretrained(tmp / "text_encoder")
    FlowMatchEulerDiscreteScheduler(shift=cfg.shift, use_dynamic_shifting=False).save_pretrained(tmp / "scheduler")
    meta = {"format": VIDEO_FORMAT, "name": cfg.name, "height": cfg.side, "width": cfg.side, "frames": cfg.frames,
            "steps": cfg.steps, "prompt": "a large red circle moving right on a black background"}
    (tmp / "ddit_model.json").write_text(json.dumps(meta, indent=2))
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)
    return out


def init_from(model: Pair, folder) -> None:
    """Load an exported folder's transformer and text encoder into ``model`` (same architecture, else ConfigError)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    state = {}
    for prefix, sub in (("trunk", "transformer"), ("text", "text_encoder")):
        f = folder / sub / "diffusion_pytorch_model.safetensors"
        if not f.is_file():
            raise ConfigError(f"--init {folder}: no {sub}/{f.name} (not a pixel video model folder)")
        state.update({f"{prefix}.{k}": v for k, v in load_file(f).items()})
    own = model.state_dict()
    bad = sorted(k for k in own if k not in state or state[k].shape != own[k].shape)
    if bad:
        raise ConfigError(f"--init {folder}: its architecture differs from this run's config "
                          f"({len(bad)} tensors missing or of another shape, e.g. {bad[0]})")
    model.load_state_dict({k: state[k] for k in own})


def time_steps(cfg: WanTrainConfig, n: int = 8, threads: int | None = None) -> dict:
    """Median wall time of ``n`` training steps (after one warm-up step) of ``cfg``: for choosing a config."""
    if threads:
        torch.set_num_threads(threads)
    trunk, text, _ = build(cfg)
    model = Pair(trunk, text).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    gen, times = torch.Generator().manual_seed(0), []
    for step in range(n + 1):
        t0 = time.perf_counter()
        x0, caps = batch_at(cfg, step)
        loss = flow_loss(model, cfg, x0, caps, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    med = float(np.median(times[1:]))
    return {"layers": cfg.layers, "batch": cfg.batch, "threads": torch.get_num_threads(),
            "params_M": round(sum(p.numel() for p in trunk.parameters()) / 1e6, 3), "s_per_step": round(med, 3),
            "clips_per_s": round(cfg.batch / med, 2)}


def load_exported(folder) -> tuple[Pair, WanTrainConfig]:
    """An exported folder as (Pair, a config with its frames, side, steps and shift) for :func:`sample`."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanTransformer3DModel

    from ..models.text import WordTextEncoder

    folder = Path(folder)
    meta = json.loads((folder / "ddit_model.json").read_text())
    if meta.get("format") != VIDEO_FORMAT:
        raise ConfigError(f"{folder}: not a {VIDEO_FORMAT} folder (format {meta.get('format')!r})")
    shift = FlowMatchEulerDiscreteScheduler.from_pretrained(folder / "scheduler").config.shift
    model = Pair(WanTransformer3DModel.from_pretrained(folder / "transformer"),
                 WordTextEncoder.from_pretrained(folder / "text_encoder")).eval()
    cfg = dataclasses.replace(WanTrainConfig(), frames=meta["frames"], side=meta["height"], steps=meta["steps"],
                              shift=shift, name=meta["name"])
    return model, cfg


def probe_motion(model: Pair, cfg: WanTrainConfig, n: int = 32, split: str = "heldout", seed: int = 0,
                 steps: int | None = None) -> dict:
    """Generate ``n`` clips for ``split`` captions and read them with quality/motion.py's probe: the fractions of
    clips whose colours / motions / both match the caption, and the motion rate per motion word."""
    from ..quality import motion as M

    clips = [C.sample_clip(np.random.default_rng([seed, 10**6 + i]), split) for i in range(n)]
    out = []
    for i in range(0, n, 16):
        part = clips[i:i + 16]
        out.append(sample(model, cfg, [c.caption for c in part], steps=steps or cfg.steps, seed=seed + i))
    gen = np.concatenate(out).transpose(0, 2, 1, 3, 4)  # (n, F, 3, H, W)
    results = [M.adherence(g, c) for g, c in zip(gen, clips)]
    return {"split": split, "n": n, **M.aggregate(results), "by_motion": M.rates_by_motion(results, clips)}


def _ema_copy(cfg: WanTrainConfig, ema: dict) -> Pair:
    trunk, text, _ = build(cfg)
    m = Pair(trunk, text)
    m.load_state_dict(ema)
    return m.eval()


def train(cfg: WanTrainConfig, work: Path, out: Path | None = None, minutes: float | None = None,
          steps: int | None = None, ckpt_minutes: float = 5.0, threads: int | str | None = None, log=print,
          init: str | Path | None = None, samples: bool = True, probe_n: int = 16) -> dict:
    """Train (or resume) until ``minutes`` of wall time (this run) or ``steps`` total steps. ``threads``: a count,
    "auto" (zoo/train.py's ThreadTuner) or None (torch's default). Every checkpoint also generates ``probe_n``
    held-out clips with the EMA model and logs quality/motion.py's rates (0: no probe)."""
    from ..training import ThreadTuner

    tuner = ThreadTuner() if threads == "auto" else None
    if threads and not tuner:
        torch.set_num_threads(int(threads))
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    out = Path(out) if out else work / "model"
    trunk, text, _ = build(cfg)
    model = Pair(trunk, text).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ckpt, state = work / "ckpt.pt", {"step": 0, "seconds": 0.0, "losses": []}
    if ckpt.is_file():
        d = torch.load(ckpt, weights_only=False)
        if d["config"] != dataclasses.asdict(cfg):
            raise ConfigError(f"{work} holds a run with other settings; use another --work")
        model.load_state_dict(d["model"])
        opt.load_state_dict(d["opt"])
        ema, state = d["ema"], d["state"]
        log(f"resumed at step {state['step']}")
    elif init:
        init_from(model, init)
        ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
        log(f"starting from {init}")
    n_params = sum(p.numel() for p in model.trunk.parameters())
    log(f"wan-mini trunk {n_params / 1e6:.2f} M parameters, text encoder "
        f"{sum(p.numel() for p in model.text.parameters()) / 1e6:.2f} M; batch {cfg.batch}, "
        f"{torch.get_num_threads()} threads")
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
        export_model(out, cfg, em)
        _plot(work, state)
        caps = [c.caption for c in [C.sample_clip(np.random.default_rng([7, i]), "heldout") for i in range(6)]]
        if samples:
            save_sheet(sample(em, cfg, caps, steps=cfg.steps), caps, work / "samples.png")
        (work / "state.json").write_text(json.dumps({k: v for k, v in state.items() if k != "losses"}, indent=1))
        seen = (f"; probe on {probe_n} held-out clips: colour {pr['colour']:.2f}, motion {pr['motion']:.2f}"
                if pr else "")
        log(f"checkpoint step {state['step']}: held-out flow loss {hl:.4f}{seen}; exported {out}")

    t_start, last_ckpt = time.monotonic(), time.monotonic()
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
            loss = flow_loss(model, cfg, x0, caps, gen)
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
                    f"({(time.monotonic() - t_start) / max(1, state['step']):.2f} s/step this run)")
            if time.monotonic() - last_ckpt > ckpt_minutes * 60:
                state["seconds"] += time.monotonic() - last_ckpt
                last_ckpt = time.monotonic()
                checkpoint()
    finally:
        state["seconds"] += time.monotonic() - last_ckpt
        checkpoint(final=True)
    return state


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
    p.add_argument("--micro", action="store_true", help="a tiny config for tests")
    p.add_argument("--init", type=Path, help="an exported wan-mini folder to start from (same architecture)")
    p.add_argument("--no-samples", action="store_true", help="no sample sheet at checkpoints")
    p.add_argument("--probe", type=Path, metavar="MODEL_FOLDER",
                   help="generate --probe-n clips per split with an exported model, print the motion probe's rates")
    p.add_argument("--probe-n", type=int, default=16, help="clips per probe (--probe; and at every checkpoint)")
    p.add_argument("--time-steps", type=int, metavar="N",
                   help="print the median time of N training steps of this config as JSON and exit")
    a = p.parse_args(argv)
    if a.threads is not None and a.threads != "auto" and not a.threads.isdigit():
        p.error(f"--threads must be a count or 'auto', got {a.threads!r}")
    over = dict(MICRO) if a.micro else {}
    over.update({k: v for k, v in (("batch", a.batch), ("layers", a.layers)) if v is not None})
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
        print(json.dumps(time_steps(cfg, a.time_steps, int(a.threads) if a.threads not in (None, "auto") else None)))
        return 0
    if a.work is None:
        p.error("give --work")
    if a.minutes is None and a.steps is None:
        p.error("give --minutes or --steps")
    try:
        train(cfg, a.work, a.out, a.minutes, a.steps, a.ckpt_minutes, a.threads,
              log=lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", flush=True), init=a.init,
              samples=not a.no_samples, probe_n=a.probe_n)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
