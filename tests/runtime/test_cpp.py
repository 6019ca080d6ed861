"""The C++ runtime (runtime/cpp) through its C API: scheduler decisions equal the Python scheduler's on recorded
latents, a full denoise equals the Python backends, bad inputs return an error code and a message."""
import dataclasses
import json
import shutil
import subprocess

import numpy as np
import pytest
import torch

from tests.runtime.cpp_api import DDiTError, schedule

pytestmark = pytest.mark.cpp

STEPS = 12
PROMPTS = ["a large red circle at the center", "a small blue square at the left"]


@pytest.fixture(scope="module")
def recorded(tiny_model):
    """Latent histories of two real generations (the tiny model, PyTorch, all steps fine): (B, N, C) per step."""
    from ddit_export.api import build_settings
    from ddit_export.runtime.backends.torch import TorchBackend
    from ddit_export.runtime.generate import generate

    class Recorder:
        needs_history = True

        def __init__(self):
            self.latents = []

        def decide(self, step, history):
            from ddit_export.schedule import Decision

            self.latents.append(np.array(history[-1]))
            return Decision(1, {}, "static")

    rec = Recorder()
    gs = build_settings(tiny_model, prompts=PROMPTS, steps=STEPS, static=(1,) * STEPS)
    import ddit_export.runtime.generate as g

    original = g.make_policy
    g.make_policy = lambda *a, **k: rec
    try:
        generate(tiny_model, TorchBackend(tiny_model.transformer), gs, progress=False, decode=False)
    finally:
        g.make_policy = original
    return rec.latents


def _python_decisions(settings, latents, grid, sizes):
    from ddit_export.schedule import DDiTPolicy

    p, hist, out = DDiTPolicy(settings, grid, sizes), [], []
    for i, z in enumerate(latents):
        hist = (hist + [z])[-4:]
        out.append(p.decide(i, hist))
    return out


def _cpp_decisions(lib, sched, latents, grid, sizes):
    import ctypes as C

    from tests.runtime.cpp_api import Step, fptr

    arr = (C.c_int * len(sizes))(*sizes)
    handle = C.c_void_p()
    lib.call("ddit_scheduler_create", C.byref(sched), grid[0], grid[1], arr, len(sizes), len(latents),
             C.byref(handle))
    out = []
    try:
        for i, z in enumerate(latents):
            z = np.ascontiguousarray(z, np.float32)
            s = Step()
            lib.call("ddit_scheduler_decide", handle, i, fptr(z), z.shape[0], z.shape[2], C.byref(s))
            out.append(s)
    finally:
        lib.lib.ddit_scheduler_free(handle)
    return out


@pytest.mark.parametrize("window", ["any", "same-size"])
@pytest.mark.parametrize("batch", [1, 2])
def test_scheduler_equals_python_on_recorded_latents(cpp_lib, recorded, window, batch):
    from ddit_export.settings import ScheduleSettings

    latents = [z[:batch] for z in recorded]
    grid, sizes = (16, 16), (1, 2, 4)
    probe = _python_decisions(ScheduleSettings(tau=1.0, eps=0.4, window="any"), latents, grid, sizes)
    observed = sorted(v for d in probe for v in d.sigmas.values())
    taken = set()
    for tau in np.quantile(observed, [0.2, 0.5, 0.8]):  # thresholds that split the steps: mixed decisions
        for eps in (0.2, 0.4):
            py_s = ScheduleSettings(tau=float(tau), eps=eps, window=window)
            py = _python_decisions(py_s, latents, grid, sizes)
            cpp = _cpp_decisions(cpp_lib, schedule("ddit", tau=float(tau), eps=eps, same_size=window == "same-size"),
                                 latents, grid, sizes)
            for i, (a, b) in enumerate(zip(py, cpp)):
                assert (a.size, a.reason) == (b.size, b.reason.decode()), f"step {i}, tau {tau}, eps {eps}"
                assert set(a.sigmas) == set(b.sigmas())
                for k, v in a.sigmas.items():
                    assert b.sigmas()[k] == pytest.approx(v, rel=1e-6)
            taken |= {d.size for d in py}
    assert taken >= {1, 2}, "the thresholds should make the rule choose coarse and fine sizes"


