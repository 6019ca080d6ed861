"""wan-mini, the video model the zoo trains: its run configuration (:class:`WanTrainConfig`), the fresh Wan trunk +
text encoder (:func:`build`), the pair trained as one module, the sampler, the contact sheet, and the export to and
from a pixel video model folder. ``train_wan.py`` holds the data, the objective, the probe and the loop.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from . import clips as C

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
    two_shape: float = C.TWO_SHAPE  # share of two-shape clips in the training batches (held-out ones keep 0.3)
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
def save_sheet(clips: np.ndarray, captions, path: Path, scale: int = 3):
    """Rows of frames, one clip a row (for a quick look at the samples)."""
    from PIL import Image

    n, _, f, h, w = clips.shape
    sheet = ((clips.transpose(0, 3, 2, 4, 1).reshape(n * h, f * w, 3) + 1) * 127.5).clip(0, 255).astype(np.uint8)
    Image.fromarray(sheet).resize((f * w * scale, n * h * scale), Image.NEAREST).save(path)
    path.with_suffix(".txt").write_text("\n".join(captions) + "\n")


def export_model(out: Path, cfg: WanTrainConfig, model: Pair, training: dict | None = None):
    """The EMA weights as a pixel video folder (format in models/registry.py), written beside and renamed.
    ``training``: the weights' training record (:func:`lineage`), kept in ``ddit_model.json``."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.trunk.save_pretrained(tmp / "transformer")
    model.text.save_pretrained(tmp / "text_encoder")
    FlowMatchEulerDiscreteScheduler(shift=cfg.shift, use_dynamic_shifting=False).save_pretrained(tmp / "scheduler")
    meta = {"format": VIDEO_FORMAT, "name": cfg.name, "height": cfg.side, "width": cfg.side, "frames": cfg.frames,
            "steps": cfg.steps, "prompt": "a large red circle moving right on a black background"}
    if training:
        meta["training"] = training
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


def lineage(folder) -> dict:
    """The training record an exported folder carries (``ddit_model.json``, field ``training``): ``steps`` and
    ``clips`` in all (every run that made these weights), and ``runs``, one entry per run (its steps, batch, seconds,
    device, the held-out flow loss it started from and ended at). ``{}`` for a folder without one. A run started with
    ``--init`` continues the record, so weights continued over many sessions say how much training they hold."""
    meta = Path(folder) / "ddit_model.json"
    return dict(json.loads(meta.read_text()).get("training") or {}) if meta.is_file() else {}


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
