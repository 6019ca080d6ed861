"""Continuing a scene model on the graded grammar: graded batches in train.py, and the grown text encoder."""
import csv
import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ddit_export.models.registry import load_model
from ddit_export.models.text import words_of
from ddit_export.zoo import grow, scenes as S, train as T

MICRO = dataclasses.replace(T.TrainConfig(), **T.MICRO)
GRADED = dataclasses.replace(MICRO, graded_frac=0.5, max_words=S.GRADED_MAX_WORDS)
KW = dict(threads=1, progress=False, samples=False)


def test_no_graded_batches_by_default_and_other_steps_unchanged():
    assert T.TrainConfig().graded_frac == 0
    graded_steps = [s for s in range(40) if grow.is_graded_step(GRADED.seed, s, GRADED.graded_frac)]
    assert 8 < len(graded_steps) < 32
    for step in range(12):
        x, caps, grid = T.batch_at(MICRO, step)
        ref, ref_caps, _ = S.make_batch(np.random.default_rng([MICRO.seed, step]), MICRO.batch, side=32)
        assert caps == ref_caps  # graded_frac 0: today's batches exactly
        y, caps2, _ = T.batch_at(GRADED, step)
        if step in graded_steps:
            assert caps2 != caps and all(set(words_of(c)) <= set(S.GRADED_VOCAB) for c in caps2)
        else:
            assert caps2 == caps and torch.equal(x, y)
    _, many, _ = T.batch_at(dataclasses.replace(GRADED, batch=64), graded_steps[0])
    assert max(len(c.split()) for c in many) > 40  # graded captions run past 40 words


def test_graded_batches_need_the_longer_text():
    with pytest.raises(ValueError, match="max_words"):
        T.build(dataclasses.replace(MICRO, graded_frac=0.5))
    trunk, text, _ = T.build(GRADED)
    assert list(text.config.vocab) == S.GRADED_VOCAB and text.config.max_length == S.GRADED_MAX_WORDS


def test_grown_text_encoder_starts_from_the_old_rows(tmp_path):
    T.train(MICRO, tmp_path / "base", tmp_path / "w0", steps=2, **KW)
    base_text = load_file(tmp_path / "base" / "text_encoder" / "diffusion_pytorch_model.safetensors")
    base_trunk = load_file(tmp_path / "base" / "transformer" / "diffusion_pytorch_model.safetensors")
    cfg = dataclasses.replace(GRADED, init=str(tmp_path / "base"))
    model = T.Pair(*T.build(cfg)[:2])
    T.init_from(model, tmp_path / "base")
    st = model.state_dict()
    for k, v in base_trunk.items():
        assert torch.equal(st["trunk." + k], v), k
    for k, v in base_text.items():
        if k not in ("tok.weight", "pos.weight"):
            assert torch.equal(st["text." + k], v), k
    tok, pos = st["text.tok.weight"], st["text.pos.weight"]
    n_old = len(S.TINY_VOCAB) + 1
    assert tok.shape[0] == len(S.GRADED_VOCAB) + 1 and pos.shape[0] == S.GRADED_MAX_WORDS
    assert torch.equal(tok[:n_old], base_text["tok.weight"]) and torch.equal(pos[:40], base_text["pos.weight"])
    mean = base_text["tok.weight"][1:].mean(0)
    for row in tok[n_old:]:  # new words: near the mean word, not a copy of any word, not equal to each other
        assert (row - mean).norm() < 0.5 * (base_text["tok.weight"][1:] - mean).norm(dim=1).mean()
    assert not torch.equal(tok[n_old], tok[n_old + 1])
    assert (pos[40:] - pos[39]).norm(dim=1).max() < 0.5 * pos[:40].std() * pos.shape[1] ** 0.5

    # the same through a run (lr ~ 0): it starts from, and stays at, the old weights; resumable; graded losses
    cfg = dataclasses.replace(cfg, lr=1e-12, warmup_steps=1, graded_frac=1.0)
    state = T.train(cfg, tmp_path / "cont", tmp_path / "w1", steps=2, **KW)
    assert state["config"]["graded_frac"] == 1.0
    cont = load_file(tmp_path / "cont" / "text_encoder" / "diffusion_pytorch_model.safetensors")
    torch.testing.assert_close(cont["tok.weight"][:n_old], base_text["tok.weight"], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(cont["pos.weight"][:40], base_text["pos.weight"], rtol=1e-4, atol=1e-6)
    assert T.train(cfg, tmp_path / "cont", tmp_path / "w1", steps=3, **KW)["step"] == 3
    with open(tmp_path / "w1" / "eval.csv") as f:
        assert "graded_loss" in next(csv.DictReader(f))
    lm = load_model(str(tmp_path / "cont"))
    cond = lm.encode(["a small red circle at the top left on a checkered background"])
    assert cond.states.shape[1] == S.GRADED_MAX_WORDS
    meta = json.loads((tmp_path / "cont" / "text_encoder" / "config.json").read_text())
    assert meta["vocab"] == S.GRADED_VOCAB


def test_grow_refuses_to_drop_words_or_positions():
    state = {"tok.weight": torch.randn(4, 3), "pos.weight": torch.randn(5, 3)}
    with pytest.raises(ValueError, match="drop words: b"):
        grow.grow_text_state(state, ["a", "b", "c"], ["a", "c", "d"], 5)
    with pytest.raises(ValueError, match="shrink"):
        grow.grow_text_state(state, ["a", "b", "c"], ["a", "b", "c"], 4)
    out = grow.grow_text_state(state, ["a", "b", "c"], ["c", "a", "b", "z"], 7)  # re-indexed by word
    assert torch.equal(out["tok.weight"][1], state["tok.weight"][3])
    assert torch.equal(out["tok.weight"][2], state["tok.weight"][1])
    assert torch.equal(out["tok.weight"][0], state["tok.weight"][0])
    assert out["pos.weight"].shape == (7, 3) and torch.equal(out["pos.weight"][:5], state["pos.weight"])


def test_cli_sets_the_graded_text_length(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(T, "train", lambda cfg, *a, **k: seen.setdefault("cfg", cfg) and {"step": 0})
    T.main(["--out", str(tmp_path / "o"), "--work", str(tmp_path / "w"), "--steps", "1", "--micro",
            "--graded-frac", "0.3"])
    assert seen["cfg"].graded_frac == 0.3 and seen["cfg"].max_words == S.GRADED_MAX_WORDS
