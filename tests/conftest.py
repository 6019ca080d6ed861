from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_model():
    from ddit_export.models.registry import load_model

    return load_model("tiny")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """The tiny preset saved as a pixel-model folder (the same format as flux-mini)."""
    from ddit_export.models.registry import save_pixel_model, tiny_components

    folder = tmp_path_factory.mktemp("tiny-model")
    trunk, text, sched = tiny_components()
    return save_pixel_model(folder, trunk, text, sched, name="tiny-saved", height=32, width=32, steps=12)


@pytest.fixture(scope="session")
def flux_dir(tmp_path_factory):
    """A complete, tiny FLUX.1-dev-shaped diffusers folder (what --model flux --weights DIR expects)."""
    from tests.helpers import tiny_flux_pipeline

    folder = tmp_path_factory.mktemp("flux")
    tiny_flux_pipeline().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """The tiny preset built into a 3-size bundle once per test session (about 20 s)."""
    from ddit_export.export.build import build_bundle
    from ddit_export.settings import BuildSettings

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    return build_bundle(BuildSettings(model="tiny", out=str(out)), progress=False, log=lambda *a: None)


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path):
    import shutil

    return Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))


@pytest.fixture
def no_work(monkeypatch):
    """Loading a model or a bundle, or generating, is a test failure: the checks under test must come first."""
    from ddit_export.models import registry
    from ddit_export.runtime import bundle_model
    from ddit_export.runtime import generate as generate_mod

    def fail(*a, **k):
        raise AssertionError("work started")

    monkeypatch.setattr(registry, "load_model", fail)
    monkeypatch.setattr(bundle_model, "open_bundle", fail)
    monkeypatch.setattr(generate_mod, "generate", fail)
