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
    assert "--backend [onnx|trt|aoti]" in r.stdout


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


# ---- the backend's logic on a fake tensorrt module (CPU buffers, no CUDA) ----------------------------------
class FakeContext:
    def __init__(self, engine, refuse=()):
        self.engine, self.refuse = engine, set(refuse)
        self.profile, self.shapes, self.addresses, self.history, self.runs = None, {}, {}, [], 0

    def set_device_memory(self, ptr, size):
        self.memory = (ptr, size)

    def set_optimization_profile_async(self, p, stream):
        self.profile = p
        return True

    def set_input_shape(self, name, shape):
        self.history.append((name, tuple(shape)))
        if name in self.refuse:
            return False
        self.shapes[name] = tuple(shape)
        return True

    def set_tensor_address(self, name, ptr):
        if ("address", name) in self.refuse:
            return False
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream):
        self.runs += 1
        return True


class FakeEngine:
    def __init__(self, refuse=()):
        self.contexts, self.refuse = [], refuse

    def create_execution_context(self, strategy):
        self.contexts.append(FakeContext(self, self.refuse))
        return self.contexts[-1]

    def get_device_memory_size_for_profile_v2(self, p):
        return 1024


class FakeStream:
    cuda_stream = 0

    def synchronize(self):
        pass


def fake_trt(refuse=()):
    from types import SimpleNamespace

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return FakeEngine(refuse)

    class Refitter:
        def __init__(self, engine, logger):
            pass

        def refit_cuda_engine(self):
            return True

    class OnnxParserRefitter:
        def __init__(self, refitter, logger):
            pass

        def refit_from_file(self, path):
            return True

    class Logger:
        WARNING = 2

        def __init__(self, severity):
            pass

    return SimpleNamespace(Logger=Logger, Runtime=Runtime, Refitter=Refitter, OnnxParserRefitter=OnnxParserRefitter,
                           ExecutionContextAllocationStrategy=SimpleNamespace(USER_MANAGED="user"))


def _fake_backend(folder, refuse=(), captured=None, capture_fails=False, log=None):
    """A TensorRTBackend whose engines, stream and CUDA graph are fakes and whose buffers live on the CPU."""
    trt = fake_trt(refuse)
    be = TensorRTBackend(folder)
    be.device, be._new_stream = "cpu", FakeStream
    if log is not None:
        be.log = log

    def capture(v):
        if capture_fails:
            raise RuntimeError("operation not permitted when stream is capturing")
        if captured is not None:
            captured.append(v)
        be._enqueue(v)
        return object()
    be._capture = capture
    be._load(trt)
    return be


@pytest.fixture
def fake_built(bundle_copy):
    from ddit_export.bundle import read_manifest
    from ddit_export.settings import TrtSettings

    plan = plan_from_manifest(read_manifest(bundle_copy), TrtSettings(max_batch=2))
    update_manifest(bundle_copy, plan=plan)
    _fake_engines(bundle_copy, plan, build=dict(BUILT, activation_buffer_bytes=4096))
    return bundle_copy


def test_trunk_input_and_output_have_their_own_buffers(fake_built):
    be = _fake_backend(fake_built)
    assert be.buffers["trunk_out"].data_ptr() != be.buffers["hidden"].data_ptr()
    assert be.buffers["trunk_out"].shape == be.buffers["hidden"].shape
    v = be._variant(2, 1)
    trunk = next(ctx for ctx, name in v.contexts if name == "trunk")
    assert trunk.addresses["hidden"] != trunk.addresses["trunk_out"]
    head = next(ctx for ctx, name in v.contexts if name == "head_k2")
    assert head.addresses["trunk_out"] == trunk.addresses["trunk_out"]  # the head reads what the trunk wrote


