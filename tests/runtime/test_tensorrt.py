"""TensorRT backend: everything around it runs without TensorRT; the engine tests skip cleanly without it."""
import importlib.util
import json
import subprocess
import sys
import textwrap

import pytest
import torch

from ddit_export.bundle import sha256_file
from ddit_export.errors import BundleError, ConfigError
from ddit_export.export.trt_plan import plan_from_manifest, update_manifest
from ddit_export.runtime.backends.tensorrt import (TensorRTBackend, TensorRTUnavailable, check_latents,
                                                   coarse_image_ids, env_problems, open_tensorrt)

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
needs_trt = pytest.mark.skipif(not (HAS_TRT and torch.cuda.is_available()), reason="needs tensorrt and a CUDA GPU")
BUILT = {"tensorrt": "10.13.0.35", "device": "NVIDIA H100 80GB HBM3", "compute_capability": [9, 0]}

BLOCK_TRT = textwrap.dedent("""
    import importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "tensorrt":
                raise ImportError("tensorrt blocked")
    sys.meta_path.insert(0, Block())
""")


def _python(code):
    return subprocess.run([sys.executable, "-c", BLOCK_TRT + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120)


def test_modules_and_help_work_without_tensorrt():
    r = _python("""
        import ddit_export.runtime.backends.tensorrt, ddit_export.export.trt_build, ddit_export.export.trt_plan
        from click.testing import CliRunner
        from ddit_export.cli import main
        for cmd in (["build", "--help"], ["trt-check", "--help"]):
            res = CliRunner().invoke(main, cmd)
            assert res.exit_code == 0, res.output
            print(res.output)
        res = CliRunner().invoke(main, ["build", "--backend", "trt", "--model", "tiny"])
        assert res.exit_code == 2 and "needs TensorRT" in res.output, res.output
        assert "tensorrt" not in sys.modules
    """)
    assert r.returncode == 0, r.stderr
    assert "--backend [onnx|trt]" in r.stdout


def test_env_problems_name_what_to_rebuild():
    assert env_problems(BUILT, dict(BUILT)) == []
    assert env_problems(BUILT, dict(BUILT, tensorrt="10.13.0.99")) == []  # build number only
    [msg] = env_problems(BUILT, dict(BUILT, tensorrt="10.15.1"))
    assert "10.13.0.35" in msg and "10.15.1" in msg and "build --backend trt" in msg
    [msg] = env_problems(BUILT, dict(BUILT, compute_capability=[8, 9], device="NVIDIA L40S"))
    assert "9.0" in msg and "8.9" in msg and "L40S" in msg
    assert len(env_problems(BUILT, {"tensorrt": "11.0", "compute_capability": [10, 0]})) == 2
    assert "no engines" in env_problems(None, BUILT)[0]


def test_coarse_ids_match_the_model():
    from ddit_export.models.patching import coarse_ids, image_ids

    for k in (1, 2, 4):
        ref = coarse_ids(image_ids((8, 16)), (8, 16), k).numpy()
        assert (coarse_image_ids((8, 16), k) == ref).all()


@pytest.fixture
def planned(bundle_copy):
    """The tiny bundle with a TensorRT plan (no split graphs, no engines)."""
    from ddit_export.bundle import read_manifest

    plan = plan_from_manifest(read_manifest(bundle_copy))
    update_manifest(bundle_copy, plan=plan)
    return bundle_copy, plan


def test_latents_outside_every_profile(planned):
    _, plan = planned
    check_latents(plan, (1, 256, 12), 24)
    with pytest.raises(ConfigError, match="outside every TensorRT profile.*--height/--width"):
        check_latents(plan, (1, 1024, 12))
    with pytest.raises(ConfigError, match="batch 2 is outside.*max_batch"):
        check_latents(plan, (2, 256, 12))
    with pytest.raises(ConfigError, match="--text-len 77"):
        check_latents(plan, (1, 256, 12), 77)


def test_bundle_without_plan_or_engines(bundle_copy, planned):
    folder, _ = planned
    with pytest.raises(BundleError, match="lacks TensorRT engine.*trt/trunk.plan.*build --backend trt"):
        TensorRTBackend(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["tensorrt"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="no TensorRT plan"):
        TensorRTBackend(folder)


def _fake_engines(folder, plan, build=BUILT):
    (folder / "trt").mkdir(exist_ok=True)
    for e in plan["engines"]:
        (folder / e["plan"]).write_bytes(b"not an engine")
    plan = dict(plan, build=build)
    update_manifest(folder, plan=plan, files={e["plan"]: sha256_file(folder / e["plan"]) for e in plan["engines"]})
    return plan


def test_missing_size_and_inactive_backend(planned):
    folder, plan = planned
    _fake_engines(folder, plan)
    be = TensorRTBackend(folder)
    assert be.sizes == (1, 2, 4)
    with pytest.raises(BundleError, match="picked patch size 8.*sizes \\[1, 2, 4\\].*--sizes including 8"):
        be.run(8, torch.zeros(1, 256, 12), None, None, None, (16, 16))
    with pytest.raises(BundleError, match="not active"):
        be.run(1, torch.zeros(1, 256, 12), None, None, None, (16, 16))


@pytest.mark.skipif(HAS_TRT, reason="checks the message shown without tensorrt")
def test_activate_without_tensorrt_and_the_asked_for_fallback(planned):
    from ddit_export.runtime.backends.onnxruntime import OrtBundleBackend

    folder, plan = planned
    _fake_engines(folder, plan)
    with pytest.raises(TensorRTUnavailable, match="tensorrt package"):
        TensorRTBackend(folder).activate()
    with pytest.raises(TensorRTUnavailable):
        open_tensorrt(folder)  # no fallback unless asked
    said = []
    be = open_tensorrt(folder, fallback="onnxruntime", log=said.append)
    try:
        assert isinstance(be, OrtBundleBackend) and be.sessions
        assert "falling back to ONNX Runtime" in said[0] and "tensorrt" in said[0]
    finally:
        be.deactivate()
    with pytest.raises(ConfigError):
        open_tensorrt(folder, fallback="torch")


# ---- on a GPU with TensorRT ----------------------------------------------------------------------------
@pytest.mark.trt
@pytest.mark.gpu
@needs_trt
def test_tensorrt_generation_matches_onnxruntime(tmp_path):
    from ddit_export.api import build_settings
    from ddit_export.export.trt_build import build_with_tensorrt
    from ddit_export.models.registry import load_model
    from ddit_export.runtime.backends.torch import TorchBackend
    from ddit_export.runtime.generate import generate
    from ddit_export.settings import BuildSettings

    out = build_with_tensorrt(BuildSettings(model="tiny", out=str(tmp_path / "b")), log=lambda *a: None)
    model = load_model("tiny")
    settings = build_settings(model, prompts=("a red circle",), steps=12)
    with TensorRTBackend(out) as trt_be:
        got = generate(model, trt_be, settings, progress=False, decode=False)
        again = generate(model, trt_be, settings, progress=False, decode=False)  # CUDA graphs replayed
    with TorchBackend(model.transformer) as tb:
        ref = generate(model, tb, settings, progress=False, decode=False)
    assert got.trace.sizes == ref.trace.sizes and len(set(got.trace.sizes)) > 1
    assert torch.allclose(got.latents.cpu(), ref.latents, atol=5e-3)
    assert torch.equal(got.latents, again.latents)


@pytest.mark.trt
@pytest.mark.gpu
@needs_trt
def test_engines_built_elsewhere_are_refused(tmp_path):
    from ddit_export.export.trt_build import build_with_tensorrt
    from ddit_export.export.trt_plan import read_plan
    from ddit_export.settings import BuildSettings

    out = build_with_tensorrt(BuildSettings(model="tiny", out=str(tmp_path / "b")), log=lambda *a: None)
    plan = read_plan(out)
    plan["build"]["tensorrt"] = "9.0.0"
    update_manifest(out, plan=plan)
    with pytest.raises(BundleError, match="built with TensorRT 9.0.0"):
        TensorRTBackend(out).activate()
