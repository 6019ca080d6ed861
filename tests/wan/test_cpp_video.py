"""The C++ runtime on video bundles (issue 23 item 3, bundle format 2): the tiny-wan AOTInductor bundle opened through
the C API generates what `ddit-export generate --backend aoti` generates (the same size every step, the latents
and the decoded frames identical, the same FLOPs) under the profile, the rule with either ``video_std``, and a
ladder with detail carry and the step cache; the scheduler alone decides as ddit.py does on (F, h, w) grids;
`ddit-run` writes the clip's frames; every bad input is one error with its code."""
import ctypes as C
import json
import shutil
import subprocess

import numpy as np
import pytest
import torch

from tests.runtime.cpp_api import Request, DDiTError, cache, fptr, schedule

pytestmark = pytest.mark.cpp

STEPS = 12
PROMPTS = ["a large red circle moving right on a black background",
           "a small blue square moving up on a white background"]
ARGUMENT, BUNDLE, UNSUPPORTED = 1, 2, 3


@pytest.fixture(scope="module")
def rt(cpp_lib, wan_aoti):
    h = cpp_lib.open_ex(wan_aoti, threads=torch.get_num_threads())
    yield h
    cpp_lib.close(h)


def _request(prompts, steps=STEPS, sched=None, step_cache=None):
    arr = (C.c_char_p * len(prompts))(*[p.encode() for p in prompts])
    q = Request(batch=len(prompts), steps=steps, guidance=1.0, seed=0)
    q.prompts = C.cast(arr, C.POINTER(C.c_char_p))
    q._keep = (arr, sched, step_cache)
    if sched is not None:
        q.schedule = C.pointer(sched)
    if step_cache is not None:
        q.cache = C.pointer(step_cache)
    return q


def _cpp(lib, rt, q):
    """(latents, frames uint8 (B, F, H, W, 3), trace dict) of one C++ generation."""
    info = lib.info(rt)
    lat = np.zeros((q.batch, info.tokens, info.channels), np.float32)
    lib.call("ddit_denoise", rt, C.byref(q), fptr(lat), C.c_size_t(lat.size))
    trace = json.loads(lib.trace_json(rt))
    px = np.zeros((q.batch, info.frames, info.height, info.width, 3), np.uint8)
    lib.call("ddit_decode", rt, fptr(lat), C.c_size_t(lat.size), q.batch, px.ctypes.data_as(C.POINTER(C.c_uint8)),
             C.c_size_t(px.size))
    return lat, px, trace


def _python(bundle, **kw):
    from ddit_export.api import generate_images

    res, _ = generate_images(bundle=bundle, backend="aoti", prompts=PROMPTS, seed=0, steps=STEPS, out=None,
                             warn=lambda line: None, **kw)
    frames = np.stack([np.stack([np.asarray(f) for f in clip]) for clip in res.images])
    return res, frames


def test_info_describes_the_clip(cpp_lib, rt, wan_aoti):
    from ddit_export.bundle import load

    info = cpp_lib.info(rt)
    m = load(wan_aoti)
    assert (info.is_video, info.frames, info.grid_f, info.grid_h, info.grid_w) == (1, 8, 4, 8, 8)
    assert (info.tokens, info.channels) == (256, 2 * 4 * 4 * 3)  # Wan patches (2, 4, 4) of RGB
    assert info.pooled_dim == 0 and info.text_len == m.model["text_len"]
    assert info.has_text_encoder == 1 and info.has_decoder == 1
    assert list(info.sizes[:info.n_sizes]) == list(m.sizes)


def _mixed_tau(bundle, video_std):
    """A threshold between the rule's σ_2 values on this clip, so that its decisions mix sizes."""
    res, _ = _python(bundle, policy=f"ddit:tau=1e9,video_std={video_std}")
    s2 = [s.sigmas[2] for s in res.trace.steps if s.sigmas]
    return float(np.median(s2))


