import numpy as np
import pytest
from PIL import Image

from ddit_export.quality import metrics as M
from ddit_export.quality import video as V

FRAMES, SIDE = 8, 32


def moving_clip(speed=1.0, phase=0.0):
    """(F, 3, H, W) in [-0.6, 0.6]: a soft blob drifting to the right over a gradient background."""
    yy, xx = np.mgrid[0:SIDE, 0:SIDE] / SIDE
    out = []
    for f in range(FRAMES):
        cx = 0.2 + phase + speed * 0.06 * f
        blob = np.exp(-((xx - cx) ** 2 + (yy - 0.5) ** 2) / 0.02)
        frame = np.stack([0.6 * blob - 0.3 * xx, 0.5 * yy - 0.2, 0.6 * (1 - blob) - 0.4])
        out.append(frame)
    return np.clip(np.stack(out), -0.6, 0.6)


REF = moving_clip()
PATTERN = np.sign(np.random.default_rng(0).normal(size=(3, SIDE, SIDE)))  # a fixed ±1 error pattern


def test_identical_clips():
    s = V.compare_clips(REF, REF)
    assert s["psnr"] == [100.0] * FRAMES and s["psnr_mean"] == 100.0
    assert s["ssim_mean"] == pytest.approx(1.0)
    assert s["change"] == s["ref_change"] > 0
    assert s["change_ratio"] == 1.0 and s["diff_error"] == 0.0


def test_per_frame_values_are_the_image_metrics():
    clip = np.clip(REF + np.random.default_rng(1).normal(0, 0.1, REF.shape), -1, 1)
    s = V.clip_fidelity(clip, REF)
    assert s["psnr"] == pytest.approx([float(M.psnr(clip[f:f + 1], REF[f:f + 1])[0]) for f in range(FRAMES)])
    assert s["ssim"] == pytest.approx([float(M.ssim(clip[f:f + 1], REF[f:f + 1])[0]) for f in range(FRAMES)])
    assert s["psnr_mean"] == pytest.approx(np.mean(s["psnr"])) and s["ssim_mean"] == pytest.approx(np.mean(s["ssim"]))
    assert np.array_equal(V.frame_psnr(clip, REF), s["psnr"]) and np.array_equal(V.frame_ssim(clip, REF), s["ssim"])
    change = V.frame_change(REF)
    assert change.shape == (FRAMES - 1,)
    assert change[2] == pytest.approx(np.abs(REF[3] - REF[2]).mean() / 2)  # on [0, 1] pixels


def test_a_flickering_clip_scores_worse_than_a_smooth_one_with_the_same_frame_error():
    smooth = REF + 0.1 * PATTERN  # the same error in every frame
    flicker = REF + 0.1 * PATTERN * (-1.0) ** np.arange(FRAMES)[:, None, None, None]  # its sign alternates
    a, b = V.compare_clips(smooth, REF), V.compare_clips(flicker, REF)
    # per-frame metrics hardly tell them apart (|error| is the same in every frame; SSIM moves by 1e-4) ...
    assert a["psnr"] == pytest.approx(b["psnr"]) and a["ssim_mean"] == pytest.approx(b["ssim_mean"], abs=1e-3)
    # ... the temporal ones can: the smooth clip changes exactly as the reference does
    assert a["diff_error"] == pytest.approx(0.0, abs=1e-6)  # float32 clips and a["change_ratio"] == pytest.approx(1.0)
    assert b["diff_error"] == pytest.approx(0.1, rel=1e-6)  # |±0.2| on [-1, 1] = 0.1 on [0, 1], every pixel
    assert b["change_ratio"] > 2


def test_a_frozen_clip_has_change_ratio_zero():
    frozen = np.repeat(REF[:1], FRAMES, axis=0)
    t = V.temporal_consistency(frozen, REF)
    assert t["change"] == 0.0 and t["change_ratio"] == 0.0 and t["diff_error"] == pytest.approx(t["ref_change"])
    assert V.temporal_consistency(frozen, frozen)["change_ratio"] == 1.0
    assert V.temporal_consistency(REF, frozen)["change_ratio"] == float("inf")


def test_clip_forms_agree():
    u8 = ((REF + 1) * 127.5).round().astype(np.uint8).transpose(0, 2, 3, 1)
    pil = [Image.fromarray(f) for f in u8]
    a, b = V.clip_array(u8), V.clip_array(pil)
    assert a.shape == REF.shape and np.array_equal(a, b)
    assert np.abs(a - REF).max() <= 1 / 127.5
    torch = pytest.importorskip("torch")
    assert np.allclose(V.clip_array(torch.tensor(REF, dtype=torch.float32)), REF, atol=1e-7)
    with pytest.raises(ValueError, match=r"\(F, 3, H, W\)"):
        V.clip_array(REF.transpose(0, 2, 3, 1))
    with pytest.raises(ValueError, match="differ in shape"):
        V.compare_clips(REF, REF[:4])


def test_mean_scores():
    s = [V.compare_clips(REF + 0.05 * PATTERN, REF), V.compare_clips(REF + 0.1 * PATTERN, REF)]
    m = V.mean_scores(s)
    assert m["psnr_mean"] == pytest.approx((s[0]["psnr_mean"] + s[1]["psnr_mean"]) / 2)
    assert "psnr" not in m and set(m) >= {"ssim_mean", "change_ratio", "diff_error"}


def test_frechet_over_frames_uses_every_frame():
    clips = [moving_clip(speed=1.0, phase=p) for p in (0.0, 0.05, 0.1)]
    other = [np.clip(c + 0.3 * PATTERN, -1, 1) for c in clips]
    seen = []

    def feats(x):
        seen.append(x.shape)
        return x.reshape(len(x), 3, 4, 8, 4, 8).mean(axis=(3, 5)).reshape(len(x), -1)  # 3 x 4 x 4 pooled pixels

    fd = V.frechet_frames(clips, other, feats)  # a callable as the feature extractor
    assert seen == [(3 * FRAMES, 3, SIDE, SIDE)] * 2
    assert fd == pytest.approx(M.frechet_distance(feats(np.concatenate(clips)), feats(np.concatenate(other))))
    assert V.frechet_frames(clips, clips, feats) == pytest.approx(0.0, abs=1e-6)
    assert fd > 1e-3


def test_frechet_frames_with_the_scene_probe():
    clips = [moving_clip(phase=p) for p in (0.0, 0.1)]
    f = V.frame_features(clips)
    assert f.shape[0] == 2 * FRAMES and f.shape[1] > 8
    assert V.frechet_frames(clips, clips) == pytest.approx(0.0, abs=1e-6)
    noisy = [np.clip(c + 0.5 * PATTERN, -1, 1) for c in clips]
    assert V.frechet_frames(clips, noisy) > 0.1
