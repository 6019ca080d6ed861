import csv
import dataclasses
import math

import numpy as np
import torch
from safetensors.torch import load_file

from ddit_export.models.registry import load_model
from ddit_export.zoo import train as T

MICRO = dataclasses.replace(T.TrainConfig(), **T.MICRO)


def _losses(work):
    with open(work / "loss.csv") as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]


def _generate(lm, prompts, steps=4):
    """Plain Euler through the LoadedModel contract (encode -> transformer at size 1 -> decode)."""
    from ddit_export.models.patching import image_ids

    geom = lm.geometry()
    cond = lm.encode(prompts)
    x = torch.randn(len(prompts), geom.tokens(), geom.token_channels, generator=torch.Generator().manual_seed(0))
    sig = torch.linspace(1, 0, steps + 1)
    with torch.no_grad():
        for i in range(steps):
            v = lm.transformer(x, cond.states, cond.pooled, sig[i].expand(len(prompts)), image_ids(geom.grid),
                               cond.txt_ids, grid=geom.grid)
            x = x + (sig[i + 1] - sig[i]) * v
    return lm.decode(x, geom)


def test_micro_run_writes_a_loadable_model(tmp_path):
    out, work = tmp_path / "model", tmp_path / "work"
    assert T.main(["--out", str(out), "--work", str(work), "--steps", "3", "--micro", "--threads", "1"]) == 0
    losses = _losses(work)
    assert [s for s, _ in losses] == [1, 2, 3] and all(math.isfinite(v) for _, v in losses)
    assert list(work.glob("samples_*.png"))
    lm = load_model(str(out))
    assert lm.name == "flux-mini" and (lm.default_height, lm.default_width) == (32, 32)
    images = _generate(lm, ["a large red circle in the center on a black background",
                            "a small blue square at the top left on a striped background"])
    assert [im.size for im in images] == [(32, 32)] * 2
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    assert size < 30e6


def test_resume_continues_from_the_saved_step(tmp_path):
    kw = dict(threads=1, progress=False, samples=False)
    T.train(MICRO, tmp_path / "a_out", tmp_path / "a", steps=2, **kw)
    state = T.train(MICRO, tmp_path / "a_out", tmp_path / "a", steps=4, **kw)
    assert state["step"] == 4
    assert [s for s, _ in _losses(tmp_path / "a")] == [1, 2, 3, 4]
    T.train(MICRO, tmp_path / "b_out", tmp_path / "b", steps=4, **kw)
    resumed = load_file(tmp_path / "a" / "ckpt" / "model.safetensors")
    straight = load_file(tmp_path / "b" / "ckpt" / "model.safetensors")
    for k in straight:
        torch.testing.assert_close(resumed[k], straight[k], rtol=1e-5, atol=1e-6)
    assert np.allclose([v for _, v in _losses(tmp_path / "a")], [v for _, v in _losses(tmp_path / "b")], atol=1e-4)
    # the exported model holds the EMA weights of step 4
    ema = load_file(tmp_path / "a" / "ckpt" / "ema.safetensors")
    exported = load_file(tmp_path / "a_out" / "transformer" / "diffusion_pytorch_model.safetensors")
    torch.testing.assert_close(exported["proj_out.weight"], ema["trunk.proj_out.weight"])


def test_saved_config_wins_on_resume(tmp_path):
    T.train(MICRO, tmp_path / "o", tmp_path / "w", steps=1, threads=1, progress=False, samples=False)
    state = T.train(T.TrainConfig(), tmp_path / "o", tmp_path / "w", steps=2, threads=1, progress=False,
                    samples=False)
    assert state["config"]["width"] == MICRO.width


def test_time_budget_stops(tmp_path):
    state = T.train(MICRO, tmp_path / "o", tmp_path / "w", minutes=1e-4, threads=1, progress=False, samples=False)
    assert 1 <= state["step"] < 1000 and (tmp_path / "o" / "ddit_model.json").is_file()


def test_lr_schedule():
    cfg = T.TrainConfig(lr=1e-3, warmup_steps=10, decay_frac=0.3, min_lr_frac=0.05)
    assert T.lr_at(cfg, 0, 0.0) < T.lr_at(cfg, 5, 0.0) < T.lr_at(cfg, 9, 0.0) == cfg.lr
    assert T.lr_at(cfg, 100, 0.7) == cfg.lr
    assert math.isclose(T.lr_at(cfg, 100, 1.0), cfg.lr * 0.05)
    assert T.lr_at(cfg, 100, 0.8) > T.lr_at(cfg, 100, 0.9)


