"""adapt --residual sigma: continues a "linear" adapters file (the sigma map starting at zero), trains the new map,
and the residual is part of a run's identity (a resume with another residual is refused)."""
import pytest
import torch
from safetensors.torch import load_file

from ddit_export.adapt import adapt, load_student
from ddit_export.errors import ConfigError
from tests.adapt.common import copy_model, quiet, settings


def test_sigma_residual_continues_a_linear_file_and_trains(tiny_model_dir, tmp_path):
    model_dir = copy_model(tiny_model_dir, tmp_path / "model")
    first = adapt(settings(model_dir, tmp_path / "a", out=str(tmp_path / "a.safetensors"), steps=4), progress=False,
                  log=quiet)
    s = settings(model_dir, tmp_path / "b", init_adapters=first.state["out"], residual="sigma", steps=6,
                 out=str(tmp_path / "b.safetensors"))
    start = load_student(s).transformer.adapter_state_dict()
    linear = load_file(first.state["out"])
    assert all(torch.equal(start[k], linear[k]) for k in linear)  # the file's weights, unchanged
    sigma_keys = sorted(set(start) - set(linear))
    assert sigma_keys == ["stems.2.residual_sigma.weight", "stems.4.residual_sigma.weight"]
    assert all(not start[k].any() for k in sigma_keys)  # and the new map at zero
    adapt(s, progress=False, log=quiet)
    trained = load_file(tmp_path / "b.safetensors")
    assert all(trained[k].abs().sum() > 0 for k in sigma_keys)
    with pytest.raises(ConfigError, match="other settings.*residual"):
        adapt(settings(model_dir, tmp_path / "b", init_adapters=first.state["out"], steps=6), progress=False,
              log=quiet)