@pytest.mark.parametrize("kind", ["ladder", "coarse-first", "static"])
def test_static_policies_equal_python(cpp_lib, kind):
    from ddit_export.schedule import CoarseFirst, Ladder, StaticSchedule

    grid, sizes, steps = (16, 16), (1, 2, 4), 10
    py = {"ladder": lambda: Ladder(steps, 1, 3, 2, grid, sizes),
          "coarse-first": lambda: CoarseFirst(steps, 4, 4, grid, sizes),
          "static": lambda: StaticSchedule((1, 1, 4, 4, 2, 2, 1, 2, 1, 1), grid, sizes)}[kind]()
    sched = schedule(kind, head=1, n4=3, tail=2, coarse=(4, 4), static=(1, 1, 4, 4, 2, 2, 1, 2, 1, 1))
    zeros = [np.zeros((1, 256, 12), np.float32)] * steps
    cpp = _cpp_decisions(cpp_lib, sched, zeros, grid, sizes)
    assert [d.size for d in cpp] == [py.decide(i, []).size for i in range(steps)]


def _embeddings(model, prompts):
    cond = model.encode(prompts)
    return cond.states.numpy(), cond.pooled.numpy()


def _python_run(model, backend, *, static=None, seed=0, prompts=PROMPTS[:1]):
    from ddit_export.api import build_settings
    from ddit_export.runtime.generate import generate

    gs = build_settings(model, prompts=prompts, steps=STEPS, seed=seed, static=static)
    with backend:
        return generate(model, backend, gs, progress=False, decode=False)


def _psnr(a, b):
    from ddit_export.quality.metrics import psnr

    # a pixel model's latents are the image in [-1, 1]
    return float(psnr(np.clip(a, -1, 1), np.clip(b, -1, 1)).min())


def test_denoise_static_schedule_matches_torch(cpp_lib, aoti_bundle, tiny_model):
    from ddit_export.runtime.backends.torch import TorchBackend
    from ddit_export.runtime.bundle_model import open_bundle

    static = (1, 1, 1, 4, 4, 2, 2, 2, 1, 2, 1, 1)
    model, _ = open_bundle(aoti_bundle)
    states, pooled = _embeddings(model, PROMPTS[:1])
    ref = _python_run(tiny_model, TorchBackend(tiny_model.transformer), static=static, seed=3).latents.numpy()
    rt = cpp_lib.open(aoti_bundle)
    try:
        got = cpp_lib.denoise(rt, states, pooled, steps=STEPS, seed=3, schedule=schedule("static", static=static))
        assert [s.size for s in cpp_lib.trace(rt)] == list(static)
    finally:
        cpp_lib.close(rt)
    assert _psnr(got, ref) >= 40.0


def test_denoise_rule_same_trace_as_onnxruntime(cpp_lib, aoti_bundle):
    from ddit_export.runtime.bundle_model import open_bundle

    model, ort = open_bundle(aoti_bundle)
    states, pooled = _embeddings(model, PROMPTS)
    py = _python_run(model, ort, prompts=PROMPTS)
    rt = cpp_lib.open(aoti_bundle)
    try:
        got = cpp_lib.denoise(rt, states, pooled, steps=STEPS, seed=0)  # the bundle's default policy: the rule
        trace = cpp_lib.trace(rt)
    finally:
        cpp_lib.close(rt)
    assert [s.size for s in trace] == py.trace.sizes
    assert len(set(py.trace.sizes)) > 1, "the rule should choose more than one size here"
    assert [s.reason.decode() for s in trace] == [s.reason for s in py.trace.steps]
    for a, b in zip(py.trace.steps, trace):
        assert b.sigma == pytest.approx(a.timestep, rel=1e-6)
        assert b.sigmas().keys() == a.sigmas.keys()
        for k, v in a.sigmas.items():  # latents differ by float rounding between the backends, not more
            assert b.sigmas()[k] == pytest.approx(v, rel=1e-3)
    assert _psnr(got, py.latents.numpy()) >= 40.0


def test_initial_latents_instead_of_seed(cpp_lib, aoti_bundle):
    from ddit_export.runtime.bundle_model import open_bundle
    from ddit_export.runtime.generate import initial_noise

    model, _ = open_bundle(aoti_bundle)
    states, pooled = _embeddings(model, PROMPTS[:1])
    noise = initial_noise(model.geometry(), 1, 5).numpy()
    rt = cpp_lib.open(aoti_bundle)
    try:
        a = cpp_lib.denoise(rt, states, pooled, steps=4, seed=5)
        b = cpp_lib.denoise(rt, states, pooled, steps=4, latents=noise)
        c = cpp_lib.denoise(rt, states, pooled, steps=4, seed=6)
    finally:
        cpp_lib.close(rt)
    np.testing.assert_array_equal(a, b)  # the seed draws FluxPipeline's noise, bit for bit
    assert np.abs(a - c).max() > 1e-3


