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


def _ddit_run(cpp_build, bundle, model, tmp_path):
    """The start of a ddit-run command on ``bundle``, fed the first prompt's embeddings (saved in ``tmp_path``) and
    writing latents.npy and trace.json there; options follow. Returns (command, states, pooled)."""
    states, pooled = _embeddings(model, PROMPTS[:1])
    np.save(tmp_path / "states.npy", states)
    np.save(tmp_path / "pooled.npy", pooled)
    cmd = [str(cpp_build / "ddit-run"), str(bundle), "--states", str(tmp_path / "states.npy"),
           "--pooled", str(tmp_path / "pooled.npy"), "--out", str(tmp_path / "latents.npy"),
           "--trace", str(tmp_path / "trace.json")]
    return cmd, states, pooled


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
    quantized = shutil.copytree(aoti_bundle, tmp_path / "quantized")  # issue 22: an int8 bundle, one message
    _edit_manifest(quantized, lambda d: d.update(precision="int8"))
    assert "int8 (quantized) bundle runs on ONNX Runtime only" in fails(3, "int8", cpp_lib.open, quantized)
    _edit_manifest(newer, lambda d: (d.update(format_version=1), d["aoti"].update(aoti_version=1),
                                     d["model"].pop("height")))
    fails(2, "height", cpp_lib.open, newer)
    truncated = shutil.copytree(aoti_bundle, tmp_path / "truncated")
    with open(truncated / "weights.bin", "r+b") as f:
        f.truncate(1000)
    fails(2, "sha256 mismatch", cpp_lib.open, truncated)  # verified at open (the default)
    fails(2, "truncated", cpp_lib.open_ex, truncated, verify=False)

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
    cmd, states, pooled = _ddit_run(cpp_build, aoti_bundle, model, tmp_path)
    cmd += ["--steps", "6", "--seed", "1", "--ladder", "1,2,1"]
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


# --- C API 2: step cache, Python's trace format, verified bundles, strict inputs, threads (issue 21) ---

CACHES = {
    "taylor-3-o1": dict(mode="taylor", interval=3, order=1),
    "taylor-3-o2": dict(mode="taylor", interval=3, order=2),
    "threshold": dict(mode="taylor", interval=6, order=1, threshold=1.0),  # computes some steps early here
    "plan": dict(mode="plan", plan=(1, 1, 1, 0, 1, 0, 0, 1, 1, 0, 1, 1)),
    "switch": dict(mode="taylor", interval=6, order=1, switch=True),  # a size change is computed, not extrapolated
}


@pytest.fixture(scope="module")
def aoti_python(aoti_bundle):
    from ddit_export.runtime.bundle_model import open_bundle

    return open_bundle(aoti_bundle, backend="aoti", threads=1)


def _python_cached(model, backend, cache, *, seed=0):
    from ddit_export.api import build_settings
    from ddit_export.runtime.generate import generate
    from ddit_export.settings import CacheSettings

    c = CacheSettings(**{k: (tuple(v) if k == "plan" else v) for k, v in cache.items()})
    gs = build_settings(model, prompts=PROMPTS[:1], steps=STEPS, seed=seed, cache=c)
    return generate(model, backend, gs, progress=False, decode=False)


