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
