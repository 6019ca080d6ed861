"""Issue 9, points 3, 5 and 7 on the generate side: --sizes honoured everywhere, image writes that fail in one line
and leave no empty file, and no silent meanings in the CLI or the Python API."""
import errno
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from ddit_export.api import build_settings, generate_images, image_path, save_images
from ddit_export.errors import ConfigError, VocabularyError
from ddit_export.models.registry import load_model
from ddit_export.runtime.backends.torch import TorchBackend
from ddit_export.runtime.generate import generate, initial_noise
from tests.helpers import invoke, one_line_error


# ---- point 3: --sizes ------------------------------------------------------------------------------------------
def test_sizes_restrict_a_bundle(tiny_bundle, tmp_path):
    trace = tmp_path / "t.json"
    r = invoke("generate", "--bundle", tiny_bundle, "--sizes", "1", "--tau", "100", "--steps", 8,
               "--out", tmp_path / "a.png", "--trace", trace)
    assert r.exit_code == 0, r.output
    assert "sizes per step: 1,1,1,1,1,1,1,1" in r.output
    assert json.loads(trace.read_text())["settings"]["sizes"] == [1]
    r = invoke("generate", "--bundle", tiny_bundle, "--tau", "100", "--steps", 8, "--out", tmp_path / "b.png")
    assert "sizes per step: 1,1,1,1,1,1,1,1" not in r.output  # without --sizes the rule does go coarse
    one_line_error(invoke("generate", "--bundle", tiny_bundle, "--sizes", "1,8", "--out", tmp_path / "c.png"),
                   "this bundle has patch sizes [1, 2, 4]")


def test_sizes_restrict_a_model_with_adapters(tmp_path):
    r = invoke("generate", "--model", "flux-mini", "--sizes", "1,2", "--tau", "100", "--steps", 8,
               "--out", tmp_path / "a.png")
    assert r.exit_code == 0, r.output
    used = set(re.search(r"sizes per step: ([\d,]+)", r.output).group(1).split(","))
    assert used == {"1", "2"}
    one_line_error(invoke("generate", "--model", "flux-mini", "--sizes", "1,8", "--out", tmp_path / "b.png"),
                   "adapters cover patch sizes [1, 2, 4]")


@pytest.mark.parametrize("sizes, message", [("1,3", "powers of two"), ("2,4", "include the fine size 1"),
                                            ("1,1", "repeat")])
def test_sizes_are_validated(sizes, message, tmp_path):
    one_line_error(invoke("generate", "--model", "tiny", "--sizes", sizes, "--out", tmp_path / "a.png"), message)


def test_a_resolution_that_drops_coarse_sizes_says_so(tmp_path):
    lines = []
    result, _ = generate_images(model="tiny", height=20, width=20, steps=6, tau=100, warn=lines.append)
    assert lines == ["warning: patch size(s) [4] are not used at 20x20: they do not divide its 10x10 token grid "
                     "(sizes used: [1, 2])"]
    assert 4 not in result.trace.sizes
    with pytest.raises(ConfigError, match=r"\[4\] do not divide the 10x10 token grid"):
        generate_images(model="tiny", height=20, width=20, steps=6, sizes=(1, 4), warn=lines.append)


# ---- point 5: writes -------------------------------------------------------------------------------------------
def _image():
    return Image.new("RGB", (4, 4))


@pytest.mark.parametrize("err, message", [(errno.ENOSPC, "no space left on the device"),
                                          (errno.EACCES, "permission denied")])
def test_a_failed_image_write_leaves_no_file(tmp_path, monkeypatch, err, message):
    real_save = Image.Image.save

    def failing_save(self, fp, *a, **k):
        real_save(self, fp, *a, **k)  # a partial file on disk, as a full disk leaves
        open(fp, "wb").close()
        raise OSError(err, "simulated", str(fp))

    monkeypatch.setattr(Image.Image, "save", failing_save)
    r = invoke("generate", "--model", "tiny", "--steps", 4, "--out", tmp_path / "img.png")
    one_line_error(r, f"cannot write {tmp_path / 'img.png'}: {message}")
    assert list(tmp_path.iterdir()) == []


def test_images_are_written_whole(tmp_path):
    paths = save_images([_image(), _image()], tmp_path / "x.jpg")
    assert [p.name for p in paths] == ["x_0.jpg", "x_1.jpg"] and all(p.stat().st_size > 0 for p in paths)
    assert Image.open(paths[0]).format == "JPEG" and sorted(p.name for p in tmp_path.iterdir()) == ["x_0.jpg",
                                                                                                  "x_1.jpg"]