@pytest.mark.parametrize("name", list(CACHES))
def test_step_cache_equals_python(cpp_lib, aoti_bundle, aoti_python, name, tmp_path):
    from click.testing import CliRunner

    from ddit_export.cli import main
    from ddit_export.schedule.trace import Trace
    from tests.runtime.cpp_api import cache as mk_cache

    model, backend = aoti_python
    py = _python_cached(model, backend, CACHES[name], seed=2)
    assert "cached" in py.trace.kinds and "model" in py.trace.kinds
    if CACHES[name].get("threshold"):  # the error indicator decides some steps (not the interval alone)
        plain = {k: v for k, v in CACHES[name].items() if k != "threshold"}
        assert _python_cached(model, backend, plain, seed=2).trace.kinds != py.trace.kinds
    if CACHES[name].get("switch"):  # the switch refresh decides some steps here
        plain = dict(CACHES[name], switch=False)
        assert _python_cached(model, backend, plain, seed=2).trace.kinds != py.trace.kinds
    states, pooled = _embeddings(model, PROMPTS[:1])
    rt = cpp_lib.open_ex(aoti_bundle, threads=1)
    try:
        got = cpp_lib.denoise(rt, states, pooled, steps=STEPS, seed=2, cache=mk_cache(**CACHES[name]))
        trace = cpp_lib.trace(rt)
        doc = cpp_lib.trace_json(rt)
    finally:
        cpp_lib.close(rt)
    assert [s.kind.decode() for s in trace] == py.trace.kinds
    assert [s.size for s in trace] == py.trace.sizes
    assert [s.flops for s in trace] == [s.flops for s in py.trace.steps]  # flops.py's count, ported
    assert _psnr(got, py.latents.numpy()) >= 40.0
    # the JSON is Python's ddit-trace/1: Trace.load reads it and `ddit-export schedule` shows it
    path = tmp_path / "cpp.json"
    path.write_text(doc)
    d = json.loads(doc)
    want = py.trace.to_dict()
    assert set(want) <= set(d) and {"runtime", "backend", "verified", "threads"} <= set(d)
    assert (d["runtime"], d["backend"], d["verified"], d["threads"]) == ("ddit-cpp", "aoti", True, 1)
    assert [list(s) for s in d["steps"]] == [list(s) for s in want["steps"]]  # the same keys, in order
    for k in ("model", "grid", "fine_flops_per_step", "format", "coarse_fraction", "total_flops",
              "flops_ratio", "cached_fraction"):
        assert d[k] == pytest.approx(want[k]), k
    assert d["settings"]["generate"]["cache"] == want["settings"]["generate"]["cache"]
    t = Trace.load(path)
    assert t.kinds == py.trace.kinds and t.sizes == py.trace.sizes and t.flops == py.trace.flops
    assert [s.timestep for s in t.steps] == pytest.approx([s.timestep for s in py.trace.steps], rel=1e-7)
    r = CliRunner().invoke(main, ["schedule", str(path), "--plot", str(tmp_path / "cpp.png")],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "cpp.png").stat().st_size > 0 and "FLOPs vs fine-only" in r.output


def test_cache_profile_of_the_manifest(cpp_lib, aoti_bundle, aoti_python, tmp_path):
    """request.cache NULL = the manifest's cache profile; ddit_cache_defaults reads it; a bad one is refused."""
    from ddit_export.runtime.bundle_model import open_bundle

    folder = shutil.copytree(aoti_bundle, tmp_path / "profiled")
    profile = dict(mode="taylor", interval=3, order=2, warmup=2, tail=2, threshold=None, plan=None)
    _edit_manifest(folder, lambda d: d.update(cache=profile))
    model, backend = open_bundle(folder, backend="aoti", threads=1)
    py = _python_cached(model, backend, {k: v for k, v in profile.items() if v is not None})
    states, pooled = _embeddings(model, PROMPTS[:1])
    rt = cpp_lib.open_ex(folder, verify=False)
    try:
        c = cpp_lib.cache_defaults(rt)
        assert (c.mode, c.interval, c.order, c.warmup, c.tail, c.threshold, c.n_plan) == (b"taylor", 3, 2, 2, 2, 0, 0)
        got = cpp_lib.denoise(rt, states, pooled, steps=STEPS, seed=0)  # no request.cache: the profile
        assert [s.kind.decode() for s in cpp_lib.trace(rt)] == py.trace.kinds
    finally:
        cpp_lib.close(rt)
    assert _psnr(got, py.latents.numpy()) >= 40.0
    _edit_manifest(folder, lambda d: d.update(cache=dict(profile, order=5)))
    with pytest.raises(DDiTError) as e:
        cpp_lib.open_ex(folder, verify=False)
    assert e.value.code == 2 and "cache order must be 0, 1 or 2" in e.value.message


