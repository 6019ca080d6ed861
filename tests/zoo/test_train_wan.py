import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ddit_export.zoo import clips as C
from ddit_export.zoo import train_wan as W

MICRO = W.WanTrainConfig(**W.MICRO)


def _quiet(*a):
    pass


def test_micro_run_exports_a_pixel_video_folder(tmp_path):
    from diffusers import FlowMatchEulerDiscreteScheduler, WanTransformer3DModel

    from ddit_export.models.text import WordTextEncoder

    work = tmp_path / "work"
    assert W.main(["--work", str(work), "--steps", "3", "--micro", "--threads", "1"]) == 0
    out = work / "model"
    meta = json.loads((out / "ddit_model.json").read_text())
    assert meta["format"] == "ddit-pixel-video/1" and meta["name"] == "wan-mini"
    assert (meta["frames"], meta["height"], meta["width"]) == (MICRO.frames, MICRO.side, MICRO.side)
    assert set(C.caption_words()) >= {w for w in meta["prompt"].split()}
    trunk = WanTransformer3DModel.from_pretrained(out / "transformer")
    assert trunk.config.in_channels == trunk.config.out_channels == 3 and tuple(trunk.config.patch_size) == (2, 4, 4)
    text = WordTextEncoder.from_pretrained(out / "text_encoder")
    assert text.config.joint_attention_dim == trunk.config.text_dim
    sched = FlowMatchEulerDiscreteScheduler.from_pretrained(out / "scheduler")
    assert sched.config.shift == MICRO.shift and not sched.config.use_dynamic_shifting
    # the exported weights generate a clip of the right shape through plain diffusers calls
    ids, mask = text.tokenize(["a small red circle moving left on a black background"])
    states, _ = text(ids, mask)
    x = torch.randn(1, 3, MICRO.frames, MICRO.side, MICRO.side)
    with torch.no_grad():
        v = trunk(hidden_states=x, timestep=torch.tensor([500.0]), encoder_hidden_states=states,
                  return_dict=False)[0]
    assert v.shape == x.shape and torch.isfinite(v).all()
    state = json.loads((work / "state.json").read_text())
    assert state["step"] == 3 and math.isfinite(state["heldout"][-1][1])
    assert state["probe"][-1][0] == 3 and all(0 <= v <= 1 for v in state["probe"][-1][1:])
    assert (work / "loss.png").is_file() and (work / "samples.png").is_file()
    assert len((work / "samples.txt").read_text().splitlines()) == 6
    assert not list(tmp_path.rglob(".*.tmp")) and not list(work.glob("*.tmp"))


