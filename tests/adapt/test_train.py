"""``ddit-export adapt``, the run: self-distillation of the coarse-size adapters on the tiny preset saved to a
folder (loss goes down, only the adapters change, the output loads back, bad input is one clear error)."""
import pytest
import torch

from ddit_export.adapt import adapt, load_student, read_loss_csv
from ddit_export.errors import ConfigError, VocabularyError, WeightsError
from ddit_export.models.flux import ADAPTER_FILE
from ddit_export.settings import AdaptSettings
from tests.adapt.common import copy_model, quiet, settings, sha


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """One 40-step run writing into its own copy of the tiny model folder (the default output)."""
    root = tmp_path_factory.mktemp("adapt")
    model_dir = copy_model(tiny_model_dir, root / "model")
    weights = model_dir / "transformer" / "diffusion_pytorch_model.safetensors"
    sha_before = sha(weights)
    s = settings(model_dir, root / "work", steps=40)
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
    assert sha(trained["weights"]) == trained["sha_before"]  # the folder's trunk file is never written
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


def test_bad_inputs(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="no coarse size"):
        AdaptSettings(sizes=(1,), steps=1)
    with pytest.raises(ConfigError, match="budget"):
        AdaptSettings()
    with pytest.raises(WeightsError, match="not found"):
        adapt(settings(tmp_path / "nowhere", tmp_path / "w"), progress=False, log=quiet)
    broken = copy_model(tiny_model_dir, tmp_path / "broken")
    (broken / "text_encoder" / "config.json").unlink()
    with pytest.raises(WeightsError, match="incomplete"):
        adapt(settings(broken, tmp_path / "w"), progress=False, log=quiet)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n# a comment\na purple dog on a spaceship\n")
    with pytest.raises(VocabularyError, match=r"line\(s\) 2: .*dog, spaceship"):
        adapt(settings(tiny_model_dir, tmp_path / "w", prompts_file=str(prompts)), progress=False, log=quiet)


def test_cli_help_lists_the_options():
    from click.testing import CliRunner

    from ddit_export.cli import main

    r = CliRunner().invoke(main, ["adapt", "--help"])
    assert r.exit_code == 0
    for opt in ("--rank", "--init", "--lr", "--batch", "--minutes", "--steps", "--work", "--out", "--prompts",
                "--coarse-mix", "--device", "--dtype"):
        assert opt in r.output
