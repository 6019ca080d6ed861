"""FLUX bundles built with --backend aoti carry the VAE decoder in the AOTInductor package (aoti.vae_decoder): the
C++ runtime decodes final latents to the pixels Python's FLUX decode (diffusers, eager) makes."""
import ctypes as C
import json
import shutil

import numpy as np
import pytest

from tests.runtime.cpp_api import DDiTError, fptr, schedule

pytestmark = pytest.mark.cpp

STATIC = (1, 1, 2, 2, 1)


@pytest.fixture(scope="module")
def flux_aoti(flux_dir, tmp_path_factory):
    """The tiny FLUX folder built into a 2-size bundle with its AOTInductor package (about 2 minutes)."""
    from tests.helpers import invoke
    from tests.helpers import no_compiler_reason

    reason = no_compiler_reason()
    if reason:
        pytest.skip(f"no C++ compiler for AOTInductor: {reason}")
    out = tmp_path_factory.mktemp("flux-aoti") / "b"
    r = invoke("build", "--model", "flux", "--weights", flux_dir, "--height", 64, "--width", 64, "--sizes", "1,2",
               "--text-len", 16, "--backend", "aoti", "--out", out)
    assert r.exit_code == 0, r.output
    assert "vae_decoder: AOTInductor vs diffusers max abs diff" in r.output
    return out


def _vae_decode(lib, rt, latents, height, width):
    px = np.zeros((latents.shape[0], height, width, 3), np.uint8)
    lat = np.ascontiguousarray(latents, np.float32)
    lib.call("ddit_decode", rt, fptr(lat), C.c_size_t(lat.size), lat.shape[0],
             px.ctypes.data_as(C.POINTER(C.c_uint8)), C.c_size_t(px.size))
    return px


def test_manifest_lists_the_vae_decoder(flux_aoti, flux_dir):
    a = json.loads((flux_aoti / "manifest.json").read_text())["aoti"]
    v = a["vae_decoder"]
    assert v["model"] == "vae_decoder" and v["constants"]
    assert v["input"]["shape"] == ["batch", 256, 16] and v["output"]["shape"] == ["batch", 64, 64, 3]
    assert v["parity_max_abs"] <= 1e-3
    size = (flux_aoti / "weights.bin").stat().st_size
    assert all(off + n <= size for _, off, n, _, _ in v["constants"])
    trunk = {off for var in a["variants"] for _, off, _, _, _ in var["constants"]}
    assert {off for _, off, _, _, _ in v["constants"]} - trunk, "the VAE's weights were appended"
    # a constant read back from weights.bin is the --weights folder's VAE tensor
    import torch
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(flux_dir / "vae")
    rows = {name: (off, n, dims) for name, off, n, _, dims in v["constants"]}
    off, n, dims = rows["vae.decoder.conv_in.weight"]
    raw = np.fromfile(flux_aoti / "weights.bin", np.uint8, count=n, offset=off).view(np.float32).reshape(dims)
    np.testing.assert_array_equal(raw, vae.decoder.conv_in.weight.detach().numpy())