def test_bad_cache_settings(cpp_lib, aoti_bundle, aoti_python):
    from tests.runtime.cpp_api import cache as mk

    states, pooled = _embeddings(aoti_python[0], PROMPTS[:1])
    rt = cpp_lib.open_ex(aoti_bundle)
    try:
        for c, needle in [(mk("often"), "cache mode"), (mk(interval=0), "interval"), (mk(order=3), "order"),
                          (mk(warmup=0), "warm-up"), (mk(tail=-1), "tail"), (mk(threshold=-0.1), "threshold"),
                          (mk(threshold=float("nan")), "threshold"), (mk("plan"), "mode 'plan' needs a plan"),
                          (mk("plan", plan=(0,) + (1,) * 11), "starting with 1"),
                          (mk("plan", plan=(1, 2) + (1,) * 10), "1 (computed) / 0 (cached)"),
                          (mk("plan", plan=(1, 0, 1)), "3 entries for 12 steps"),
                          (mk("plan", plan=(1,) * 12, switch=True), "switch refresh goes with mode 'taylor'")]:
            with pytest.raises(DDiTError) as e:
                cpp_lib.denoise(rt, states, pooled, steps=STEPS, cache=c)
            assert e.value.code == 1 and needle in e.value.message, (needle, e.value.message)
        odd = mk()
        odd.on_switch = 2  # an API 4 caller's unset tail padding
        with pytest.raises(DDiTError) as e:
            cpp_lib.denoise(rt, states, pooled, steps=STEPS, cache=odd)
        assert e.value.code == 1 and "cache.on_switch must be 0 or 1, got 2" in e.value.message
    finally:
        cpp_lib.close(rt)


def test_strict_inputs(cpp_lib, aoti_bundle):
    rt = cpp_lib.open_ex(aoti_bundle)
    info = cpp_lib.info(rt)
    states = np.zeros((1, info.text_len, info.joint_dim), np.float32)
    pooled = np.zeros((1, info.pooled_dim), np.float32)

    def refused(needle, *a, **k):
        with pytest.raises(DDiTError) as e:
            cpp_lib.denoise(rt, *a, **k)
        assert e.value.code == 1 and needle in e.value.message, (needle, e.value.message)

    try:
        bad = states.copy()
        bad[0, 1, 2] = np.nan
        refused("request.states contain NaN", bad, pooled, steps=4)
        bad[0, 1, 2] = np.inf
        refused("request.states contain NaN or infinite", bad, pooled, steps=4)
        badp = pooled.copy()
        badp[0, -1] = -np.inf
        refused("request.pooled contain NaN or infinite", states, badp, steps=4)
        for tau in (0.0, -1.0, float("nan"), float("inf")):
            refused("schedule.tau", states, pooled, steps=8, schedule=schedule("ddit", tau=tau))
        for eps in (0.0, 1.0, float("nan")):
            refused("schedule.eps", states, pooled, steps=8, schedule=schedule("ddit", eps=eps))
        refused("request.steps must be >= 1", states, pooled, steps=-1)
        refused("request.batch must be >= 1", states, pooled, steps=4, batch=0)
        refused("request.pooled", states, np.zeros((1, info.pooled_dim + 1), np.float32), steps=4)
        refused("request.pooled", np.concatenate([states, states]), pooled, steps=4, batch=2)
        refused("request.guidance", states, pooled, steps=4, guidance=float("nan"))
        refused("schedule.carry must be 0 (off) or 1 (fine), got 2", states, pooled, steps=4,
                schedule=schedule("static", static=(1, 2, 1, 1), carry=2))
        cpp_lib.denoise(rt, states, pooled, steps=0)  # 0: the bundle's default steps
        assert len(cpp_lib.trace(rt)) == info.default_steps
    finally:
        cpp_lib.close(rt)
    with pytest.raises(DDiTError) as e:
        cpp_lib.open_ex(aoti_bundle, threads=0)
    assert e.value.code == 1 and "threads" in e.value.message


def _flip_byte(path, at):
    with open(path, "r+b") as f:
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 1]))


