"""``ddit-export adapt``: self-distillation of the coarse-size adapters, on the tiny preset saved to a folder."""
import hashlib
import shutil
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ddit_export.adapt import adapt, load_student, read_loss_csv
from ddit_export.errors import ConfigError, VocabularyError, WeightsError
from ddit_export.models.flux import ADAPTER_FILE
from ddit_export.settings import AdaptSettings


def quiet(_msg):
    pass


def _copy_model(src: Path, dest: Path) -> Path:
    out = Path(shutil.copytree(src, dest))
    (out / "transformer" / ADAPTER_FILE).unlink(missing_ok=True)
    return out


def _settings(model_dir, work, **kw):
    base = dict(model=str(model_dir), work=str(work), num_prompts=8, batch=8, lr=3e-3, lr_warmup=5, eval_images=0,
                steps=12, seed=0, ckpt_minutes=60, threads=1)
    base.update(kw)
    return AdaptSettings(**base)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """One 40-step run writing into its own copy of the tiny model folder (the default output)."""
    root = tmp_path_factory.mktemp("adapt")
    model_dir = _copy_model(tiny_model_dir, root / "model")
    weights = model_dir / "transformer" / "diffusion_pytorch_model.safetensors"
    sha_before = _sha(weights)
    s = _settings(model_dir, root / "work", steps=40)
    result = adapt(s, progress=False, log=quiet)
    return dict(settings=s, result=result, model_dir=model_dir, work=root / "work", sha_before=sha_before,
                weights=weights)


def test_distillation_loss_goes_down(trained):
    rows = read_loss_csv(trained["work"] / "eval.csv")
    assert [r["step"] for r in rows] == [0, 40]
    for k in (2, 4):
        assert rows[-1][f"eval_loss_{k}"] < 0.8 * rows[0][f"eval_loss_{k}"]
    train = read_loss_csv(trained["work"] / "loss.csv")
    assert [r["step"] for r in train] == list(range(1, 41))
    first = sum(r["loss_2"] + r["loss_4"] for r in train[:5])
    last = sum(r["loss_2"] + r["loss_4"] for r in train[-5:])
    assert last < 0.7 * first


def test_only_adapter_parameters_change(trained):
    from diffusers import FluxTransformer2DModel

    st = trained["result"].state
    assert st["step"] == 40 and not st["stopped_by_signal"]
    assert _sha(trained["weights"]) == trained["sha_before"]  # the folder's trunk file is never written
    fresh = FluxTransformer2DModel.from_pretrained(trained["model_dir"] / "transformer").state_dict()
    trunk = trained["result"].loaded.transformer.trunk.state_dict()
    assert fresh.keys() == trunk.keys()
    assert all(torch.equal(fresh[k], trunk[k]) for k in fresh)  # bit-identical
    init = load_student(trained["settings"]).transformer.adapter_state_dict()
    now = trained["result"].loaded.transformer.adapter_state_dict()
    changed = [k for k in init if not torch.equal(init[k], now[k])]
    assert any(k.startswith("stems.2.") for k in changed) and any(k.startswith("loras.4.") for k in changed)


def test_adapters_file_loads_back(trained):
    from diffusers import FluxTransformer2DModel

    from ddit_export.models.flux import MultiPatchFlux
    from ddit_export.models.registry import load_model

    out = trained["model_dir"] / "transformer" / ADAPTER_FILE
    assert trained["result"].state["out"] == str(out)
    assert not list(out.parent.glob("*.tmp"))
    want = trained["result"].loaded.transformer.adapter_state_dict()
    trunk = FluxTransformer2DModel.from_pretrained(trained["model_dir"] / "transformer")
    mp = MultiPatchFlux.from_trunk_and_adapters(trunk, out)
    assert mp.sizes == (1, 2, 4) and mp.adapter_settings.rank == 32
    got = mp.adapter_state_dict()
    assert all(torch.equal(want[k], got[k]) for k in want)
    picked = load_model(str(trained["model_dir"])).transformer.adapter_state_dict()  # found without --adapters
    assert all(torch.equal(want[k], picked[k]) for k in want)


def test_interrupt_and_resume_match_an_uninterrupted_run(tiny_model_dir, tmp_path):
    model_dir = _copy_model(tiny_model_dir, tmp_path / "model")
    whole = adapt(_settings(model_dir, tmp_path / "a", out=str(tmp_path / "a.safetensors")), progress=False,
                  log=quiet)
    s = _settings(model_dir, tmp_path / "b", out=str(tmp_path / "b.safetensors"))

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

    with pytest.raises(ConfigError, match="other settings"):  # resuming with other settings is refused
        adapt(_settings(model_dir, tmp_path / "b", lr=1e-2), progress=False, log=quiet)


def test_corrupt_checkpoint_is_a_clear_error(tiny_model_dir, tmp_path):
    from click.testing import CliRunner

    from ddit_export.cli import main

    model_dir = _copy_model(tiny_model_dir, tmp_path / "model")
    s = _settings(model_dir, tmp_path / "w", steps=4, out=str(tmp_path / "x.safetensors"))
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


def test_bad_inputs(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="no coarse size"):
        AdaptSettings(sizes=(1,), steps=1)
    with pytest.raises(ConfigError, match="budget"):
        AdaptSettings()
    with pytest.raises(WeightsError, match="not found"):
        adapt(_settings(tmp_path / "nowhere", tmp_path / "w"), progress=False, log=quiet)
    broken = _copy_model(tiny_model_dir, tmp_path / "broken")
    (broken / "text_encoder" / "config.json").unlink()
    with pytest.raises(WeightsError, match="incomplete"):
        adapt(_settings(broken, tmp_path / "w"), progress=False, log=quiet)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n# a comment\na purple dog on a spaceship\n")
    with pytest.raises(VocabularyError, match=r"line\(s\) 2: .*dog, spaceship"):
        adapt(_settings(tiny_model_dir, tmp_path / "w", prompts_file=str(prompts)), progress=False, log=quiet)


def test_prompt_file_and_coarse_mix(tiny_model_dir, tmp_path):
    """Trajectories from a prompt file, all of them taking random coarse steps after the warm-up."""
    model_dir = _copy_model(tiny_model_dir, tmp_path / "model")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square at the top\n\na large green triangle in the center\n")
    s = _settings(model_dir, tmp_path / "w", prompts_file=str(prompts), coarse_mix=1.0, steps=2,
                  out=str(tmp_path / "x.safetensors"))
    r = adapt(s, progress=False, log=quiet)
    assert r.state["step"] == 2 and Path(r.state["out"]).is_file()
    from safetensors import safe_open

    with safe_open(str(tmp_path / "w" / "trajectories" / "train_00000.safetensors"), "pt") as f:
        schedule = [int(k) for k in f.metadata()["schedule"].split(",")]
        assert f.get_tensor("coarse").all() and f.get_tensor("prompt").max() == 2
    assert schedule[:3] == [1, 1, 1] and any(k > 1 for k in schedule)


def test_cli_help_lists_the_options():
    from click.testing import CliRunner

    from ddit_export.cli import main

    r = CliRunner().invoke(main, ["adapt", "--help"])
    assert r.exit_code == 0
    for opt in ("--rank", "--init", "--lr", "--batch", "--minutes", "--steps", "--work", "--out", "--prompts",
                "--coarse-mix", "--device", "--dtype"):
        assert opt in r.output