@pytest.mark.parametrize("case", ["profile", "ddit-clip", "ddit-frame", "ladder-carry-cache"])
def test_cpp_generates_the_python_clip(cpp_lib, rt, wan_aoti, case):
    """The same size every step, the latents and the frames identical (the same intra-op threads), the same FLOPs
    and the rule's σ_k within float rounding (C++ sums in order, numpy pairwise)."""
    if case == "profile":
        kw, sched, sc = {}, None, None
    elif case.startswith("ddit"):
        std = case.split("-")[1]
        tau = _mixed_tau(wan_aoti, std)
        kw = dict(policy=f"ddit:tau={tau!r},video_std={std}")
        sched, sc = schedule("ddit", tau=tau, video_std=std), None
    else:
        kw = dict(policy="ladder:head=2,n4=3,tail=4,carry=fine",
                  cache=dict(mode="taylor", interval=2, order=1, warmup=2, tail=1))
        sched = schedule("ladder", head=2, n4=3, tail=4, carry="fine")
        sc = cache("taylor", interval=2, order=1, warmup=2, tail=1)
    res, frames = _python(wan_aoti, **kw)
    lat, px, trace = _cpp(cpp_lib, rt, _request(PROMPTS, sched=sched, step_cache=sc))
    sizes = [s["size"] for s in trace["steps"]]
    assert sizes == res.trace.sizes
    if case.startswith("ddit"):
        assert len(set(sizes[3:])) > 1, sizes  # the threshold mixes sizes: the rule's decisions are compared
    if case == "ladder-carry-cache":
        assert [s["kind"] for s in trace["steps"]] == [s.kind for s in res.trace.steps]
        assert "cached" in [s["kind"] for s in trace["steps"]]
    np.testing.assert_array_equal(lat, res.latents.numpy())
    np.testing.assert_array_equal(px, frames)
    assert trace["grid"] == [4, 8, 8] == list(res.trace.grid)
    assert [s["flops"] for s in trace["steps"]] == [s.flops for s in res.trace.steps]
    assert [s["tokens"] for s in trace["steps"]] == [s.tokens for s in res.trace.steps]
    for c, p in zip(trace["steps"], res.trace.steps):
        assert c["sigmas"].keys() == {str(k) for k in p.sigmas}
        for k, v in p.sigmas.items():
            assert c["sigmas"][str(k)] == pytest.approx(v, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("video_std", ["clip", "frame"])
def test_scheduler_alone_decides_as_python_on_video_grids(cpp_lib, video_std):
    """ddit_scheduler_create_video against DDiTPolicy on the same latent histories: every decision and σ_k."""
    from ddit_export.schedule.ddit import DDiTPolicy
    from ddit_export.settings import ScheduleSettings

    grid, sizes, steps, b, c = (3, 8, 8), (1, 2, 4), 14, 2, 12
    g = np.random.default_rng(0)
    base = g.standard_normal((b, 3 * 8 * 8, c)).astype(np.float32)
    lat = [(base * (1 - i / steps) + g.standard_normal(base.shape) * 0.02 * (i % 3)).astype(np.float32)
           for i in range(steps)]
    d3 = np.stack([lat[i] - 3 * lat[i - 1] + 3 * lat[i - 2] - lat[i - 3] for i in range(3, steps)])
    from ddit_export.schedule.ddit import sigma_at

    tau = float(np.median([sigma_at(d.astype(np.float64), grid, 2, 0.4, video_std).max() for d in d3]))
    py = DDiTPolicy(ScheduleSettings(policy="ddit", tau=tau, video_std=video_std), grid, sizes)
    s = schedule("ddit", tau=tau, video_std=video_std)
    arr = (C.c_int * 3)(*sizes)
    handle = C.c_void_p()
    cpp_lib.call("ddit_scheduler_create_video", C.byref(s), 3, 8, 8, arr, 3, steps, C.byref(handle))
    from tests.runtime.cpp_api import Step

    hist, got, want = [], [], []
    try:
        for i in range(steps):
            hist.append(lat[i])
            d = py.decide(i, hist[-4:])
            st = Step()
            cpp_lib.call("ddit_scheduler_decide", handle, i, fptr(lat[i]), b, c, C.byref(st))
            want.append((d.size, d.reason))
            got.append((st.size, st.reason.decode()))
            assert st.sigmas().keys() == d.sigmas.keys()
            for k, v in d.sigmas.items():
                assert st.sigmas()[k] == pytest.approx(v, rel=1e-9)
            assert st.tokens == 3 * 8 * 8 // (d.size * d.size)
    finally:
        cpp_lib.lib.ddit_scheduler_free(handle)
    assert got == want
    assert len({k for k, _ in got[3:]}) > 1, got


def _ddit_run(build, *args):
    return subprocess.run([str(build / "ddit-run"), *map(str, args)], capture_output=True, text=True)


def test_ddit_run_writes_the_python_frames(cpp_build, wan_aoti, tmp_path):
    """`ddit-run VIDEO --prompt P --out clip.png` writes clip_f00.png ... clip_f07.png, the frames Python decodes."""
    from PIL import Image

    from ddit_export.api import generate_images

    res, _ = generate_images(bundle=wan_aoti, backend="aoti", prompts=PROMPTS[:1], seed=0, steps=STEPS, out=None,
                             warn=lambda line: None)
    r = _ddit_run(cpp_build, wan_aoti, "--prompt", PROMPTS[0], "--steps", STEPS, "--out", tmp_path / "clip.png",
                  "--threads", torch.get_num_threads())
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in tmp_path.glob("clip_f*.png"))
    assert names == [f"clip_f{i:02d}.png" for i in range(8)]
    for i, frame in enumerate(res.images[0]):
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / names[i]).convert("RGB")), np.asarray(frame))
    assert "sizes per step: " + ",".join(map(str, res.trace.sizes)) in r.stdout


