"""``ddit-export encode``: prompts -> states.npy / pooled.npy, the arrays ddit-run and the C API read."""
import numpy as np
import pytest

from tests.helpers import invoke, one_line_error

PROMPTS = ["a red cat", "a blue dog on grass"]


@pytest.fixture(scope="module")
def flux_bundle(flux_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("enc") / "flux"
    r = invoke("build", "--model", "flux", "--weights", flux_dir, "--height", 64, "--width", 64, "--sizes", "1",
               "--text-len", 16, "--out", out)
    assert r.exit_code == 0, r.output
    return out


def _load(folder):
    s, p = np.load(folder / "states.npy"), np.load(folder / "pooled.npy")
    assert s.dtype == np.float32 and p.dtype == np.float32 and s.flags.c_contiguous
    return s, p


def test_flux_weights_alone_and_with_the_bundle(flux_dir, flux_bundle, tmp_path):
    from ddit_export.models.registry import load_model

    r = invoke("encode", "--weights", flux_dir, "--text-len", 16, "--out", tmp_path / "a",
               "--prompt", PROMPTS[0], "--prompt", PROMPTS[1])
    assert r.exit_code == 0, r.output
    assert "states.npy (2, 16, 32)" in r.output
    s, p = _load(tmp_path / "a")
    m = load_model("flux", flux_dir, transformer=False)
    m.extras["text_len"] = 16
    cond = m.encode(PROMPTS)
    np.testing.assert_array_equal(s, cond.states.numpy())
    np.testing.assert_array_equal(p, cond.pooled.numpy())
    assert np.abs(s[0] - s[1]).max() > 0, "two prompts, two embeddings"
    # the bundle gives the text length: the same arrays without --text-len
    r = invoke("encode", "--bundle", flux_bundle, "--weights", flux_dir, "--out", tmp_path / "b",
               "--prompt", PROMPTS[0], "--prompt", PROMPTS[1])
    assert r.exit_code == 0, r.output
    s2, p2 = _load(tmp_path / "b")
    np.testing.assert_array_equal(s2, s)
    np.testing.assert_array_equal(p2, p)


def test_pixel_bundle_uses_its_word_encoder(tiny_bundle, tmp_path):
    from ddit_export.runtime.bundle_model import open_bundle

    r = invoke("encode", "--bundle", tiny_bundle, "--prompt", "a large red circle at the center", "--out", tmp_path)
    assert r.exit_code == 0, r.output
    s, p = _load(tmp_path)
    model, _ = open_bundle(tiny_bundle)
    cond = model.encode(["a large red circle at the center"])
    np.testing.assert_allclose(s, cond.states.numpy(), rtol=0, atol=0)
    np.testing.assert_allclose(p, cond.pooled.numpy(), rtol=0, atol=0)
    assert s.shape == (1, model.manifest.model["text_len"], s.shape[2])


def test_errors_are_one_line(flux_dir, flux_bundle, tiny_bundle, tmp_path):
    one_line_error(invoke("encode", "--weights", flux_dir, "--out", tmp_path), "--prompt")
    one_line_error(invoke("encode", "--prompt", "x", "--out", tmp_path), "--weights")
    one_line_error(invoke("encode", "--bundle", flux_bundle, "--prompt", "x", "--out", tmp_path), "--weights")
    one_line_error(invoke("encode", "--bundle", flux_bundle, "--weights", flux_dir, "--text-len", 8, "--prompt", "x",
                          "--out", tmp_path), "text length 16")
    one_line_error(invoke("encode", "--bundle", tiny_bundle, "--weights", flux_dir, "--prompt", "x", "--out",
                          tmp_path), "leave --weights out")
    one_line_error(invoke("encode", "--bundle", tiny_bundle, "--prompt", "zebra", "--out", tmp_path), "zebra")
    one_line_error(invoke("encode", "--prompt", "x", "--weights", flux_dir), "--out")
