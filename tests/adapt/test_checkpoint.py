"""Resumable adapt runs: interrupted and resumed runs end bit-identical; a corrupt checkpoint is one clear error."""
import signal

import pytest
import torch
from safetensors.torch import load_file

from ddit_export.adapt import adapt, read_loss_csv
from ddit_export.errors import ConfigError, WeightsError
from tests.adapt.common import copy_model, quiet, settings


@pytest.mark.parametrize("kw", [{}, {"coarse_mix": 1.0, "schedules": "both", "eval_images": 1, "quality_minutes": 1e-9,
                                      "patience": 100, "sample_steps": 6}], ids=["fine", "policy-family+quality"])
def test_interrupt_and_resume_match_an_uninterrupted_run(tiny_model_dir, tmp_path, kw):
    """Also with the deployed family's trajectories (ladders, step-cache plans) and the quality checks the plateau
    stop reads: their state is checkpointed, so the resumed run replays the same batches and logs."""
    model_dir = copy_model(tiny_model_dir, tmp_path / "model")
    whole = adapt(settings(model_dir, tmp_path / "a", out=str(tmp_path / "a.safetensors"), **kw), progress=False,
                  log=quiet)
    s = settings(model_dir, tmp_path / "b", out=str(tmp_path / "b.safetensors"), **kw)

    first = adapt(s, progress=False, log=quiet, callback=lambda step, losses: step == 5)
    assert first.state["stopped_by_signal"] and first.state["step"] == 5
    assert not (tmp_path / "b.safetensors").exists()  # no final output from an interrupted run

    def sigint_at_9(step, losses):
        if step == 9:
            signal.raise_signal(signal.SIGINT)  # a real Ctrl-C: the handler checkpoints after this step

    second = adapt(s, progress=False, log=quiet, callback=sigint_at_9)
    assert second.state["stopped_by_signal"] and second.state["step"] == 9
    third = adapt(s, progress=False, log=quiet)
    assert third.state["step"] == 12 and not third.state["stopped_by_signal"]

    a, b = load_file(tmp_path / "a.safetensors"), load_file(tmp_path / "b.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    la, lb = read_loss_csv(tmp_path / "a" / "loss.csv"), read_loss_csv(tmp_path / "b" / "loss.csv")
    assert [r["step"] for r in lb] == list(range(1, 13))
    assert [(r["loss_2"], r["loss_4"]) for r in la] == [(r["loss_2"], r["loss_4"]) for r in lb]
    if kw:  # one quality check per step in both runs, the same numbers (each from the same adapters)
        qa, qb = ((tmp_path / w / "quality.csv").read_text().splitlines() for w in ("a", "b"))
        # static alternation at sizes 2 and 4, each also with detail carry: 4 rows per check
        assert qa == qb and sum(",training," in ln for ln in qa) == 4 * 12

    with pytest.raises(ConfigError, match="other settings"):  # resuming with other settings is refused
        adapt(settings(model_dir, tmp_path / "b", lr=1e-2), progress=False, log=quiet)


def test_corrupt_checkpoint_is_a_clear_error(tiny_model_dir, tmp_path):
    from click.testing import CliRunner

    from ddit_export.cli import main

    model_dir = copy_model(tiny_model_dir, tmp_path / "model")
    s = settings(model_dir, tmp_path / "w", steps=4, out=str(tmp_path / "x.safetensors"))
    adapt(s, progress=False, log=quiet, callback=lambda step, losses: step == 2)
    ckpt = tmp_path / "w" / "ckpt" / "adapters.safetensors"
    ckpt.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(WeightsError, match="corrupt") as e:
        adapt(s, progress=False, log=quiet)
    assert "\n" not in str(e.value)
    r = CliRunner().invoke(main, ["adapt", "--model", str(model_dir), "--work", str(tmp_path / "w"), "--steps", "4",
                                  "--num-prompts", "8", "--batch", "8", "--lr", "3e-3", "--lr-warmup", "5",
                                  "--eval-images", "0", "--out", str(tmp_path / "x.safetensors"), "--quiet"])
    assert r.exit_code == 2
    err = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "corrupt" in err[0]
    (tmp_path / "w" / "ckpt" / "state.json").write_text("{not json")
    with pytest.raises(WeightsError, match="corrupt"):
        adapt(s, progress=False, log=quiet)
