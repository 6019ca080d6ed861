"""flux-mini, the model the zoo trains: its run configuration (:class:`TrainConfig`), the fresh trunk + text
encoder + scheduler (:func:`build`), the pair trained as one module, the progress-grid sampler and the export of
the EMA weights as a pixel-model folder. ``train.py`` holds the data, the objective, checkpoints and the loop.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..fsutil import check_replaceable, replace_dir, temp_dir_for
from ..models.patching import image_ids
from ..models.registry import PIXEL_META, TINY_VOCAB, save_pixel_model
from ..shapes import TokenGeometry
from . import scenes

SAMPLE_PROMPTS = [
    "a large red circle in the center on a black background",
    "a medium blue square at the top left on a white background",
    "a large yellow triangle at the bottom on a gray background",
    "a small green circle at the top right on a gradient background",
    "a large purple square at the left and a small orange circle at the right on a black background",
    "a medium white triangle at the top and a medium red square at the bottom on a striped background",
    "a small blue circle at the top left and a small red square at the bottom right and "
    "a medium yellow triangle in the center on a gray background",
    "a large orange circle at the top right on a striped background",
]


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run; saved in ``state.json`` and checked on resume."""

    # model
    width: int = 128
    heads: int = 4
    double_blocks: int = 2
    single_blocks: int = 2
    axes_dims_rope: tuple[int, int, int] = (8, 12, 12)
    text_dim: int = 64
    text_layers: int = 1
    text_heads: int = 4
    max_words: int = 40
    side: int = 32  # the resolution the exported model defaults to
    mix: tuple[int, ...] = ()  # training resolutions, cycled step by step (e.g. (32, 64)); empty: (side,)
    name: str = "flux-mini"  # the exported model's name
    init: str | None = None  # a pixel-model folder to start from (progressive training), else a fresh init
    graded_frac: float = 0.0  # batches from the graded grammar (zoo/grow.py; GRADED_VOCAB); 0: today's scenes only
    # optimisation
    batch: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 200
    decay_frac: float = 0.3
    min_lr_frac: float = 0.05
    grad_clip: float = 1.0
    ema: float = 0.999
    seed: int = 0
    # sampler the model ships with
    base_shift: float = 0.5
    max_shift: float = 1.15
    base_seq_len: int = 256
    max_seq_len: int = 4096
    sample_steps: int = 28

    @property
    def sides(self) -> tuple[int, ...]:
        """The training resolutions in cycle order (step ``i`` trains at ``sides[i % len(sides)]``)."""
        return tuple(self.mix) or (self.side,)

    @property
    def mu(self) -> float:
        """FluxPipeline's ``calculate_shift`` at this model's token count."""
        return self.mu_at(self.side)

    def mu_at(self, side: int) -> float:
        n = (side // 2) ** 2
        m = (self.max_shift - self.base_shift) / (self.max_seq_len - self.base_seq_len)
        return n * m + self.base_shift - m * self.base_seq_len

    def side_at(self, step: int) -> int:
        return self.sides[step % len(self.sides)]


MICRO = dict(width=32, heads=2, double_blocks=1, single_blocks=1, axes_dims_rope=(4, 6, 6), text_dim=16,
             text_heads=2, batch=4, warmup_steps=2)


def build(cfg: TrainConfig):
    """Fresh (trunk, text encoder, scheduler) for ``cfg``, seeded."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    from ..models.text import WordTextEncoder

    if cfg.width % cfg.heads or sum(cfg.axes_dims_rope) != cfg.width // cfg.heads:
        raise ValueError(f"axes_dims_rope {cfg.axes_dims_rope} must sum to the head dim {cfg.width // cfg.heads}")
    torch.manual_seed(cfg.seed)
    trunk = FluxTransformer2DModel(patch_size=1, in_channels=12, num_layers=cfg.double_blocks,
                                   num_single_layers=cfg.single_blocks, attention_head_dim=cfg.width // cfg.heads,
                                   num_attention_heads=cfg.heads, joint_attention_dim=cfg.width,
                                   pooled_projection_dim=cfg.width, guidance_embeds=False,
                                   axes_dims_rope=tuple(cfg.axes_dims_rope))
    if cfg.graded_frac > 0 and cfg.max_words < scenes.GRADED_MAX_WORDS:
        raise ValueError(f"graded batches need max_words >= {scenes.GRADED_MAX_WORDS}, got {cfg.max_words}")
    vocab = scenes.GRADED_VOCAB if cfg.graded_frac > 0 else TINY_VOCAB
    text = WordTextEncoder(vocab=list(vocab), max_length=cfg.max_words, dim=cfg.text_dim,
                           joint_attention_dim=cfg.width, pooled_projection_dim=cfg.width,
                           num_heads=cfg.text_heads, num_layers=cfg.text_layers)
    sched = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=True, base_shift=cfg.base_shift,
                                            max_shift=cfg.max_shift, base_image_seq_len=cfg.base_seq_len,
                                            max_image_seq_len=cfg.max_seq_len)
    return trunk, text, sched


class Pair(torch.nn.Module):
    """Trunk + text encoder as one module, so weights, EMA and optimizer state share one name space."""

    def __init__(self, trunk, text):
        super().__init__()
        self.trunk, self.text = trunk, text

    def velocity(self, x, s, prompts_or_ids, grid):
        ids, mask = prompts_or_ids if isinstance(prompts_or_ids, tuple) else self.text.tokenize(prompts_or_ids)
        dev = x.device
        states, pooled = self.text(ids.to(dev), mask.to(dev))
        txt_ids = torch.zeros(states.shape[1], 3, device=dev)
        return self.trunk(hidden_states=x, encoder_hidden_states=states, pooled_projections=pooled, timestep=s,
                          img_ids=image_ids(grid, device=dev), txt_ids=txt_ids, return_dict=False)[0]


# ---- sampling (for progress grids; the runtime has its own) ------------------------------------------------
@torch.no_grad()
def generate(model: Pair, sched, prompts, side: int, steps: int, seed: int = 0) -> np.ndarray:
    """28-step Euler with the shipped scheduler; returns (n, 3, side, side) in [-1, 1]."""
    from ..images import unpack

    geom = TokenGeometry(side, side, 1, 3)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(len(prompts), geom.tokens(), geom.token_channels, generator=gen)
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=float(_mu_of(sched, geom.tokens())))
    sig = sched.sigmas
    for i in range(steps):
        v = model.velocity(x, sig[i].expand(len(prompts)), prompts, geom.grid)
        x = x + (sig[i + 1] - sig[i]) * v
    return unpack(x, geom).clamp(-1, 1).numpy()


def _mu_of(sched, n_tokens: int) -> float:
    c = sched.config
    m = (c.max_shift - c.base_shift) / (c.max_image_seq_len - c.base_image_seq_len)
    return n_tokens * m + c.base_shift - m * c.base_image_seq_len


def save_grid(images: np.ndarray, path: Path, cols: int = 4, scale: int = 4):
    from PIL import Image

    n, _, h, w = images.shape
    rows = -(-n // cols)
    pad = np.zeros((rows * cols - n, 3, h, w), np.float32)
    x = ((np.concatenate([images, pad]) + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
    g = x.reshape(rows, cols, 3, h, w).transpose(0, 3, 1, 4, 2).reshape(rows * h, cols * w, 3)
    Image.fromarray(g).resize((cols * w * scale, rows * h * scale), Image.NEAREST).save(path)


def export_model(out: Path, cfg: TrainConfig, ema: dict, sched):
    """Write the EMA weights as a pixel-model folder loadable by ``load_model``."""
    trunk, text, _ = build(cfg)
    pair = Pair(trunk, text)
    pair.load_state_dict(ema)
    out = Path(out)
    owned = lambda d: (d / PIXEL_META).is_file()  # noqa: E731
    check_replaceable(out, owned, "model folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir_for(out)
    try:
        multi = len(set(cfg.sides)) > 1 or cfg.sides[0] != cfg.side
        save_pixel_model(tmp, trunk, text, sched, name=cfg.name, height=cfg.side, width=cfg.side,
                         steps=cfg.sample_steps,
                         trained_resolutions=[(r, r) for r in sorted(set(cfg.sides))] if multi else None)
        replace_dir(tmp, out, owned)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
