"""scripts/gpu_wan_train.sh (issue 23 item 1): its checks run before any work, on a machine with or without CUDA."""
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(tmp_path, *args, python=None, **more):
    env = {"PATH": "/usr/bin:/bin", "WORK": str(tmp_path / "run"), "OUT": str(tmp_path / "out"), **more}
    if python:
        env["PYTHON"] = python
    return subprocess.run(["bash", str(ROOT / "scripts" / "gpu_wan_train.sh"), *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)


def test_without_cuda_it_stops_in_one_line(tmp_path):
    import sys

    r = _run(tmp_path, python=sys.executable)  # this machine's torch: CPU only in CI
    import torch

    if torch.cuda.is_available():
        return
    assert r.returncode == 3 and r.stderr.count("\n") == 1 and "needs a CUDA device" in r.stderr
    assert not (tmp_path / "out").exists()


def test_dry_run_checks_the_run_folder_and_does_no_work(tmp_path):
    fake = tmp_path / "python"  # a python whose torch "sees a GPU": only the checks run
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    r = _run(tmp_path, "--dry-run", python=str(fake))
    assert r.returncode == 0, r.stderr
    # without a run folder it starts from the committed continued weights, else the shipped model
    want = "checkpoints/wan-mini" if (ROOT / "checkpoints/wan-mini/ddit_model.json").is_file() else \
        "ddit_export/zoo/weights/wan-mini"
    assert f"starting from {want}" in r.stdout and "checks passed" in r.stdout
    r = _run(tmp_path, "--dry-run", python=str(fake), INIT="ddit_export/zoo/weights/wan-mini")
    assert r.returncode == 0 and "starting from ddit_export/zoo/weights/wan-mini" in r.stdout
    r = _run(tmp_path, "--dry-run", python=str(fake), INIT=str(tmp_path))
    assert r.returncode == 2 and "not a wan-mini model folder" in r.stderr
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "ckpt.pt").write_bytes(b"x")
    r = _run(tmp_path, "--dry-run", python=str(fake))
    assert r.returncode == 0 and "resuming" in r.stdout
    assert not (tmp_path / "out").exists()
    assert _run(tmp_path, "--bogus", python=str(fake)).returncode == 2
