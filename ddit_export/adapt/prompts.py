"""Training prompts: scene captions or a prompts file (vocabulary-checked), encoded once into a bank."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, VocabularyError
from ..settings import AdaptSettings


def scene_prompts(n: int, seed: int, max_words: int | None = None) -> list[str]:
    """``n`` captions of the procedural scene grammar (train split), at most ``max_words`` words each."""
    from ..zoo import scenes

    rng = np.random.default_rng([seed, 0xADA])
    out: list[str] = []
    while len(out) < n:
        _, caps, _ = scenes.make_batch(rng, max(8, n - len(out)), "train", side=8)
        out += [c for c in caps if max_words is None or len(c.split()) <= max_words]
    return out[:n]


def clip_prompts(n: int, seed: int, max_words: int | None = None) -> list[str]:
    """``n`` captions of the procedural video clip grammar (zoo/clips.py, train split) for a video model."""
    from ..zoo import clips

    rng = np.random.default_rng([seed, 0xADA])
    out: list[str] = []
    while len(out) < n:
        c = clips.sample_clip(rng, "train").caption
        if max_words is None or len(c.split()) <= max_words:
            out.append(c)
    return out


def read_prompts(path: str | Path) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"prompts file not found: {p}")
    prompts = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
    prompts = [ln for ln in prompts if ln and not ln.startswith("#")]
    if not prompts:
        raise ConfigError(f"prompts file {p} has no prompts")
    return prompts


def check_vocabulary(loaded, prompts: list[str], source: str):
    """Pixel models: every word must be known; the error names the unknown words and their lines."""
    text = loaded.extras.get("text_encoder")
    if text is None:
        return
    from ..models.text import tokenize, words_of

    vocab, max_len = set(text.config.vocab), text.config.max_length
    unknown: dict[str, list[int]] = {}
    for i, prompt in enumerate(prompts):
        try:
            words = words_of(prompt)
        except VocabularyError as e:
            raise VocabularyError(f"{source}, line {i + 1}: {e}") from None
        for w in words:
            if w not in vocab:
                unknown.setdefault(w, []).append(i + 1)
    if unknown:
        lines = sorted({n for v in unknown.values() for n in v})
        shown = ", ".join(map(str, lines[:5])) + (" ..." if len(lines) > 5 else "")
        raise VocabularyError(f"{source}, line(s) {shown}: words not in the model's vocabulary: "
                              f"{', '.join(sorted(unknown)[:20])}")
    for i, prompt in enumerate(prompts):
        try:
            tokenize(text.config.vocab, max_len, [prompt])
        except VocabularyError as e:
            raise VocabularyError(f"{source}, line {i + 1}: {e}") from None


def training_prompts(s: AdaptSettings, loaded) -> tuple[list[str], list[str]]:
    """(train prompts, eval prompts). Eval: fresh scene captions, or the file's first prompts with other seeds."""
    if s.prompts_file:
        prompts = read_prompts(s.prompts_file)
        check_vocabulary(loaded, prompts, str(s.prompts_file))
        if s.num_prompts:
            prompts = prompts[: s.num_prompts]
        return prompts, prompts[: max(1, min(16, len(prompts)))]
    text = loaded.extras.get("text_encoder")
    if text is None:
        raise ConfigError(f"--model {s.model} needs --prompts FILE (one prompt a line): the scene captions are "
                          f"for the pixel models")
    max_words = text.config.max_length
    captions = clip_prompts if getattr(loaded, "family", "flux") == "wan" else scene_prompts
    train = captions(s.num_prompts or 512, s.seed, max_words)
    evals = captions(16, s.seed + 7919, max_words)
    try:
        check_vocabulary(loaded, train[:64] + evals, "scene captions")
    except VocabularyError as e:
        raise ConfigError(f"{e}; give --prompts FILE with words this model knows") from None
    return train, evals


@dataclass
class PromptBank:
    """Every prompt's conditioning, encoded once (host memory), gathered per batch."""

    states: torch.Tensor  # (P, L, D)
    pooled: torch.Tensor | None  # (P, D'); None for Wan (no pooled vector)
    txt_ids: torch.Tensor | None  # (L, 3); None for Wan

    @classmethod
    def encode(cls, loaded, prompts: list[str], chunk: int = 64) -> "PromptBank":
        states, pooled, ids = [], [], None
        for i in range(0, len(prompts), chunk):
            c = loaded.encode(prompts[i:i + chunk])
            states.append(c.states.detach().cpu())
            if c.pooled is not None:
                pooled.append(c.pooled.detach().cpu())
            ids = None if c.txt_ids is None else c.txt_ids.detach().cpu()
        return cls(torch.cat(states), torch.cat(pooled) if pooled else None, ids)

    def take(self, idx: torch.Tensor, device):
        from ..models.registry import Conditioning

        return Conditioning(self.states[idx].to(device),
                            None if self.pooled is None else self.pooled[idx].to(device),
                            None if self.txt_ids is None else self.txt_ids.to(device))
