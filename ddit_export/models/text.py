"""A small word-level text encoder for pixel-space models (the tiny preset and flux-mini).

It produces what FLUX's transformer takes from its text encoders: per-token states (B, L, joint_attention_dim)
and a pooled vector (B, pooled_projection_dim). FLUX gives text tokens RoPE position 0, so word order must live
in the states themselves: a learned position embedding and one self-attention layer bind "red" to "circle".
Saved and loaded with diffusers' ``save_pretrained``/``from_pretrained`` like every other model here.
"""
from __future__ import annotations

import re

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..errors import VocabularyError

_WORD = re.compile(r"[a-z]+")
# Between words only spaces and common punctuation; anything else (a digit, a symbol, an accented letter) would be
# dropped without a word, so it is an error instead.
_OTHER = re.compile(r"""[^a-z\s.,;:!?'"()\-]""")


def words_of(prompt: str) -> list[str]:
    """The lower-cased words (runs of a-z) of a prompt; VocabularyError names any other character but spaces and
    punctuation (. , ; : ! ? ' " ( ) -), which would otherwise vanish silently ("3 cats" is not "cats")."""
    low = prompt.lower()
    odd = sorted(set(_OTHER.findall(low)))
    if odd:
        raise VocabularyError(f"prompt {prompt!r} has characters this model's word tokenizer cannot read: "
                              f"{' '.join(repr(c) for c in odd)} (it reads words of the letters a-z; spell "
                              f"numbers out)")
    return _WORD.findall(low)


def tokenize(vocab: list[str], max_length: int, prompts: list[str]):
    """Word ids (B, L) int64 and mask (B, L) bool as numpy; raises VocabularyError naming unknown words.
    Id 0 is padding; word i of ``vocab`` has id i + 1 (the text encoder's embedding table and ONNX graph agree)."""
    import numpy as np

    word_to_id = {w: i + 1 for i, w in enumerate(vocab)}
    rows = [words_of(p) for p in prompts]
    unknown = sorted({w for r in rows for w in r if w not in word_to_id})
    if unknown:
        raise VocabularyError(f"words not in the model's vocabulary: {', '.join(unknown)}")
    too_long = [len(r) for r in rows if len(r) > max_length]
    if too_long:
        raise VocabularyError(f"prompt has {max(too_long)} words; this model reads at most {max_length}")
    if any(not r for r in rows):
        raise VocabularyError("empty prompt")
    ids = np.zeros((len(rows), max_length), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = [word_to_id[w] for w in r]
    return ids, ids != 0


class WordTextEncoder(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, vocab: list[str], max_length: int = 24, dim: int = 64, joint_attention_dim: int = 64,
                 pooled_projection_dim: int = 64, num_heads: int = 4, num_layers: int = 1):
        super().__init__()
        self.tok = nn.Embedding(len(vocab) + 1, dim)  # id 0 is padding
        self.pos = nn.Embedding(max_length, dim)
        layer = nn.TransformerEncoderLayer(dim, num_heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.to_states = nn.Linear(dim, joint_attention_dim)
        self.to_pooled = nn.Linear(dim, pooled_projection_dim)

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Word ids (B, L) and mask (B, L); raises VocabularyError naming unknown words."""
        ids, mask = tokenize(self.config.vocab, self.config.max_length, prompts)
        return torch.from_numpy(ids), torch.from_numpy(mask)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor):
        pos = torch.arange(ids.shape[1], device=ids.device)
        h = self.encoder(self.tok(ids) + self.pos(pos)[None], src_key_padding_mask=~mask)
        m = mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1)
        return self.to_states(h) * m, self.to_pooled(pooled)

    def encode(self, prompts: list[str]):
        ids, mask = self.tokenize(prompts)
        ids, mask = ids.to(self.device), mask.to(self.device)
        return self(ids, mask)