def test_a_second_batch_never_changes_shapes_under_a_captured_graph(fake_built):
    captured = []
    be = _fake_backend(fake_built, captured=captured)
    v1 = be._variant(1, 1)
    shapes_at_capture = [dict(ctx.shapes) for ctx, _ in v1.contexts]
    v2 = be._variant(1, 2)
    be._variant(2, 2)
    assert [dict(ctx.shapes) for ctx, _ in v1.contexts] == shapes_at_capture  # untouched by batch 2
    for (c1, _), (c2, _) in zip(v1.contexts, v2.contexts):
        assert c1 is not c2
    for ctx, name in v1.contexts + v2.contexts:  # every context saw one shape per input, ever
        assert len(ctx.history) == len(set(n for n, _ in ctx.history)), name
    trunk1 = next(c for c, n in v1.contexts if n == "trunk")
    trunk2 = next(c for c, n in v2.contexts if n == "trunk")
    assert trunk1.shapes["hidden"][0] == 1 and trunk2.shapes["hidden"][0] == 2
    assert be._variant(1, 1) is v1 and len(captured) == 3


def test_refused_shapes_and_addresses_are_clear_errors(fake_built):
    be = _fake_backend(fake_built, refuse=("hidden",))
    with pytest.raises(BundleError, match="input 'hidden' of shape .* was refused.*build --backend trt"):
        be._variant(2, 1)
    be = _fake_backend(fake_built, refuse=(("address", "velocity"),))
    with pytest.raises(BundleError, match="refused the address of tensor 'velocity'"):
        be._variant(1, 1)


def test_failed_graph_capture_falls_back_to_plain_enqueue_said_once(fake_built):
    said = []
    be = _fake_backend(fake_built, capture_fails=True, log=said.append)
    v1, v2 = be._variant(1, 1), be._variant(2, 1)
    assert v1.graph is None and v2.graph is None
    assert len(said) == 1 and "CUDA graph capture failed" in said[0] and "without CUDA graphs" in said[0]
    runs = [ctx.runs for ctx, _ in v1.contexts]
    be._enqueue(v1)  # what run() does for a variant without a graph
    assert [ctx.runs for ctx, _ in v1.contexts] == [r + 1 for r in runs]


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


@pytest.mark.slow
@pytest.mark.skipif(HAS_TRT, reason="checks the summary of a GPU check without tensorrt")
def test_gpu_check_says_tensorrt_did_not_run(tmp_path):
    """scripts/gpu_check.sh must not read as a TensorRT success when every TensorRT test was skipped."""
    from pathlib import Path

    root = Path(__file__).parents[2]
    r = subprocess.run(["bash", "scripts/gpu_check.sh"], cwd=root, capture_output=True, text=True, timeout=300,
                       env={**__import__("os").environ, "OUT": str(tmp_path), "GPU_CHECK_SKIP_BENCH": "1"})
    summary = [line for line in r.stdout.splitlines() if "summary:" in line]
    assert summary and "TensorRT: not run" in summary[0], r.stdout[-2000:]
    assert "skipped" in summary[0]


@pytest.mark.skipif(HAS_TRT, reason="falls back to ONNX Runtime without tensorrt")
def test_bundle_files_hashed_once_with_backend_tensorrt(planned, monkeypatch):
    from collections import Counter

    from ddit_export import bundle as bundle_mod
    from ddit_export.runtime.bundle_model import open_bundle

    folder, plan = planned
    plan = _fake_engines(folder, plan)
    update_manifest(folder, files={e["plan"]: bundle_mod.sha256_file(folder / e["plan"]) for e in plan["engines"]})
    hashed = Counter()
    real = bundle_mod.sha256_file
    monkeypatch.setattr(bundle_mod, "sha256_file", lambda p: hashed.update([str(p)]) or real(p))
    model, be = open_bundle(folder, backend="tensorrt", fallback=True)
    try:
        assert hashed and set(hashed.values()) == {1}, hashed
        assert str(folder / plan["engines"][0]["plan"]) in hashed  # the engines are among them
    finally:
        be.deactivate()
