"""The committed scene probe makes the metrics mean something: real scenes score near-perfect adherence and a
near-zero Fréchet distance to other real scenes; noise and blank images score near-zero adherence, a large one."""
import numpy as np
import pytest

from ddit_export.quality import metrics as M
from ddit_export.quality.detector import load_probe
from ddit_export.zoo import scenes as S

N = 300


@pytest.fixture(scope="module")
def probe():
    return load_probe()


@pytest.fixture(scope="module")
def heldout():
    imgs, caps, scenes = S.make_batch(123, N, "heldout")
    return imgs, scenes


@pytest.fixture(scope="module")
def other_real(probe):
    imgs, _, _ = S.make_batch(456, N, "heldout")
    return probe.features(imgs)


def test_real_heldout_scenes_score_near_perfect(probe, heldout, other_real):
    imgs, scenes = heldout
    det = probe.detect(imgs)
    s = M.adherence(det, scenes).summary()
    assert s["accuracy"] >= 0.95, s
    assert min(s[a] for a in ("position", "shape", "colour", "size", "background")) >= 0.95, s
    # near zero on the noise scale: the Fréchet distance's own small-sample floor is all that is left
    noise = np.random.default_rng(0).uniform(-1, 1, imgs.shape).astype(np.float32)
    fd_real = M.frechet_distance(det.features, other_real)
    assert fd_real < 0.1 * M.frechet_distance(probe.features(noise), other_real)


def test_real_renders_survive_png_quantisation(probe, heldout):
    imgs, scenes = heldout
    q = np.round((imgs + 1) * 127.5) / 127.5 - 1
    assert M.adherence(probe.detect(q), scenes).summary()["accuracy"] >= 0.95


@pytest.mark.parametrize("kind", ["uniform", "gaussian", "shuffled", "black", "gray", "white", "striped"])
def test_noise_and_blank_images_score_near_zero(probe, heldout, other_real, kind):
    imgs, scenes = heldout
    rng = np.random.default_rng(0)
    if kind == "uniform":
        x = rng.uniform(-1, 1, imgs.shape)
    elif kind == "gaussian":
        x = np.clip(rng.normal(0, 0.5, imgs.shape), -1, 1)
    elif kind == "shuffled":  # real pixels, no structure
        flat = imgs.reshape(len(imgs), 3, -1)
        x = np.stack([f[:, rng.permutation(f.shape[1])] for f in flat]).reshape(imgs.shape)
    else:
        x = np.stack([S.render(S.Scene((), kind))] * len(imgs))
    det = probe.detect(x.astype(np.float32))
    s = M.adherence(det, scenes).summary()
    assert s["accuracy"] <= 0.05, s
    fd_real = M.frechet_distance(probe.features(imgs), other_real)
    assert M.frechet_distance(det.features, other_real) > 10 * fd_real
