"""--joint: one adapter set trained at several resolutions, batches alternating; resumable; bad input refused."""
import csv
import json
import signal

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import load_file

from ddit_export.adapt import adapt
from ddit_export.errors import ConfigError
from tests.adapt.common import copy_model, quiet, settings

JOINT = dict(joint=((16, 16),), sample_steps=6, eval_images=1, coarse_mix=0.5, schedules="both")


def test_joint_run_alternates_resolutions_and_resumes_exactly(tiny_model_dir, tmp_path):
    model_dir = copy_model(tiny_model_dir, tmp_path / "model")
    whole = adapt(settings(model_dir, tmp_path / "a", out=str(tmp_path / "a.safetensors"), steps=6, **JOINT),
                  progress=False, log=quiet)
    assert whole.state["step"] == 6
    rows = list(csv.DictReader(open(tmp_path / "a" / "loss.csv")))
    assert [r["resolution"] for r in rows] == ["32x32", "16x16"] * 3
    # the 16x16 states are their own trajectories (8x8 fine tokens of 12 channels), in their own folder
    shard = sorted((tmp_path / "a" / "trajectories" / "16x16").glob("train_*.safetensors"))[0]
    with safe_open(str(shard), "pt") as f:
        assert f.get_tensor("latents").shape[1:] == (64, 12)
        assert json.loads(f.metadata()["key"])["grid"] == [8, 8]
    q = {r["schedule"] for r in csv.DictReader(open(tmp_path / "a" / "quality.csv")) if r["adapters"] == "adapted"}
    assert {"static-alt-k2", "static-alt-k4", "static-alt-k2@16x16", "static-alt-k4@16x16"} <= q
    with safe_open(str(tmp_path / "a.safetensors"), "pt") as f:
        meta = json.loads(f.metadata()["adapt"])
    assert meta["resolutions"] == ["32x32", "16x16"] and set(meta["joint_eval_loss"]["16x16"]) == {"2", "4"}

    s = settings(model_dir, tmp_path / "b", out=str(tmp_path / "b.safetensors"), steps=6, **JOINT)

    def sigint_at_3(step, losses):
        if step == 3:  # stopped on a 16x16 step: the resumed run must take up at 32x32
            signal.raise_signal(signal.SIGINT)

    assert adapt(s, progress=False, log=quiet, callback=sigint_at_3).state["step"] == 3
    assert adapt(s, progress=False, log=quiet).state["step"] == 6
    a, b = load_file(tmp_path / "a.safetensors"), load_file(tmp_path / "b.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ConfigError, match="other settings.*joint"):  # the resolutions define the run
        adapt(settings(model_dir, tmp_path / "b", steps=6, **dict(JOINT, joint=((24, 24),))), progress=False,
              log=quiet)


def test_joint_bad_input_is_one_line_before_any_sampling(tiny_model_dir, tmp_path):
    from ddit_export.cli import main

    model_dir = copy_model(tiny_model_dir, tmp_path / "model")
    with pytest.raises(ConfigError, match="own resolution"):
        adapt(settings(model_dir, tmp_path / "w", joint=((32, 32),)), progress=False, log=quiet)
    with pytest.raises(ConfigError, match="patch size 4 does not divide"):  # 20 px: 10x10 tokens
        adapt(settings(model_dir, tmp_path / "w", joint=((20, 20),)), progress=False, log=quiet)
    assert not (tmp_path / "w" / "trajectories").exists()
    with pytest.raises(ConfigError, match="distinct"):
        settings(model_dir, tmp_path / "w", joint=((16, 16), (16, 16)))
    base = ["adapt", "--model", str(model_dir), "--work", str(tmp_path / "w"), "--steps", "1", "--quiet"]
    for bad in ("16y16", "16x16x2", "big"):
        r = CliRunner().invoke(main, base + ["--joint", bad])
        err = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
        assert r.exit_code == 2 and len(err) == 1 and "--joint" in err[0], r.output
