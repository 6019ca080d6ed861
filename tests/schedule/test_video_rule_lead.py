"""The DDiT rule on video latents: (F, h, w) grids, std across the clip or per frame."""
import numpy as np
import pytest

from ddit_export.schedule.ddit import DDiTPolicy, patch_std, sigma_at
from ddit_export.settings import ScheduleSettings


def test_one_frame_video_equals_the_image_rule():
    rng = np.random.default_rng(0)
    d = rng.normal(size=(2, 8 * 8, 12))
    for k in (2, 4):
        img = patch_std(d, (8, 8), k)
        assert np.allclose(patch_std(d, (1, 8, 8), k, "clip"), img)
        assert np.allclose(patch_std(d, (1, 8, 8), k, "frame"), img)


def test_clip_and_frame_modes_differ_as_designed():
    # each frame constant inside every patch (no spatial variation), but frames differ from each other:
    # per frame the std is 0; across the clip it is the spread between frames
    f, h, w, c = 4, 8, 8, 1
    d = np.broadcast_to(np.arange(f, dtype=float)[None, :, None, None, None], (1, f, h, w, c)).reshape(1, -1, c)
    assert np.allclose(patch_std(d, (f, h, w), 2, "frame"), 0)
    assert np.allclose(patch_std(d, (f, h, w), 2, "clip"), np.arange(f).std())
    assert patch_std(d, (f, h, w), 2, "clip").shape == (1, 16)
    assert patch_std(d, (f, h, w), 2, "frame").shape == (1, 64)
    with pytest.raises(ValueError):
        patch_std(d, (f, h, w), 2, "neither")


def test_policy_decides_on_a_video_history():
    grid = (2, 4, 4)
    rng = np.random.default_rng(1)
    calm = [np.full((1, 32, 6), 0.5) + 1e-6 * i for i in range(4)]  # tiny Δ³: coarse passes
    busy = [rng.normal(size=(1, 32, 6)) for _ in range(4)]
    for mode in ("clip", "frame"):
        s = ScheduleSettings(tau=0.01, video_std=mode)
        p = DDiTPolicy(s, grid, (1, 2, 4))
        assert [p.decide(i, calm[: i + 1]).size for i in range(4)] == [1, 1, 1, 4]
        p = DDiTPolicy(s, grid, (1, 2, 4))
        assert p.decide(3, busy).size == 1
    assert DDiTPolicy(ScheduleSettings(), (3, 6, 4), (1, 2, 4)).sizes == (1, 2)  # 4 does not divide 6 rows
    assert sigma_at(busy[0], grid, 2, 0.4, "frame").shape == (1,)