def test_timesteps_match_the_sampler_shift():
    cfg = T.TrainConfig()
    assert math.isclose(cfg.mu, 0.5)  # calculate_shift at 256 tokens = base_shift
    s = T.sample_sigmas(cfg, 10000, torch.Generator().manual_seed(0))
    assert 0 < s.min() and s.max() < 1 and s.median() > 0.55  # shifted towards noise, like the sampler


def test_default_config_size():
    trunk, text, _ = T.build(T.TrainConfig())
    n = sum(p.numel() for p in trunk.parameters()) + sum(p.numel() for p in text.parameters())
    assert 1e6 < n < 4e6 and n * 4 < 30e6
    assert trunk.config.in_channels == 12 and not trunk.config.guidance_embeds


def test_thread_tuner_prefers_the_faster_setting():
    tuner = T.ThreadTuner(probe=3, keep=10)
    picks = []
    for _ in range(60):
        c = tuner.before_step()
        picks.append(c)
        tuner.after_step(0.1 if c == 1 else 1.0)
    torch.set_num_threads(2)
    assert picks[-30:].count(1) > 25


# ---- progressive multi-resolution training (issue 11) --------------------------------------------------------
MIX = dataclasses.replace(MICRO, side=64, mix=(32, 64), name="mini-64")


def test_mix_cycles_resolutions_and_shifts_sigmas_per_token_count():
    assert [MIX.side_at(i) for i in range(4)] == [32, 64, 32, 64] and MICRO.sides == (32,)
    x32, _, g32 = T.batch_at(MIX, 0)
    x64, _, g64 = T.batch_at(MIX, 1)
    assert (g32, x32.shape[1]) == ((16, 16), 256) and (g64, x64.shape[1]) == ((32, 32), 1024)
    assert MIX.mu_at(64) > MIX.mu_at(32) == MICRO.mu  # more tokens: a larger time shift, as FluxPipeline's
    u = T.sample_sigmas(MIX, 512, torch.Generator().manual_seed(0), 64)
    v = T.sample_sigmas(MIX, 512, torch.Generator().manual_seed(0), 32)
    assert (u > v).all()


def test_prefetch_workers_give_the_inline_batches():
    data = T.Prefetch(MIX, 3, workers=1, ahead=2)
    try:
        for step in (3, 4, 5):
            x, caps, grid = data.get(step)
            y, caps2, grid2 = T.batch_at(MIX, step)
            assert torch.equal(x, y) and caps == caps2 and grid == grid2
    finally:
        data.close()


def test_mixed_run_from_an_init_folder(tmp_path):
    kw = dict(threads=1, progress=False, samples=False)
    T.train(MICRO, tmp_path / "base", tmp_path / "w0", steps=2, **kw)
    init = dataclasses.replace(MIX, init=str(tmp_path / "base"), lr=1e-12, warmup_steps=1)
    T.train(init, tmp_path / "m64", tmp_path / "w1", steps=2, **kw)
    base = load_file(tmp_path / "base" / "transformer" / "diffusion_pytorch_model.safetensors")
    cont = load_file(tmp_path / "m64" / "transformer" / "diffusion_pytorch_model.safetensors")
    for k in base:  # lr ~ 0: the run starts from (and stays at) the init weights
        torch.testing.assert_close(cont[k], base[k], rtol=1e-4, atol=1e-6)
    lm = load_model(str(tmp_path / "m64"))
    assert lm.name == "mini-64" and (lm.default_height, lm.default_width) == (64, 64)
    meta = (tmp_path / "m64" / "ddit_model.json").read_text()
    assert '"trained_resolutions"' in meta and "32" in meta
    with open(tmp_path / "w1" / "eval.csv") as f:
        assert set(next(csv.DictReader(f))) >= {"heldout_32_loss", "heldout_64_loss"}


def test_init_with_another_architecture_is_refused(tmp_path):
    import pytest

    T.train(MICRO, tmp_path / "base", tmp_path / "w0", steps=1, threads=1, progress=False, samples=False)
    wide = dataclasses.replace(MICRO, width=48, axes_dims_rope=(8, 8, 8), init=str(tmp_path / "base"))
    with pytest.raises(ValueError, match="architecture differs"):
        T.train(wide, tmp_path / "o", tmp_path / "w1", steps=1, threads=1, progress=False, samples=False)
    with pytest.raises(FileNotFoundError, match="not a pixel-model folder"):
        T.init_from(T.Pair(*T.build(MICRO)[:2]), tmp_path)