def test_verified_open(cpp_lib, aoti_bundle, aoti_python, tmp_path):
    states, pooled = _embeddings(aoti_python[0], PROMPTS[:1])
    rt = cpp_lib.open(aoti_bundle)  # ddit_open verifies (the defaults)
    try:
        assert cpp_lib.info(rt).verified == 1 and cpp_lib.info(rt).threads == 1
    finally:
        cpp_lib.close(rt)
    for name in ("weights.bin", "aoti/transformer.pt2"):
        damaged = shutil.copytree(aoti_bundle, tmp_path / name.replace("/", "_"))
        _flip_byte(damaged / name, (damaged / name).stat().st_size // 2)  # same size, one bit off
        with pytest.raises(DDiTError) as e:
            cpp_lib.open_ex(damaged)
        assert e.value.code == 2 and "sha256 mismatch" in e.value.message and name in e.value.message
        assert "damaged" in e.value.message
    rt = cpp_lib.open_ex(tmp_path / "weights.bin", verify=False)  # skipped: it opens, and says so
    try:
        assert cpp_lib.info(rt).verified == 0
        cpp_lib.denoise(rt, states, pooled, steps=4)
        assert json.loads(cpp_lib.trace_json(rt))["verified"] is False
    finally:
        cpp_lib.close(rt)
    unhashed = shutil.copytree(aoti_bundle, tmp_path / "unhashed")
    _edit_manifest(unhashed, lambda d: d["files"].pop("aoti/transformer.pt2"))
    with pytest.raises(DDiTError) as e:
        cpp_lib.open_ex(unhashed)
    assert e.value.code == 2 and "no sha256 for aoti/transformer.pt2" in e.value.message


@pytest.mark.parametrize("portable", [False, True])
@pytest.mark.parametrize("n", [0, 1, 55, 56, 63, 64, 65, 119, 120, 1000, (1 << 20) + 3])
def test_sha256_equals_hashlib(cpp_lib, aoti_bundle, tmp_path, monkeypatch, n, portable):
    """The C++ SHA-256 over weights.bin of n bytes (every padding case), with the x86 SHA extensions where the CPU
    has them and the portable code: the manifest holds hashlib's digest, so a correct hash passes verification and
    the open stops later, at the (too short) weights."""
    import hashlib

    monkeypatch.setenv("DDIT_SHA256_PORTABLE", "1" if portable else "0")

    folder = tmp_path / "b"
    folder.mkdir()
    shutil.copy(aoti_bundle / "manifest.json", folder / "manifest.json")
    (folder / "aoti").symlink_to(aoti_bundle / "aoti")
    data = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes()
    (folder / "weights.bin").write_bytes(data)
    _edit_manifest(folder, lambda d: d["files"].update({"weights.bin": hashlib.sha256(data).hexdigest()}))
    with pytest.raises(DDiTError) as e:
        cpp_lib.open_ex(folder)
    assert e.value.code == 2 and "sha256 mismatch" not in e.value.message, e.value.message
    assert "truncated" in e.value.message or "cannot read" in e.value.message
    _edit_manifest(folder, lambda d: d["files"].update({"weights.bin": hashlib.sha256(data + b"x").hexdigest()}))
    with pytest.raises(DDiTError) as e:
        cpp_lib.open_ex(folder)
    assert "sha256 mismatch" in e.value.message


def test_threads_setting(cpp_lib, aoti_bundle, aoti_python):
    """Two handles with different thread counts, used alternately: each reports its own, both give the result."""
    states, pooled = _embeddings(aoti_python[0], PROMPTS[:1])
    one, two = cpp_lib.open_ex(aoti_bundle, threads=1), cpp_lib.open_ex(aoti_bundle, threads=2, verify=False)
    try:
        assert (cpp_lib.info(one).threads, cpp_lib.info(two).threads) == (1, 2)
        a = cpp_lib.denoise(one, states, pooled, steps=6, seed=4, schedule=schedule("static", static=(1, 2, 4, 2, 1, 1)))
        b = cpp_lib.denoise(two, states, pooled, steps=6, seed=4, schedule=schedule("static", static=(1, 2, 4, 2, 1, 1)))
        c = cpp_lib.denoise(one, states, pooled, steps=6, seed=4, schedule=schedule("static", static=(1, 2, 4, 2, 1, 1)))
        assert json.loads(cpp_lib.trace_json(two))["threads"] == 2
    finally:
        cpp_lib.close(one)
        cpp_lib.close(two)
    np.testing.assert_array_equal(a, c)
    assert _psnr(a, b) >= 60.0  # threads change summation order at most


def test_python_aoti_backend_threads(aoti_bundle):
    """generate --threads with --backend aoti: the Python AOTInductor backend sets torch's threads for its runs."""
    from ddit_export.errors import ConfigError
    from ddit_export.runtime.backends.aoti import AotiBackend
    from ddit_export.runtime.bundle_model import open_bundle

    before = torch.get_num_threads()
    try:
        model, backend = open_bundle(aoti_bundle, backend="aoti", threads=2, verify=False)
        assert backend.threads == 2
        torch.set_num_threads(1)
        _python_run(model, backend, static=(1,) * STEPS)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ConfigError, match="threads"):
        AotiBackend(aoti_bundle, threads=0, verify=False)


