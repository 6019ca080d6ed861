"""Continue a scene model on the graded grammar (issue 19): graded batches, and a text encoder grown to read it.

A model trained on today's grammar has ``TINY_VOCAB`` and 40 positions; the graded grammar needs the fine textures'
words (``GRADED_VOCAB`` appends them, so every old word keeps its id) and captions of up to 71 words
(``GRADED_MAX_WORDS`` = 72 positions). :func:`grow_text_state` maps an old text encoder's token and position tables
onto the new sizes: every old row is copied exactly (by word, so a reordered vocabulary would still be right), a
new word's row is the mean of the old word rows, a new position's row is the last old position's, each plus a
small deterministic perturbation so the new rows are not identical. Every other tensor of the model is untouched.

Note for whoever continues a shipped model: the text states are padded to ``max_length`` and the trunk attends to
the padding (zero states after the context embedder are one repeated key), so 72 positions instead of 40 change a
40-position model's output on old captions slightly even with the old rows copied; the continued training absorbs it.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from . import scenes

NEW_ROW_NOISE = 0.1  # std of the perturbation of a new row, relative to the std of the old rows
GRADED_SAMPLE_PROMPTS = [
    "a large blue circle in the center on a checkered background",
    "a medium red square at the top left and a small yellow triangle at the bottom right on a pinstriped "
    "background",
    " and ".join(f"a small {c} {s} at the {p}" for c, s, p in (
        ("red", "circle", "top left"), ("green", "square", "top"), ("blue", "triangle", "top right"),
        ("yellow", "circle", "left"), ("purple", "square", "right"), ("orange", "triangle", "bottom left"),
        ("white", "circle", "bottom"))) + " on a gray background",
    "a small white circle at the top and a small black square at the left and a small red triangle at the right "
    "and a small blue circle at the bottom right and a small green square at the bottom on a checkered background",
]


def is_graded_step(seed: int, step: int, frac: float) -> bool:
    """Whether the batch of ``step`` comes from the graded grammar: a coin of probability ``frac`` from its own
    generator, so every other step's batch is the one a run without graded batches draws."""
    return frac > 0 and np.random.default_rng([seed, step, 19]).random() < frac


def graded_batch(rng: np.random.Generator, n: int, split: str, side: int):
    """(images, captions, scenes) of ``n`` graded-grammar scenes, each of a detail grade drawn uniformly."""
    sc = [scenes.sample_graded(rng, int(rng.choice(scenes.GRADES)), split) for _ in range(n)]
    images = np.stack([s.render(side) for s in sc]) if sc else np.zeros((0, 3, side, side), np.float32)
    return images, [s.caption for s in sc], sc


def text_config(folder: str | Path) -> dict:
    """A pixel-model folder's text-encoder config (vocab, max_length, ...)."""
    f = Path(folder) / "text_encoder" / "config.json"
    if not f.is_file():
        raise FileNotFoundError(f"--init {folder}: no text_encoder/config.json (not a pixel-model folder)")
    return json.loads(f.read_text())


def grow_text_state(state: dict, old_vocab: list[str], new_vocab: list[str], new_max_length: int,
                    prefix: str = "", seed: int = 0) -> dict:
    """``state`` (a text encoder's tensors, keys under ``prefix``) with ``tok.weight`` re-indexed to ``new_vocab``
    and ``pos.weight`` grown to ``new_max_length`` rows (see the module docstring). Raises ValueError when a word
    would be dropped or the position table would shrink."""
    tok_k, pos_k = prefix + "tok.weight", prefix + "pos.weight"
    tok, pos = state[tok_k], state[pos_k]
    lost = sorted(set(old_vocab) - set(new_vocab))
    if lost:
        raise ValueError(f"growing the text encoder would drop words: {', '.join(lost)}")
    if new_max_length < pos.shape[0]:
        raise ValueError(f"growing the text encoder cannot shrink its positions ({pos.shape[0]} -> {new_max_length})")
    if tok.shape[0] != len(old_vocab) + 1:
        raise ValueError(f"text encoder has {tok.shape[0]} token rows for {len(old_vocab)} words + padding")
    g = torch.Generator().manual_seed(seed)
    old_id = {w: i + 1 for i, w in enumerate(old_vocab)}
    words = tok[1:]
    new_tok = torch.empty(len(new_vocab) + 1, tok.shape[1], dtype=tok.dtype)
    new_tok[0] = tok[0]  # padding
    for i, w in enumerate(new_vocab):
        if w in old_id:
            new_tok[i + 1] = tok[old_id[w]]
        else:
            new_tok[i + 1] = words.mean(0) + NEW_ROW_NOISE * words.std() * torch.randn(tok.shape[1], generator=g)
    n_old = pos.shape[0]
    extra = new_max_length - n_old
    new_pos = torch.cat([pos, pos[-1:].expand(extra, -1)
                         + NEW_ROW_NOISE * pos.std() * torch.randn(extra, pos.shape[1], generator=g)])
    return {**state, tok_k: new_tok, pos_k: new_pos.to(pos.dtype)}


def init_from(model, folder: str | Path):
    """Load a pixel-model folder's trunk and text encoder into ``model`` (a train.Pair; progressive training starts
    here); a text encoder with fewer words or positions than ``model``'s grows (:func:`grow_text_state`)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    files = {"trunk": folder / "transformer" / "diffusion_pytorch_model.safetensors",
             "text": folder / "text_encoder" / "diffusion_pytorch_model.safetensors"}
    state = {}
    for prefix, f in files.items():
        if not f.is_file():
            raise FileNotFoundError(f"--init {folder}: no {f.relative_to(folder)} (not a pixel-model folder)")
        state.update({f"{prefix}.{k}": v for k, v in load_file(f).items()})
    own, text = model.state_dict(), model.text.config
    old = text_config(folder)
    if (old["vocab"], old["max_length"]) != (list(text.vocab), text.max_length):  # graded grammar: grow the text
        state = grow_text_state(state, old["vocab"], list(text.vocab), text.max_length, "text.")
    bad = sorted(k for k in own if k not in state or state[k].shape != own[k].shape)
    if bad:
        raise ValueError(f"--init {folder}: its architecture differs from this run's config "
                         f"({len(bad)} tensors missing or of another shape, e.g. {bad[0]})")
    model.load_state_dict({k: state[k] for k in own})
