import numpy as np

from ddit_export.quality import video as V
from ddit_export.zoo import clips as C


def _clip(seed=0):
    return C.sample_clip(np.random.default_rng(seed)).render()


def test_identical_clips_are_perfect_and_noise_lowers_every_frame():
    c = _clip()
    assert np.all(V.frame_psnr(c, c) == 100) and np.allclose(V.frame_ssim(c, c), 1)
    noisy = np.clip(c + np.random.default_rng(0).normal(0, 0.1, c.shape), -1, 1).astype(np.float32)
    assert np.all(V.frame_psnr(noisy, c) < 30) and np.all(V.frame_ssim(noisy, c) < 1)


def test_flicker_scores_worse_than_the_same_frames_smooth():
    ref = _clip(3)
    rng = np.random.default_rng(1)
    offsets = rng.normal(0, 0.15, (len(ref), 1, 1, 1)).astype(np.float32)
    flicker = np.clip(ref + offsets, -1, 1)  # every frame shifted by its own amount: the brightness jumps
    smooth = np.clip(ref + offsets.mean(), -1, 1)  # the same mean shift on every frame: no jumps
    tf, ts = V.temporal_consistency(flicker, ref), V.temporal_consistency(smooth, ref)
    assert tf["diff_error"] > ts["diff_error"] and tf["change_ratio"] > ts["change_ratio"]
    assert V.temporal_consistency(ref, ref) == {"change": tf["ref_change"], "ref_change": tf["ref_change"],
                                                "change_ratio": 1.0, "diff_error": 0.0}


def test_frechet_of_frames_is_small_for_the_same_distribution():
    a = [_clip(i) for i in range(20)]
    b = [_clip(100 + i) for i in range(20)]
    noise = [np.random.default_rng(i).uniform(-1, 1, a[0].shape).astype(np.float32) for i in range(20)]
    assert V.frechet_frames(a, b) < V.frechet_frames(noise, b)


def test_clip_array_accepts_pil_and_uint8():
    from PIL import Image

    c = _clip()
    u8 = ((c + 1) * 127.5).round().astype(np.uint8).transpose(0, 2, 3, 1)
    pil = [Image.fromarray(f) for f in u8]
    assert np.allclose(V.clip_array(pil), V.clip_array(u8)) and np.abs(V.clip_array(u8) - c).max() < 0.01
