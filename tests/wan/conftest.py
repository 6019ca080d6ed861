"""Session fixtures of the Wan (video) tests: the tiny-wan preset, its bundle (and with its AOTInductor package), and a
tiny Wan 2.1 diffusers folder."""
import pytest


@pytest.fixture(scope="session")
def tiny_wan():
    from ddit_export.models.registry import load_model

    return load_model("tiny-wan")


@pytest.fixture(scope="session")
def wan_bundle(tmp_path_factory):
    """tiny-wan built into a 3-size video bundle once per session."""
    from ddit_export.export.build import build_bundle
    from ddit_export.settings import BuildSettings

    out = tmp_path_factory.mktemp("wan-bundle") / "tiny-wan"
    return build_bundle(BuildSettings(model="tiny-wan", out=str(out)), progress=False, log=lambda *a: None)


@pytest.fixture(scope="session")
def wan_aoti(wan_bundle, tmp_path_factory):
    """The tiny-wan bundle with its AOTInductor package (every size and the word encoder; about 1 minute)."""
    from tests.helpers import with_aoti

    return with_aoti(wan_bundle, tmp_path_factory.mktemp("wan-aoti") / "tiny-wan", "tiny-wan")


@pytest.fixture(scope="session")
def wan_dir(tmp_path_factory):
    """A complete, tiny Wan 2.1 diffusers folder (what --model wan --weights DIR expects)."""
    from tests.helpers import tiny_wan_pipeline

    folder = tmp_path_factory.mktemp("wan")
    tiny_wan_pipeline().save_pretrained(folder)
    return folder
