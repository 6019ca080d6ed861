import numpy as np
import pytest

from ddit_export.errors import ConfigError
from ddit_export.quality import metrics as M
from ddit_export.quality.detector import CELLS, Detections
from ddit_export.zoo import scenes as S


def test_psnr_known_values():
    a = np.zeros((2, 3, 32, 32), np.float32)
    b = a.copy()
    b[1] += 0.2  # 0.1 on [0, 1]: mse 0.01 -> 20 dB
    assert M.psnr(a, b) == pytest.approx([100.0, 20.0])


def test_ssim_identity_symmetry_and_monotone_in_noise():
    x, _, _ = S.make_batch(0, 4)
    y, _, _ = S.make_batch(1, 4)
    assert M.ssim(x, x) == pytest.approx(1.0)
    assert M.ssim(x, y) == pytest.approx(M.ssim(y, x))
    rng = np.random.default_rng(0)
    scores = [M.ssim(x, np.clip(x + rng.normal(0, s, x.shape), -1, 1)).mean() for s in (0.02, 0.1, 0.3)]
    assert 1 > scores[0] > scores[1] > scores[2]


def test_ssim_matches_torchmetrics():
    tm = pytest.importorskip("torchmetrics.functional.image")
    import torch

    x, _, _ = S.make_batch(2, 4)
    y = np.clip(x + np.random.default_rng(1).normal(0, 0.2, x.shape), -1, 1)
    ref = tm.structural_similarity_index_measure(torch.tensor((y + 1) / 2, dtype=torch.float64),
                                                  torch.tensor((x + 1) / 2, dtype=torch.float64), data_range=1.0,
                                                  reduction="none").numpy()
    np.testing.assert_allclose(M.ssim(x, y), ref, atol=1e-6)


def test_gaussian_blur_matches_scipy_mirror_mode():
    ndimage = pytest.importorskip("scipy.ndimage")  # an optional reference: the package itself needs no scipy

    z = np.random.default_rng(2).normal(size=(2, 3, 32, 20))
    ref = ndimage.gaussian_filter(z, sigma=(0, 0, 1.5, 1.5), truncate=3.5, mode="mirror")
    np.testing.assert_allclose(M.gaussian_blur(z), ref, atol=1e-12)


def test_metrics_run_without_scipy():
    """scipy is no dependency: SSIM and the Fréchet distance must work where it is not installed."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['scipy'] = None\n"
            "import numpy as np; from ddit_export.quality import metrics as M\n"
            "x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 16, 16))\n"
            "assert abs(M.ssim(x, x) - 1).max() < 1e-9\n"
            "f = np.random.default_rng(1).normal(size=(50, 4))\n"
            "assert M.frechet_distance(f, f + 1) > 3.9\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_parse_caption_round_trips_the_grammar():
    _, caps, sc = S.make_batch(3, 300)
    _, caps2, sc2 = S.make_batch(4, 300, "heldout")
    for c, s in zip(caps + caps2, sc + sc2):
        assert M.parse_caption(c) == s
    with pytest.raises(ConfigError):
        M.parse_caption("a red cat on a sofa")
    with pytest.raises(ConfigError):
        M.parse_caption("a large red circle at the moon on a black background")


def test_frechet_distance_matches_sqrtm_and_is_zero_for_identical_sets():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 8))
    b = rng.normal(size=(300, 8)) @ rng.normal(size=(8, 8)) + 0.5
    m1, s1 = M.feature_stats(a)
    m2, s2 = M.feature_stats(b)
    # Tr (S1 S2)^1/2 = sum of the square roots of the eigenvalues of S1 S2 (real, >= 0 for PSD S1, S2), taken
    # here from the non-symmetric product directly, as scipy.linalg.sqrtm would
    tr_sqrt = np.sqrt(np.clip(np.real(np.linalg.eigvals(s1 @ s2)), 0, None)).sum()
    ref = ((m1 - m2) ** 2).sum() + np.trace(s1 + s2) - 2 * tr_sqrt
    assert M.frechet_distance(a, b) == pytest.approx(ref, rel=1e-8)
    assert M.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    assert M.frechet_distance(a, a + 2.0) == pytest.approx(8 * 4.0, rel=1e-6)  # mean shift only
    few = rng.normal(size=(5, 8))  # singular covariance: still finite
    assert np.isfinite(M.frechet_distance(few, a))


def _detections(objects, background):
    """Detections for one image from [(shape, colour, size, position)]."""
    from ddit_export.quality.detector import BACKGROUND_NAMES, COLOUR_NAMES, SHAPE_CLASSES, SIZE_NAMES, cell_index

    shape = np.zeros((1, CELLS), int)
    colour = np.zeros((1, CELLS), int)
    size = np.zeros((1, CELLS), int)
    for sh, co, si, pos in objects:
        c = cell_index(pos)
        shape[0, c], colour[0, c], size[0, c] = SHAPE_CLASSES.index(sh), COLOUR_NAMES.index(co), SIZE_NAMES.index(si)
    return Detections(shape, colour, size, np.array([BACKGROUND_NAMES.index(background)]), np.zeros((1, 4)))


def test_adherence_bookkeeping():
    cap = ("a large red circle at the top left and a small blue square at the bottom right and "
           "a medium green triangle in the center on a striped background")
    det = _detections([("circle", "red", "medium", "top left"),  # right but wrong size
                       ("square", "yellow", "small", "bottom right"),  # wrong colour
                       ("circle", "white", "small", "top")], "gray")  # center missing, one extra
    r = M.adherence(det, [cap])
    s = r.summary()
    assert s["accuracy"] == pytest.approx(1 / 3)
    assert s["position"] == pytest.approx(2 / 3) and s["shape"] == pytest.approx(2 / 3)
    assert s["colour"] == pytest.approx(1 / 3) and s["size"] == pytest.approx(1 / 3)
    assert s["background"] == 0 and s["count"] == 1 and s["image"] == 0 and s["extra_per_image"] == 1
    perfect = M.adherence(_detections([("circle", "red", "large", "top left")], "black"),
                          ["a large red circle at the top left on a black background"]).summary()
    assert perfect["accuracy"] == perfect["image"] == perfect["background"] == 1.0
