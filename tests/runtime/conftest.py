"""Session fixtures of the AOTInductor / C++ runtime tests: one AOTInductor package (the tiny bundle's three
sizes) and one CMake build of runtime/cpp, shared by every test that needs them (marker ``cpp``)."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _no_compiler_reason():
    from ddit_export.errors import DDiTError
    from ddit_export.export.aoti import require_compiler

    try:
        require_compiler()
    except DDiTError as e:
        return str(e)
    return None


def with_aoti(bundle, out, model: str):
    """A copy of ``bundle`` at ``out`` with its AOTInductor package compiled for preset ``model`` (the test skips
    where there is no C++ compiler)."""
    from ddit_export.export.aoti import prepare_aoti
    from ddit_export.settings import BuildSettings

    reason = _no_compiler_reason()
    if reason:
        pytest.skip(f"no C++ compiler for AOTInductor: {reason}")
    shutil.copytree(bundle, out)
    prepare_aoti(out, BuildSettings(model=model), log=lambda *a: None)
    return out


@pytest.fixture(scope="session")
def aoti_bundle(tiny_bundle, tmp_path_factory):
    """The tiny 3-size bundle with its AOTInductor package (about 1 minute on 2 cores)."""
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