def _edit_manifest(folder, edit):
    path = folder / "manifest.json"
    d = json.loads(path.read_text())
    edit(d)
    path.write_text(json.dumps(d))


def test_bad_inputs_return_error_codes(cpp_lib, aoti_bundle, tiny_bundle, tmp_path):
    from tests.runtime.cpp_api import schedule as mk

    def fails(code, needle, f, *a, **k):
        with pytest.raises(DDiTError) as e:
            f(*a, **k)
        assert e.value.code == code and needle in e.value.message, e.value
        return e.value.message

    fails(2, "not found", cpp_lib.open, tmp_path / "missing")
    fails(2, "no AOTInductor package", cpp_lib.open, tiny_bundle)  # an ONNX-only bundle
    fails(2, "no AOTInductor variant for patch size 8", cpp_lib.open, aoti_bundle, [1, 8])
    damaged = shutil.copytree(aoti_bundle, tmp_path / "damaged")
    (damaged / "manifest.json").write_text((aoti_bundle / "manifest.json").read_text()[:500])
    fails(2, "not valid JSON", cpp_lib.open, damaged)
    newer = shutil.copytree(aoti_bundle, tmp_path / "newer")
    _edit_manifest(newer, lambda d: d["aoti"].update(aoti_version=99))
    fails(2, "AOTInductor section version 99 is newer", cpp_lib.open, newer)
    _edit_manifest(newer, lambda d: d.update(format_version=99))
    fails(2, "bundle format version 99 is newer", cpp_lib.open, newer)
    _edit_manifest(newer, lambda d: (d.update(format_version=1), d["aoti"].update(aoti_version=1),
                                     d["model"].pop("height")))
    fails(2, "height", cpp_lib.open, newer)
    truncated = shutil.copytree(aoti_bundle, tmp_path / "truncated")
    with open(truncated / "weights.bin", "r+b") as f:
        f.truncate(1000)
    fails(2, "truncated", cpp_lib.open, truncated)

    rt = cpp_lib.open(aoti_bundle)
    try:
        info = cpp_lib.info(rt)
        states = np.zeros((1, info.text_len, info.joint_dim), np.float32)
        pooled = np.zeros((1, info.pooled_dim), np.float32)
        fails(1, "request.states", cpp_lib.denoise, rt, states[:, :-1], pooled, steps=4)
        fails(1, "request.pooled", cpp_lib.denoise, rt, states, np.zeros((1, 3), np.float32), steps=4)
        fails(2, "not available", cpp_lib.denoise, rt, states, pooled, steps=4, schedule=mk("static", static=(1, 8, 1, 1)))
        fails(3, "probe", cpp_lib.denoise, rt, states, pooled, steps=4, schedule=mk("probe"))
        fails(1, "NaN", cpp_lib.denoise, rt, states, pooled, steps=4,
              latents=np.full((1, info.tokens, info.channels), np.nan, np.float32))
        cpp_lib.denoise(rt, states, pooled, steps=4)  # the handle still works after the errors
    finally:
        cpp_lib.close(rt)


def test_ctest(cpp_build):
    r = subprocess.run(["ctest", "--output-on-failure"], cwd=cpp_build, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "c_api_bundle" in r.stdout  # the bundle checks ran too


def test_ddit_run_example(cpp_build, cpp_lib, aoti_bundle, tmp_path):
    from ddit_export.runtime.bundle_model import open_bundle

    model, _ = open_bundle(aoti_bundle)
    states, pooled = _embeddings(model, PROMPTS[:1])
    np.save(tmp_path / "states.npy", states)
    np.save(tmp_path / "pooled.npy", pooled)
    cmd = [str(cpp_build / "ddit-run"), str(aoti_bundle), "--states", str(tmp_path / "states.npy"),
           "--pooled", str(tmp_path / "pooled.npy"), "--steps", "6", "--seed", "1", "--ladder", "1,2,1",
           "--out", str(tmp_path / "latents.npy"), "--trace", str(tmp_path / "trace.json")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    trace = json.loads((tmp_path / "trace.json").read_text())
    assert [s["size"] for s in trace["steps"]] == [1, 4, 4, 2, 2, 1]
    rt = cpp_lib.open(aoti_bundle)
    try:
        want = cpp_lib.denoise(rt, states, pooled, steps=6, seed=1, schedule=schedule("ladder", head=1, n4=2, tail=1))
    finally:
        cpp_lib.close(rt)
    np.testing.assert_array_equal(np.load(tmp_path / "latents.npy"), want)
    bad = subprocess.run(cmd[:2] + ["--states", str(tmp_path / "nope.npy"), "--pooled", "x"], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ")