def test_ddit_run_video_bad_inputs(cpp_build, wan_aoti, tmp_path):
    states = tmp_path / "s.npy"
    np.save(states, np.zeros((1, 24, 32), np.float32))
    for args, needle in [((states, "--pooled", states), "takes text states only"),
                         (("--video-std", "rows"), "--video-std takes clip or frame")]:
        extra = ("--states",) + args if args[0] == states else ("--prompt", PROMPTS[0]) + args
        r = _ddit_run(cpp_build, wan_aoti, *extra, "--out", tmp_path / "x.npy")
        assert r.returncode == 2
        assert r.stderr.count("\n") == 1 and needle in r.stderr, r.stderr


def _expect(code, needle, fn, *args, **kw):
    with pytest.raises(DDiTError) as e:
        fn(*args, **kw)
    assert e.value.code == code and needle in e.value.message, e.value


def test_bad_requests_on_a_video_bundle(cpp_lib, rt):
    info = cpp_lib.info(rt)
    states = np.zeros((1, info.text_len, info.joint_dim), np.float32)
    _expect(ARGUMENT, "takes no pooled text", cpp_lib.denoise, rt, states, np.zeros((1, 32), np.float32),
            steps=4)
    _expect(ARGUMENT, "video_std must be 0 (clip) or 1 (frame)", cpp_lib.denoise, rt, states, None, steps=8,
            schedule=schedule("ddit", video_std=2))
    lat = cpp_lib.denoise(rt, states, None, steps=4)  # states without pooled: fine
    image_sized = np.zeros((1, info.height, info.width, 3), np.uint8)  # an image's buffer for a clip
    _expect(ARGUMENT, f"needs {info.frames * info.height * info.width * 3}", cpp_lib.call, "ddit_decode", rt,
            fptr(lat), C.c_size_t(lat.size), 1, image_sized.ctypes.data_as(C.POINTER(C.c_uint8)),
            C.c_size_t(image_sized.size))


def _edited(wan_aoti, tmp_path, edit):
    out = tmp_path / "b"
    shutil.copytree(wan_aoti, out)
    m = json.loads((out / "manifest.json").read_text())
    edit(m)
    (out / "manifest.json").write_text(json.dumps(m))
    return out


def test_bad_video_bundles(cpp_lib, wan_aoti, tmp_path):
    def unipc(m):
        m["model"]["scheduler_config"]["_class_name"] = "UniPCMultistepScheduler"

    def odd_frames(m):
        m["model"]["frames"] = 7

    def format_1(m):
        m["format_version"] = 1

    for i, (edit, code, needle) in enumerate([(unipc, UNSUPPORTED, "UniPCMultistepScheduler is not ported"),
                                              (odd_frames, BUNDLE, "do not fit the temporal patch 2"),
                                              (format_1, BUNDLE, "needs format_version >= 2")]):
        _expect(code, needle, cpp_lib.open_ex, _edited(wan_aoti, tmp_path / str(i), edit))


def test_a_wan_latent_bundle_denoises_but_has_no_decoder(cpp_lib, wan_aoti, tmp_path):
    """Kind "wan" (Wan 2.1's VAE latents): the C++ runtime denoises; pixels need the VAE, which it does not run."""
    def vae_kind(m):
        m["model"]["kind"] = "wan"

    h = cpp_lib.open_ex(_edited(wan_aoti, tmp_path, vae_kind))
    try:
        info = cpp_lib.info(h)
        assert info.has_decoder == 0 and info.is_video == 1
        px = np.zeros((1, info.frames, info.height, info.width, 3), np.uint8)
        _expect(UNSUPPORTED, "no decoder", cpp_lib.call, "ddit_generate", h, C.byref(_request(PROMPTS[:1], steps=4)),
                px.ctypes.data_as(C.POINTER(C.c_uint8)), C.c_size_t(px.size))
    finally:
        cpp_lib.close(h)
