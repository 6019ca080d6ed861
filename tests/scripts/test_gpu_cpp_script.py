"""scripts/gpu_cpp.sh checks its prerequisites before any long step and names what is missing (--dry-run here: no
GPU on the test machines)."""
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_cpp.sh"


def _path_without(tools, shim: Path) -> str:
    """PATH with every folder holding one of `tools` replaced by a folder of links to its other programs."""
    shim.mkdir(exist_ok=True)
    out = []
    for d in os.environ["PATH"].split(os.pathsep):
        p = Path(d)
        if not any((p / t).exists() for t in tools):
            out.append(d)
            continue
        for f in p.iterdir():
            if f.name not in tools and not (shim / f.name).exists() and os.access(f, os.X_OK):
                (shim / f.name).symlink_to(f)
    return os.pathsep.join([str(shim)] + out)


def _run(tmp_path, path, bundle, **env):
    e = {k: v for k, v in os.environ.items() if k not in ("CUDA_HOME", "CUDAToolkit_ROOT", "CUDA_PATH", "OUT")}
    e.update(PATH=path, BUNDLE=str(bundle), CUDA_DIRS="", PYTHONPATH=str(ROOT), **env)
    return subprocess.run(["bash", str(SCRIPT), "--dry-run"], cwd=ROOT, env=e, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture
def bundle(tmp_path):
    b = tmp_path / "bundle"
    b.mkdir()
    (b / "manifest.json").write_text('{"tools": {"torch": "2.13.0"}, "model": {}}')
    return b


def test_names_missing_nvcc_and_stops_before_work(tmp_path, bundle):
    path = _path_without(["nvcc"], tmp_path / "shim")
    r = _run(tmp_path, path, bundle)
    assert r.returncode == 3, r.stderr
    lines = r.stderr.splitlines()
    nvcc = [ln for ln in lines if ln.startswith("MISSING nvcc:")]
    assert nvcc and "CUDA toolkit" in nvcc[0] and "CUDA_HOME" in nvcc[0], r.stderr
    assert any(ln.startswith("gpu_cpp: missing prerequisites:") and "nvcc" in ln for ln in lines), r.stderr
    assert not any("exit code" in ln for ln in lines), "no step may run after a failed check"


def test_a_toolkit_found_through_cuda_home(tmp_path, bundle):
    cuda = tmp_path / "cuda"
    (cuda / "bin").mkdir(parents=True)
    nvcc = cuda / "bin" / "nvcc"
    nvcc.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 12.8, V12.8.93'\n")
    nvcc.chmod(0o755)
    path = _path_without(["nvcc"], tmp_path / "shim")
    r = _run(tmp_path, path, bundle, CUDA_HOME=str(cuda))
    assert f"ok      nvcc {nvcc} (CUDA 12.8" in r.stderr, r.stderr
    assert "MISSING nvcc" not in r.stderr


def test_names_a_missing_bundle_and_cmake(tmp_path, bundle):
    path = _path_without(["cmake", "nvcc"], tmp_path / "shim")
    r = _run(tmp_path, path, tmp_path / "nope")
    assert r.returncode == 3
    assert "MISSING cmake: no cmake on PATH" in r.stderr, r.stderr
    assert f"MISSING bundle: {tmp_path / 'nope'}/manifest.json not found" in r.stderr
