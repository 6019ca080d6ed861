"""The cached training trajectories: prompt files, coarse-step (mixed) trajectories, shard metadata."""
from pathlib import Path

from ddit_export.adapt import adapt
from tests.adapt.common import copy_model, quiet, settings


def test_prompt_file_and_coarse_mix(tiny_model_dir, tmp_path):
    """Trajectories from a prompt file, all of them taking random coarse steps after the warm-up."""
    model_dir = copy_model(tiny_model_dir, tmp_path / "model")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square at the top\n\na large green triangle in the center\n")
    s = settings(model_dir, tmp_path / "w", prompts_file=str(prompts), coarse_mix=1.0, steps=2,
                  out=str(tmp_path / "x.safetensors"))
    r = adapt(s, progress=False, log=quiet)
    assert r.state["step"] == 2 and Path(r.state["out"]).is_file()
    from safetensors import safe_open

    with safe_open(str(tmp_path / "w" / "trajectories" / "train_00000.safetensors"), "pt") as f:
        schedule = [int(k) for k in f.metadata()["schedule"].split(",")]
        assert f.get_tensor("coarse").all() and f.get_tensor("prompt").max() == 2
    assert schedule[:3] == [1, 1, 1] and any(k > 1 for k in schedule)
