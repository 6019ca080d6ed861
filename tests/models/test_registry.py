import json
import shutil

import pytest
import torch

from ddit_export.errors import ConfigError, ModelNotFoundError, WeightsError
from ddit_export.models.registry import load_model


def test_pixel_folder_loads_with_the_same_path_as_flux_mini(tiny_model_dir):
    m = load_model(str(tiny_model_dir))
    assert m.name == "tiny-saved" and m.default_steps == 12 and m.vae_scale == 1
    assert m.geometry().grid == (16, 16)
    c = m.encode(["a red circle"])
    assert c.states.shape[0] == 1 and c.txt_ids.shape == (c.states.shape[1], 3)
    ref = load_model("tiny")  # same seed -> same weights as the folder
    for a, b in zip(m.transformer.trunk.parameters(), ref.transformer.trunk.parameters()):
        assert torch.equal(a, b)


def test_pixel_folder_with_adapters_and_schedule(tiny_model_dir, tmp_path):
    from ddit_export.models.registry import save_pixel_model, tiny_components
    from ddit_export.settings import ScheduleSettings

    trunk, text, sched = tiny_components()
    src = load_model("tiny", sizes=(1, 2))
    folder = save_pixel_model(tmp_path / "m", trunk, text, sched, name="x", height=32, width=32,
                              model=src.transformer, schedule=ScheduleSettings(tau=0.02, warmup=4), prompt="a red")
    m = load_model(str(folder))
    assert m.transformer.sizes == (1, 2)  # sizes come from the adapters file
    assert m.schedule_defaults.tau == 0.02 and m.schedule_defaults.warmup == 4
    assert m.default_prompt == "a red"


def test_bad_model_names_and_folders(tiny_model_dir, tmp_path):
    with pytest.raises(ModelNotFoundError, match="unknown model 'nope'"):
        load_model("nope")
    with pytest.raises(ConfigError, match="--weights"):
        load_model("flux")
    with pytest.raises(WeightsError, match="not found"):
        load_model("flux", tmp_path / "missing")
    with pytest.raises(WeightsError, match="incomplete: missing model_index.json"):
        load_model("flux", tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    shutil.rmtree(broken / "text_encoder")
    with pytest.raises(WeightsError, match="missing text_encoder/config.json"):
        load_model(str(broken))
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_model_dir, corrupt)
    (corrupt / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(WeightsError):
        load_model(str(corrupt))
    meta = json.loads((tiny_model_dir / "ddit_model.json").read_text())
    wrong = tmp_path / "wrong"
    shutil.copytree(tiny_model_dir, wrong)
    (wrong / "ddit_model.json").write_text(json.dumps({**meta, "format": "ddit-pixel-model/99"}))
    with pytest.raises(WeightsError, match="unknown format"):
        load_model(str(wrong))


def test_flux_folder_loads_through_flux_pipeline(flux_dir):
    m = load_model("flux", flux_dir)
    assert m.name == "flux" and m.vae_scale == 2 and m.guidance_embeds
    c = m.encode(["a red cat"])
    assert c.states.shape[-1] == 32 and c.pooled.shape == (1, 32)
    g = m.geometry(64, 64)
    assert g.grid == (16, 16) and g.token_channels == 16
    images = m.decode(torch.zeros(1, 256, 16), g)
    assert images[0].size == (64, 64)


def test_flux_text_encoders_and_vae_without_the_transformer(flux_dir, monkeypatch):
    """What a FLUX.1-dev bundle needs from --weights: the transformer is not loaded at all."""
    from diffusers import FluxTransformer2DModel

    full = load_model("flux", flux_dir)
    loaded = []
    real = FluxTransformer2DModel.from_pretrained.__func__
    monkeypatch.setattr(FluxTransformer2DModel, "from_pretrained",
                        classmethod(lambda cls, *a, **kw: loaded.append(a) or real(cls, *a, **kw)))
    m = load_model("flux", flux_dir, transformer=False)
    assert loaded == [] and m.transformer is None and m.extras["pipeline"].transformer is None
    assert (m.latent_channels, m.guidance_embeds, m.vae_scale) == (full.latent_channels, full.guidance_embeds,
                                                                    full.vae_scale)
    a, b = m.encode(["a red cat"]), full.encode(["a red cat"])
    assert torch.equal(a.states, b.states) and torch.equal(a.pooled, b.pooled)
    g = m.geometry(64, 64)
    assert m.decode(torch.zeros(1, 256, 16), g)[0].size == (64, 64)


def test_incomplete_flux_folder_names_what_is_missing(flux_dir, tmp_path):
    broken = tmp_path / "flux"
    shutil.copytree(flux_dir, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(WeightsError, match="missing vae"):
        load_model("flux", broken)


def test_flux_mini_64_is_a_zoo_model_trained_at_two_sides():
    from ddit_export.models.registry import PRESETS, ZOO_MODELS, load_model, zoo_folder

    assert "flux-mini-64" in ZOO_MODELS and "flux-mini-64" in PRESETS
    lm = load_model("flux-mini-64")
    assert lm.name == "flux-mini-64" and (lm.default_height, lm.default_width) == (64, 64)
    assert set(map(tuple, lm.trained_resolutions)) == {(32, 32), (64, 64)}
    assert (zoo_folder("flux-mini-64") / "transformer" / "ddit_adapters.safetensors").is_file()
    assert zoo_folder("tiny") is None