def test_resume_gives_the_uninterrupted_run(tmp_path):
    kw = dict(threads=1, log=_quiet, samples=False)
    W.train(MICRO, tmp_path / "a", steps=2, **kw)
    state = W.train(MICRO, tmp_path / "a", steps=4, **kw)
    straight = W.train(MICRO, tmp_path / "b", steps=4, **kw)
    assert state["step"] == straight["step"] == 4 and len(state["losses"]) == 4
    assert np.allclose(state["losses"], straight["losses"], rtol=1e-5)
    a = torch.load(tmp_path / "a" / "ckpt.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "ckpt.pt", weights_only=False)
    for k in b["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a["ema"][k], b["ema"][k], rtol=1e-5, atol=1e-6)
    # the exported folder holds the EMA weights of the last step
    exported = load_file(tmp_path / "a" / "model" / "transformer" / "diffusion_pytorch_model.safetensors")
    torch.testing.assert_close(exported["proj_out.weight"], a["ema"]["trunk.proj_out.weight"])


def test_other_settings_in_the_same_work_folder_are_refused(tmp_path, capsys):
    W.train(MICRO, tmp_path / "w", steps=1, threads=1, log=_quiet, samples=False)
    assert W.main(["--work", str(tmp_path / "w"), "--steps", "2", "--micro", "--layers", "2", "--threads", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "other settings" in err[0]


def test_init_from_an_exported_folder(tmp_path):
    W.train(MICRO, tmp_path / "a", steps=2, threads=1, log=_quiet, samples=False)
    src = tmp_path / "a" / "model"
    W.train(MICRO, tmp_path / "b", steps=0, threads=1, log=_quiet, samples=False, init=src)
    got = load_file(tmp_path / "b" / "model" / "transformer" / "diffusion_pytorch_model.safetensors")
    want = load_file(src / "transformer" / "diffusion_pytorch_model.safetensors")
    for k in want:
        torch.testing.assert_close(got[k], want[k])
    wider = dataclasses.replace(MICRO, ffn=48)
    with pytest.raises(W.ConfigError, match="architecture differs"):
        W.train(wider, tmp_path / "c", steps=1, threads=1, log=_quiet, samples=False, init=src)
    with pytest.raises(W.ConfigError, match="not a pixel video model folder"):
        W.train(MICRO, tmp_path / "d", steps=1, threads=1, log=_quiet, samples=False, init=tmp_path)


def test_init_continues_the_training_record(tmp_path):
    """Weights continued over sessions (``--init`` on the last export, a fresh optimiser) say how much training they
    hold: the record adds each run's steps and clips, and a run notes the held-out loss it started from."""
    W.train(MICRO, tmp_path / "a", steps=2, threads=1, log=_quiet, samples=False, probe_n=2)
    first = W.lineage(tmp_path / "a" / "model")
    assert (first["steps"], first["clips"], len(first["runs"])) == (2, 2 * MICRO.batch, 1)
    assert first["runs"][0]["init"] is None and first["runs"][0]["probe"]["n"] == 2
    W.train(MICRO, tmp_path / "b", steps=3, threads=1, log=_quiet, samples=False, probe_n=0,
            init=tmp_path / "a" / "model")
    rec = W.lineage(tmp_path / "b" / "model")
    assert (rec["steps"], rec["clips"]) == (5, 5 * MICRO.batch) and rec["runs"][0] == first["runs"][0]
    run = rec["runs"][1]
    assert run["init"] == str(tmp_path / "a" / "model") and run["steps"] == 3
    # the loss it started from is the init's own held-out loss (same clips, same noise)
    assert run["heldout_loss_start"] == pytest.approx(first["runs"][0]["heldout_loss"], abs=1e-4)
    # resuming the second run from its checkpoint keeps the record it started from
    W.train(MICRO, tmp_path / "b", steps=4, threads=1, log=_quiet, samples=False, probe_n=0)
    assert W.lineage(tmp_path / "b" / "model")["steps"] == 6
    assert W.lineage(tmp_path) == {}


def test_threads_auto_and_time_steps(tmp_path, capsys):
    state = W.train(MICRO, tmp_path / "w", steps=3, threads="auto", log=_quiet, samples=False)
    assert state["step"] == 3
    assert W.main(["--micro", "--time-steps", "2", "--threads", "1"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["threads"] == 1 and r["s_per_step"] > 0 and r["layers"] == MICRO.layers and r["bf16"] is False
    assert W.main(["--micro", "--time-steps", "1", "--threads", "1", "--bf16"]) == 0
    assert json.loads(capsys.readouterr().out)["bf16"] is True
    torch.set_num_threads(2)


def test_sigmas_follow_the_static_shift():
    s = W.sample_sigmas(W.WanTrainConfig(), 20000, torch.Generator().manual_seed(0))
    assert 0 < s.min() and s.max() < 1
    # logit-normal median 0.5, shifted by S: S / (1 + S) (2/3 at the default shift 2)
    assert float(s.median()) == pytest.approx(2 / 3, abs=0.02)


def test_lr_schedule():
    cfg = W.WanTrainConfig(lr=1e-3, warmup_steps=10, decay_frac=0.25, min_lr_frac=0.05)
    assert W.lr_at(cfg, 0, 0.0) < W.lr_at(cfg, 5, 0.0) < W.lr_at(cfg, 9, 0.0) == cfg.lr
    assert W.lr_at(cfg, 100, 0.7) == cfg.lr
    assert math.isclose(W.lr_at(cfg, 100, 1.0), cfg.lr * 0.05)


def test_default_config_fits_the_budget():
    trunk, text, sched = W.build(W.WanTrainConfig())
    n = sum(p.numel() for p in trunk.parameters()) + sum(p.numel() for p in text.parameters())
    assert n * 4 < 30e6
    x, _ = W.batch_at(W.WanTrainConfig(), 0, n=1)
    assert x.shape == (1, 3, 8, 32, 32)  # (B, C, F, H, W): grid (4, 8, 8) = 256 tokens with patch (2, 4, 4)
    assert sched.config.shift == W.WanTrainConfig().shift and not sched.config.use_dynamic_shifting


def test_probe_command_reads_an_exported_model(tmp_path, capsys):
    W.train(MICRO, tmp_path / "w", steps=1, threads=1, log=_quiet, samples=False, probe_n=0)
    assert "probe" not in json.loads((tmp_path / "w" / "state.json").read_text())
    assert W.main(["--probe", str(tmp_path / "w" / "model"), "--probe-n", "3", "--threads", "1"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["split"] for r in rows] == ["train", "heldout"] and all(r["n"] == 3 for r in rows)
    assert W.main(["--probe", str(tmp_path), "--threads", "1"]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_ema_warms_up():
    cfg = W.WanTrainConfig(ema=0.998)
    assert W.ema_decay(cfg, 0) == pytest.approx(0.1)
    assert W.ema_decay(cfg, 100) < W.ema_decay(cfg, 1000) < cfg.ema == W.ema_decay(cfg, 10**6)


def test_two_shape_mix_shapes_training_batches_only(tmp_path, capsys):
    """``--two-shape``: the share of two-shape clips in training batches; held-out batches (the held-out loss, the
    probe) keep the evaluation's mix, so runs with other mixes compare; the run record says which mix it trained."""
    heavy = dataclasses.replace(W.WanTrainConfig(), two_shape=0.9)
    plain = W.WanTrainConfig()

    def share(cfg, split):
        caps = [c for s in range(6) for c in W.batch_at(cfg, s, split, 32)[1]]
        return sum(" and a " in c for c in caps) / len(caps)

    assert share(heavy, "train") > 0.75 > 0.45 > share(plain, "train")
    assert W.batch_at(heavy, 5, "heldout", 16)[1] == W.batch_at(plain, 5, "heldout", 16)[1]
    W.train(dataclasses.replace(MICRO, two_shape=0.9), tmp_path / "a", steps=1, threads=1, log=_quiet,
            samples=False, probe_n=0)
    assert W.lineage(tmp_path / "a" / "model")["runs"][0]["two_shape"] == 0.9
    # a resumed run with another mix is another run
    assert W.main(["--work", str(tmp_path / "a"), "--steps", "2", "--micro", "--threads", "1"]) == 2
    assert "other settings" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        W.main(["--work", str(tmp_path / "b"), "--steps", "1", "--micro", "--two-shape", "1.5"])
    assert e.value.code == 2 and "--two-shape must be a fraction" in capsys.readouterr().err


def test_a_checkpoint_written_before_a_config_field_existed_resumes(tmp_path):
    """A run folder from before ``two_shape`` existed resumes (the field reads as its default)."""
    W.train(MICRO, tmp_path / "a", steps=1, threads=1, log=_quiet, samples=False, probe_n=0)
    ck = tmp_path / "a" / "ckpt.pt"
    d = torch.load(ck, weights_only=False)
    del d["config"]["two_shape"]
    torch.save(d, ck)
    assert W.train(MICRO, tmp_path / "a", steps=2, threads=1, log=_quiet, samples=False, probe_n=0)["step"] == 2