def test_cpp_pixels_equal_python_flux_decode(cpp_lib, flux_aoti, flux_dir):
    """Python: generate --bundle B --weights DIR --backend aoti (diffusers decodes eagerly); C++: the same
    embeddings, seed and schedule through ddit_denoise, then the compiled decoder. Max pixel diff <= 2."""
    import torch

    from ddit_export.api import build_settings
    from ddit_export.runtime.bundle_model import open_bundle
    from ddit_export.runtime.generate import generate

    model, backend = open_bundle(flux_aoti, weights=flux_dir, backend="aoti")
    prompts = ["a red cat", "a blue dog on grass"]
    gs = build_settings(model, prompts=prompts, steps=len(STATIC), seed=7, static=STATIC)
    py = generate(model, backend, gs, progress=False)
    cond = model.encode(prompts)
    rt = cpp_lib.open(flux_aoti)
    try:
        info = cpp_lib.info(rt)
        assert info.has_decoder == 1
        lat = cpp_lib.denoise(rt, cond.states.numpy(), cond.pooled.numpy(), steps=len(STATIC), seed=7,
                              schedule=schedule("static", static=STATIC), guidance=gs.guidance)
        px = _vae_decode(cpp_lib, rt, lat, info.height, info.width)
        # the decoder alone, on Python's own latents: the same pixels as the eager decode
        alone = _vae_decode(cpp_lib, rt, py.latents.numpy(), info.height, info.width)
    finally:
        cpp_lib.close(rt)
    want = np.stack([np.asarray(im.convert("RGB")) for im in py.images])
    assert px.shape == want.shape and want.std() > 5, "a flat image would prove nothing"
    assert int(np.abs(alone.astype(int) - want.astype(int)).max()) <= 2
    assert int(np.abs(px.astype(int) - want.astype(int)).max()) <= 2
    geom = model.geometry()
    other = np.asarray(model.decode(torch.from_numpy(lat) * 0.5, geom)[0])
    assert np.abs(other.astype(int) - px[0].astype(int)).max() > 2, "different latents, different pixels"


def test_decoder_errors(cpp_lib, flux_aoti, aoti_bundle, tmp_path):
    import json
    import shutil

    bare = shutil.copytree(flux_aoti, tmp_path / "no-vae")  # a FLUX bundle whose package lists no VAE decoder
    m = json.loads((bare / "manifest.json").read_text())
    del m["aoti"]["vae_decoder"]
    (bare / "manifest.json").write_text(json.dumps(m))
    rt = cpp_lib.open(bare)
    try:
        info = cpp_lib.info(rt)
        assert info.has_decoder == 0
        with pytest.raises(DDiTError) as e:
            _vae_decode(cpp_lib, rt, np.zeros((1, info.tokens, info.channels), np.float32), info.height, info.width)
        assert e.value.code == 3 and "no decoder in this bundle" in e.value.message
    finally:
        cpp_lib.close(rt)
    rt = cpp_lib.open(flux_aoti)
    try:
        info = cpp_lib.info(rt)
        with pytest.raises(DDiTError) as e:
            _vae_decode(cpp_lib, rt, np.zeros((1, info.tokens, info.channels - 1), np.float32), info.height,
                        info.width)
        assert e.value.code == 1 and "latents" in e.value.message
    finally:
        cpp_lib.close(rt)
    broken = shutil.copytree(flux_aoti, tmp_path / "broken")
    path = broken / "manifest.json"
    d = json.loads(path.read_text())
    d["aoti"]["vae_decoder"]["constants"] = d["aoti"]["vae_decoder"]["constants"][:-1]
    path.write_text(json.dumps(d))
    with pytest.raises(DDiTError) as e:
        cpp_lib.open(broken)
    assert e.value.code == 2 and "VAE decoder needs constant" in e.value.message


def test_encode_command_feeds_ddit_run(cpp_build, cpp_lib, flux_aoti, flux_dir, tmp_path):
    """The documented service path for FLUX: `ddit-export encode` writes what `ddit-run --states/--pooled` reads."""
    import subprocess

    from tests.helpers import invoke

    r = invoke("encode", "--bundle", flux_aoti, "--weights", flux_dir, "--prompt", "a red cat", "--out", tmp_path)
    assert r.exit_code == 0, r.output
    cmd = [str(cpp_build / "ddit-run"), str(flux_aoti), "--states", str(tmp_path / "states.npy"),
           "--pooled", str(tmp_path / "pooled.npy"), "--steps", "4", "--seed", "2",
           "--out", str(tmp_path / "latents.npy")]
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    rt = cpp_lib.open(flux_aoti)
    try:
        want = cpp_lib.denoise(rt, np.load(tmp_path / "states.npy"), np.load(tmp_path / "pooled.npy"), steps=4,
                               seed=2, guidance=3.5)
    finally:
        cpp_lib.close(rt)
    np.testing.assert_array_equal(np.load(tmp_path / "latents.npy"), want)
