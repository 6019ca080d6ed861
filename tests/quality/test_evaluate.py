import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ddit_export.errors import ConfigError
from ddit_export.quality.evaluate import eval_scenes, evaluate, training_free
from ddit_export.settings import EvalSettings
from ddit_export.zoo import scenes as S

REF = 200  # rendered scenes behind the Fréchet reference (1000 by default)


def test_eval_scenes_deterministic_balanced_heldout():
    a = eval_scenes(9, "heldout", 5)
    assert a == eval_scenes(9, "heldout", 5) and a != eval_scenes(9, "heldout", 6)
    assert [s.complexity for s in a] == list(S.COMPLEXITIES) * 3
    assert all(s.split == "heldout" for s in a)
    assert all(len(s.caption.split()) <= 24 for s in eval_scenes(30, "heldout", 5, max_words=24))


def test_settings_validation():
    with pytest.raises(ConfigError):
        EvalSettings(n_prompts=0)
    with pytest.raises(ConfigError):
        EvalSettings(taus=(0.01, -1.0))
    with pytest.raises(ConfigError):
        EvalSettings(seeds=())
    with pytest.raises(ConfigError):
        EvalSettings(split="test")
    with pytest.raises(ConfigError):
        EvalSettings(adapters="x.safetensors", adapted=False)
    assert EvalSettings(taus=(0.01, 0.01, 0.02), seeds=[1, 2]).taus == (0.01, 0.02)


def test_evaluate_tiny_without_adapters(tmp_path):
    rep = evaluate(EvalSettings(model="tiny", n_prompts=3, seeds=(0, 1), steps=6, taus=(0.02,),
                                out=str(tmp_path)), progress=False, reference_n=REF)
    keys = [v["key"] for v in rep["variants"]]
    assert keys == ["real", "fine", "training-free@0.01", "training-free@0.02"]
    assert any("no trained adapters" in n for n in rep["notes"])
    v = {r["key"]: r for r in rep["variants"]}
    assert v["fine"]["coarse_fraction"] == 0 and v["fine"]["flops_ratio"] == pytest.approx(1.0)
    assert v["real"]["adherence"]["accuracy"] >= 0.95  # the metric's ceiling on the prompts themselves
    tf = v["training-free@0.02"]
    assert 0 < tf["coarse_fraction"] <= 1 and tf["flops_ratio"] < 1 and np.isfinite(tf["psnr"])
    assert set(tf["coarse_by_complexity"]) == set(S.COMPLEXITIES)
    assert rep["images_per_variant"] == 6 and len(rep["per_image"]["fine"]) == 6
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["variants"][1]["key"] == "fine"
    assert "| fine |" in (tmp_path / "eval.md").read_text() and (tmp_path / "grid.png").is_file()


def test_same_noise_per_prompt_in_every_variant(tmp_path):
    """A static all-fine run batched differently (batch 1 vs 3) gives the same images: the noise is per prompt."""
    a = evaluate(EvalSettings(model="tiny", n_prompts=3, steps=4, batch=1, training_free=False,
                              out=str(tmp_path / "a")), progress=False, reference_n=REF)
    b = evaluate(EvalSettings(model="tiny", n_prompts=3, steps=4, batch=3, training_free=False,
                              out=str(tmp_path / "b")), progress=False, reference_n=REF)
    assert a["variants"][1]["fd"] == pytest.approx(b["variants"][1]["fd"], rel=1e-4, abs=1e-6)


def test_adapted_requested_without_adapters_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no trained adapters"):
        evaluate(EvalSettings(model="tiny", n_prompts=2, steps=4, adapted=True, out=str(tmp_path)), progress=False,
                 reference_n=REF)


def test_model_folder_with_adapters_runs_adapted_and_training_free(tiny_model_dir, tmp_path):
    from ddit_export.models.flux import ADAPTER_FILE, MultiPatchFlux
    from ddit_export.models.registry import load_model

    folder = shutil.copytree(tiny_model_dir, tmp_path / "model")
    m = load_model(str(folder))
    with torch.no_grad():  # "trained" adapters: anything but the init
        for p in m.transformer.adapter_parameters():
            p.add_(0.05 * torch.randn_like(p))
    m.transformer.save_adapters(folder / "transformer" / ADAPTER_FILE)
    rep = evaluate(EvalSettings(model=str(folder), n_prompts=2, steps=8, out=str(tmp_path / "out")), progress=False,
                   reference_n=REF)
    v = {r["key"]: r for r in rep["variants"]}
    assert rep["adapters"].endswith(ADAPTER_FILE)
    tau = f"{rep['default_tau']:g}"
    assert set(v) == {"real", "fine", f"adapted@{tau}", f"training-free@{tau}"} and v[f"adapted@{tau}"]["default_tau"]
    tf = training_free(load_model(str(folder)))
    assert isinstance(tf.transformer, MultiPatchFlux) and tf.lora_rank == 0
    a_img = rep["per_image"][f"adapted@{tau}"]
    t_img = rep["per_image"][f"training-free@{tau}"]
    if "2" in a_img[0]["sizes"] + t_img[0]["sizes"] or "4" in a_img[0]["sizes"] + t_img[0]["sizes"]:
        assert a_img[0]["psnr"] != t_img[0]["psnr"]


def test_cli_evaluate(tmp_path, monkeypatch):
    from ddit_export.cli import main
    from ddit_export.quality import evaluate as ev

    monkeypatch.setattr(ev, "REFERENCE_N", REF)
    r = CliRunner().invoke(main, ["evaluate", "--model", "tiny", "--n-prompts", "2", "--steps", "4", "--tau",
                                  "0.02", "--no-training-free", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert "| fine |" in r.output and (tmp_path / "eval.json").is_file()
    r = CliRunner().invoke(main, ["evaluate", "--model", "tiny", "--adapted", "--n-prompts", "2", "--steps", "4",
                                  "--out", str(tmp_path)])
    assert r.exit_code == 2 and "error:" in r.output and "no trained adapters" in r.output
    r = CliRunner().invoke(main, ["evaluate", "--model", "tiny", "--seeds", "0,x"])
    assert r.exit_code == 2 and "--seeds" in r.output


def test_evaluate_takes_schedule_policies(tmp_path):
    rep = evaluate(EvalSettings(model="tiny", n_prompts=2, steps=6, training_free=False,
                                policies=("ladder:n4=1,tail=2",), out=str(tmp_path)), progress=False, reference_n=REF)
    v = {r["key"]: r for r in rep["variants"]}
    lad = v["training-free@ladder:head=0,n4=1,tail=2"]  # tiny has no adapters: the training-free init runs it
    assert rep["per_image"][lad["key"]][0]["sizes"] == "422211"
    assert lad["flops_ratio"] < 1 and np.isfinite(lad["psnr"])
    with pytest.raises(ConfigError):
        EvalSettings(policies=("nope",))
