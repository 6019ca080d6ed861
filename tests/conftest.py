import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)
ROOT = Path(__file__).resolve().parents[1]


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


# the AOTInductor / C++ runtime fixtures (marker ``cpp``): one AOTInductor package of the tiny bundle and one CMake
# build of runtime/cpp, shared by every test that needs them (tests/runtime, tests/wan)
@pytest.fixture(scope="session")
def aoti_bundle(tiny_bundle, tmp_path_factory):
    """The tiny 3-size bundle with its AOTInductor package (about 1 minute on 2 cores)."""
    from tests.helpers import with_aoti

    return with_aoti(tiny_bundle, tmp_path_factory.mktemp("aoti") / "tiny", "tiny")


@pytest.fixture(scope="session")
def cpp_build(aoti_bundle, tmp_path_factory):
    """runtime/cpp configured and built with CMake against the torch wheel's libtorch (about 1 minute)."""
    import torch

    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not installed (pip install cmake, or apt-get install cmake)")
    try:
        import nlohmann_json
    except ImportError:
        pytest.skip("the nlohmann-json wheel is not installed (pip install nlohmann-json; in the dev extra)")
    build = tmp_path_factory.mktemp("cpp-build")
    configure = [cmake, "-S", str(ROOT / "runtime" / "cpp"), "-B", str(build),
                 f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}", f"-DDDIT_TEST_BUNDLE={aoti_bundle}",
                 f"-DNLOHMANN_JSON_INCLUDE_DIR={nlohmann_json.get_include()}",
                 f"-DPython3_EXECUTABLE={sys.executable}"]
    for cmd in (configure, [cmake, "--build", str(build), "-j2"]):
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            pytest.fail(f"{' '.join(cmd[:3])} failed:\n{(r.stdout + r.stderr)[-4000:]}")
    return build


@pytest.fixture(scope="session")
def cpp_lib(cpp_build):
    from tests.runtime.cpp_api import Lib

    return Lib(cpp_build / "libddit.so")