# ---- point 7: silent meanings ----------------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "steps must be >= 1, got 0"),
    (["--height", "0"], "height must be >= 1 pixel, got 0"),
    (["--width", "0"], "width must be >= 1 pixel, got 0"),
    (["--tau", "inf"], "tau must be > 0 and finite, got inf"),
    (["--tau", "nan"], "tau must be > 0 and finite, got nan"),
    (["--eps", "inf"], "eps must be in (0, 1)"),
    (["--seed", str(2**63)], "seed must be an integer in [0, 2**63 - 1]"),
    (["--seed", str(2**64)], "seed must be an integer in [0, 2**63 - 1]"),
    (["--seed", "-1"], "seed must be an integer in [0, 2**63 - 1]"),
    (["--prompt", "3 red circles"], "cannot read: '3'"),
    (["--out", "pictures/cat.gif"], "unknown image type '.gif'"),
    (["--device", "nonsense"], "unknown --device 'nonsense'"),
])
def test_no_silent_meanings(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_line_error(invoke("generate", "--model", "tiny", *args), message)
    assert not (tmp_path / "pictures").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_without_a_gpu_is_an_error(tmp_path, tiny_bundle):
    one_line_error(invoke("generate", "--model", "tiny", "--device", "cuda", "--out", tmp_path / "a.png"),
                   "torch sees no CUDA GPU here")
    one_line_error(invoke("generate", "--bundle", tiny_bundle, "--device", "cuda", "--out", tmp_path / "a.png"),
                   "applies to the PyTorch path")


def test_out_without_a_suffix_is_a_folder(tmp_path):
    assert image_path(tmp_path / "shots") == tmp_path / "shots" / "image.png"
    assert image_path(tmp_path / "a.PNG") == tmp_path / "a.PNG"
    with pytest.raises(ConfigError, match="unknown image type"):
        image_path(tmp_path / "a.v2")


def test_digits_and_symbols_in_prompts_are_errors_not_dropped():
    from ddit_export.models.text import tokenize, words_of

    assert words_of("A red circle, (big)!") == ["a", "red", "circle", "big"]
    for prompt, odd in (("2 red circles", "'2'"), ("a red circle #1", "'#' '1'"), ("a café", "'é'")):
        with pytest.raises(VocabularyError, match=odd):
            tokenize(["a", "red", "circle", "circles", "caf"], 8, [prompt])


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny")


def test_api_prompts(tiny):
    assert build_settings(tiny).prompts == (tiny.default_prompt,)
    assert build_settings(tiny, prompts="a red circle").prompts == ("a red circle",)
    assert build_settings(tiny, prompts=["a", "b"]).prompts == ("a", "b")
    for empty in ([], ()):
        with pytest.raises(ConfigError, match="prompts is empty"):
            build_settings(tiny, prompts=empty)
    with pytest.raises(ConfigError, match="steps must be >= 1"):
        build_settings(tiny, steps=0)


def test_api_latents_are_checked(tiny):
    s = build_settings(tiny, steps=4, prompts="a red circle")
    geom = tiny.geometry()
    good = initial_noise(geom, 1, 0)
    with TorchBackend(tiny.transformer) as backend:
        for bad, message in ((good[0], r"shape \(256, 12\).*\(1, 256, 12\)"),
                             (good[:, :100], r"\(1, 100, 12\)"),
                             (torch.cat([good, good]), r"with 1 prompt\(s\)"),
                             (good.clone().index_fill_(1, torch.tensor([3]), float("nan")), "NaN")):
            with pytest.raises(ConfigError, match=message):
                generate(tiny, backend, s, progress=False, latents=bad)
        assert np.isfinite(generate(tiny, backend, s, progress=False, latents=good).latents.numpy()).all()


def test_wrong_token_counts_name_the_grid(tiny):
    from ddit_export.models.patching import image_ids

    mp = tiny.transformer
    cond = tiny.encode(["a red circle"])
    x = torch.zeros(1, 100, 12)
    with pytest.raises(ConfigError, match=r"the 16x16 token grid needs \(batch, 256, channels\)"):
        mp(x, cond.states, cond.pooled, torch.ones(1), image_ids((16, 16)), cond.txt_ids, size=2, grid=(16, 16))