def test_ddit_run_threads_verify_cache(cpp_build, cpp_lib, aoti_bundle, aoti_python, tmp_path):
    from tests.runtime.cpp_api import cache as mk_cache

    cmd, states, pooled = _ddit_run(cpp_build, aoti_bundle, aoti_python[0], tmp_path)
    cmd += ["--steps", "10", "--seed", "1", "--threads", "2", "--no-verify", "--cache", "taylor", "--cache-interval",
            "3", "--cache-order", "2", "--cache-warmup", "2", "--cache-tail", "2"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    trace = json.loads((tmp_path / "trace.json").read_text())
    assert (trace["threads"], trace["verified"]) == (2, False)
    kinds = [s["kind"] for s in trace["steps"]]
    assert kinds == ["model", "model", "cached", "cached", "model", "cached", "cached", "model", "model", "model"]
    rt = cpp_lib.open_ex(aoti_bundle, threads=2)
    try:
        want = cpp_lib.denoise(rt, states, pooled, steps=10, seed=1,
                               cache=mk_cache(interval=3, order=2, warmup=2, tail=2))
    finally:
        cpp_lib.close(rt)
    np.testing.assert_array_equal(np.load(tmp_path / "latents.npy"), want)
    order = cmd.index("--cache-order") + 1
    bad = subprocess.run(cmd[:order] + ["7"] + cmd[order + 1:], capture_output=True, text=True)
    assert bad.returncode == 2 and "--cache-order must be 0, 1 or 2, got 7" in bad.stderr
    twice = subprocess.run(cmd + ["--cache-order", "1"], capture_output=True, text=True)
    assert twice.returncode == 2 and "--cache-order given twice" in twice.stderr
    switch = subprocess.run(cmd + ["--cache-switch"], capture_output=True, text=True)  # the flag reaches the cache
    assert switch.returncode == 0, switch.stderr
    assert json.loads((tmp_path / "trace.json").read_text())["settings"]["generate"]["cache"]["switch"] is True
    both = subprocess.run(cmd + ["--cache-switch", "--no-cache-switch"], capture_output=True, text=True)
    assert both.returncode == 2 and "contradict" in both.stderr


# --- C API 3: detail carry (runtime/carry.py, ported: src/carry.cpp) ---

CARRY_STATIC = (2, 1, 1, 4, 4, 2, 1, 2, 4, 2, 1, 1)  # a coarse step before the first fine one runs as it is
CARRY_SCHEDULES = {  # name: (build_settings keywords, the C API schedule)
    "ladder": (dict(policy="ladder:head=1,n4=4,tail=3"), dict(policy="ladder", head=1, n4=4, tail=3)),
    "static": (dict(static=CARRY_STATIC), dict(policy="static", static=CARRY_STATIC)),
}
CARRY_CACHES = {"plain": dict(mode="off"), "cached": dict(mode="taylor", interval=3, order=1, warmup=2, tail=1)}


def _python_carry(model, backend, *, carry, cache, seed=2, **schedule_kw):
    from ddit_export.api import build_settings
    from ddit_export.runtime.generate import generate
    from ddit_export.settings import CacheSettings

    gs = build_settings(model, prompts=PROMPTS[:1], steps=STEPS, seed=seed, cache=CacheSettings(**cache),
                        carry=carry, **schedule_kw)
    return generate(model, backend, gs, progress=False, decode=False)


@pytest.mark.parametrize("cache", list(CARRY_CACHES))
@pytest.mark.parametrize("kind", list(CARRY_SCHEDULES))
def test_carry_equals_python(cpp_lib, aoti_bundle, aoti_python, kind, cache):
    """schedule.carry = 1 ("fine"): the same sizes and computed/cached steps as Python's generate on the same
    AOTInductor package, latents >= 40 dB from Python's, and carry changes them by far more than that."""
    from tests.runtime.cpp_api import cache as mk_cache

    model, backend = aoti_python
    py_kw, cpp_kw = CARRY_SCHEDULES[kind]
    c = CARRY_CACHES[cache]
    py = _python_carry(model, backend, carry="fine", cache=c, **py_kw)
    py_off = _python_carry(model, backend, carry="off", cache=c, **py_kw)
    assert py.trace.sizes == py_off.trace.sizes and {1, 2, 4} <= set(py.trace.sizes)
    if cache == "cached":  # some coarse steps computed (carried), some extrapolated (not carried again)
        kinds = set(zip(py.trace.sizes, py.trace.kinds))
        assert {(2, "cached"), (4, "model")} <= kinds or {(4, "cached"), (2, "model")} <= kinds, kinds
    states, pooled = _embeddings(model, PROMPTS[:1])
    rt = cpp_lib.open_ex(aoti_bundle, threads=1)
    try:
        got = cpp_lib.denoise(rt, states, pooled, steps=STEPS, seed=2, schedule=schedule(carry="fine", **cpp_kw),
                              cache=mk_cache(**c))
        trace = cpp_lib.trace(rt)
        doc = json.loads(cpp_lib.trace_json(rt))
        off = cpp_lib.denoise(rt, states, pooled, steps=STEPS, seed=2, schedule=schedule(**cpp_kw),
                              cache=mk_cache(**c))
        doc_off = json.loads(cpp_lib.trace_json(rt))
    finally:
        cpp_lib.close(rt)
    assert [s.size for s in trace] == py.trace.sizes
    assert [s.kind.decode() for s in trace] == py.trace.kinds
    assert [s.flops for s in trace] == [s.flops for s in py.trace.steps]  # carry costs no model call
    want, want_off = py.latents.numpy(), py_off.latents.numpy()
    assert _psnr(got, want) >= 40.0 and _psnr(off, want_off) >= 40.0
    gap = np.abs(want - want_off).max()
    assert gap > 1e-3 and np.abs(got - want).max() < gap / 100, (gap, np.abs(got - want).max())
    # the trace's settings name carry only when it is set, as the manifest does
    assert doc["settings"]["generate"]["schedule"]["carry"] == "fine"
    assert "carry" not in doc_off["settings"]["generate"]["schedule"]


def test_carry_profile_of_the_manifest(cpp_lib, aoti_bundle, tmp_path):
    """A manifest schedule with carry "fine" opens; ddit_schedule_defaults reports carry 1 and a request without a
    schedule uses it, as Python's open_bundle does; an unknown carry is refused at open, naming it."""
    from ddit_export.api import build_settings
    from ddit_export.runtime.bundle_model import open_bundle
    from ddit_export.runtime.generate import generate

    folder = shutil.copytree(aoti_bundle, tmp_path / "carried")
    _edit_manifest(folder, lambda d: d["schedule"].update(carry="fine"))
    model, backend = open_bundle(folder, backend="aoti", threads=1)
    assert model.schedule_defaults.carry == "fine"
    states, pooled = _embeddings(model, PROMPTS)
    runs = {c: generate(model, backend, build_settings(model, prompts=PROMPTS, steps=STEPS, seed=0, carry=c),
                        progress=False, decode=False) for c in (None, "off")}  # None: the profile's
    py = runs[None]
    assert py.trace.sizes[0] == 1 and max(py.trace.sizes) > 1, "the rule should go coarse after fine steps"
    rt = cpp_lib.open_ex(folder, verify=False)
    try:
        d = cpp_lib.defaults(rt)
        assert d.carry == 1 and d.policy == b"ddit"
        got = cpp_lib.denoise(rt, states, pooled, steps=STEPS, seed=0)  # no request.schedule: the profile
        sizes = [s.size for s in cpp_lib.trace(rt)]
        assert json.loads(cpp_lib.trace_json(rt))["settings"]["generate"]["schedule"]["carry"] == "fine"
        np.testing.assert_array_equal(cpp_lib.denoise(rt, states, pooled, steps=STEPS, seed=0, schedule=d), got)
    finally:
        cpp_lib.close(rt)
    assert sizes == py.trace.sizes
    assert _psnr(got, py.latents.numpy()) >= 40.0
    assert np.abs(py.latents.numpy() - runs["off"].latents.numpy()).max() > 1e-3  # the profile's carry took effect
    rt = cpp_lib.open_ex(aoti_bundle, verify=False)
    try:
        assert cpp_lib.defaults(rt).carry == 0  # a manifest without carry: off
    finally:
        cpp_lib.close(rt)
    _edit_manifest(folder, lambda d: d["schedule"].update(carry="sideways"))
    with pytest.raises(DDiTError) as e:
        cpp_lib.open_ex(folder, verify=False)
    assert e.value.code == 3 and "carry 'sideways'" in e.value.message, e.value


def test_ddit_run_carry(cpp_build, cpp_lib, aoti_bundle, aoti_python, tmp_path):
    run, states, pooled = _ddit_run(cpp_build, aoti_bundle, aoti_python[0], tmp_path)
    opts = ["--steps", "6", "--seed", "1", "--ladder", "1,2,1"]
    cmd = run + opts + ["--carry", "fine"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    trace = json.loads((tmp_path / "trace.json").read_text())
    assert [s["size"] for s in trace["steps"]] == [1, 4, 4, 2, 2, 1]
    assert trace["settings"]["generate"]["schedule"]["carry"] == "fine"
    rt = cpp_lib.open(aoti_bundle)
    try:
        ladder = dict(head=1, n4=2, tail=1)
        want = cpp_lib.denoise(rt, states, pooled, steps=6, seed=1, schedule=schedule("ladder", carry="fine", **ladder))
        off = cpp_lib.denoise(rt, states, pooled, steps=6, seed=1, schedule=schedule("ladder", **ladder))
    finally:
        cpp_lib.close(rt)
    np.testing.assert_array_equal(np.load(tmp_path / "latents.npy"), want)
    assert np.abs(want - off).max() > 1e-3
    at = cmd.index("--carry") + 1
    bad = subprocess.run(cmd[:at] + ["sideways"] + cmd[at + 1:], capture_output=True, text=True)
    assert bad.returncode == 2 and "--carry must be off or fine, got 'sideways'" in bad.stderr
    # a bundle whose profile (the rule here) carries: another policy without --carry runs uncarried, as Python's
    # build_settings; --carry fine still turns it on
    folder = shutil.copytree(aoti_bundle, tmp_path / "carried")
    _edit_manifest(folder, lambda d: d["schedule"].update(carry="fine"))
    on_folder = [run[0], str(folder)] + run[2:] + opts
    r = subprocess.run(on_folder, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "carry" not in json.loads((tmp_path / "trace.json").read_text())["settings"]["generate"]["schedule"]
    np.testing.assert_array_equal(np.load(tmp_path / "latents.npy"), off)
    r = subprocess.run(on_folder + ["--carry", "fine"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "latents.npy"), want)
