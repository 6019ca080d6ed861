"""The DDiT rule on video token grids (F, h, w): the two std modes on arrays whose answer is known, equivalence with
the image rule at F = 1, and the decisions of the rule, the static policies and the probe on 3-D grids."""
import numpy as np
import pytest

from ddit_export.errors import ConfigError
from ddit_export.schedule import DDiTPolicy, StaticSchedule, make_policy, patch_std, sigma_at
from ddit_export.schedule.probe import ProbePolicy
from ddit_export.settings import GenerateSettings, ScheduleSettings, parse_policy, policy_spec

F, H, W, C = 4, 8, 8, 12
GRID = (F, H, W)
MODES = ("clip", "frame")
rng = np.random.default_rng(0)


def _history(d3):
    """Four latents whose third difference is exactly d3."""
    z = np.zeros_like(d3)
    return [z, z, z, d3]


def _checker(s, frames=F):
    """Every token's channels alternate +s, -s: std s inside every patch of every size, in every frame."""
    return np.tile(np.array([s, -s] * (C // 2)), (1, frames * H * W, 1))


def _per_frame(values):
    """(1, F*h*w, 1): frame f's tokens all hold values[f]."""
    return np.repeat(np.asarray(values, np.float64), H * W).reshape(1, -1, 1)


def _rule(mode, **kw):
    return DDiTPolicy(ScheduleSettings(video_std=mode, **kw), GRID, (1, 2, 4))


# ---- patch_std ---------------------------------------------------------------------------------------------
def test_patch_std_shapes_and_direct_values():
    d = rng.normal(size=(2, F * H * W, 3))
    v = d.reshape(2, F, H, W, 3)
    clip, frame = patch_std(d, GRID, 2, "clip"), patch_std(d, GRID, 2, "frame")
    assert clip.shape == (2, 16) and frame.shape == (2, F * 16)
    # patch (row 1, col 2) of the 4x4 patch grid: fine rows 2..3, cols 4..5
    assert clip[1, 1 * 4 + 2] == pytest.approx(v[1, :, 2:4, 4:6].std())
    assert frame[1, 3 * 16 + 1 * 4 + 2] == pytest.approx(v[1, 3, 2:4, 4:6].std())  # frame 3 (ordered f, y, x)
    assert patch_std(d, GRID, 4, "clip").shape == (2, 4) and patch_std(d, GRID, 4, "frame").shape == (2, F * 4)
    with pytest.raises(ValueError, match="video_std"):
        patch_std(d, GRID, 2, "tube")


@pytest.mark.parametrize("mode", MODES)
def test_one_frame_equals_the_image_rule(mode):
    d = rng.normal(size=(3, H * W, C))
    for k in (1, 2, 4):
        assert np.array_equal(patch_std(d, (1, H, W), k, mode), patch_std(d, (H, W), k))
        assert np.array_equal(sigma_at(d, (1, H, W), k, 0.4, mode), sigma_at(d, (H, W), k, 0.4))
    for tau in (0.5, 1.0, 1.2, 5.0):
        hist = _history(d * 0.5)
        video = DDiTPolicy(ScheduleSettings(tau=tau, video_std=mode), (1, H, W), (1, 2, 4)).decide(5, hist)
        image = DDiTPolicy(ScheduleSettings(tau=tau), (H, W), (1, 2, 4)).decide(5, hist)
        assert video == image


def test_image_grids_ignore_video_std():
    d = rng.normal(size=(2, H * W, C))
    assert np.array_equal(patch_std(d, (H, W), 2, "frame"), patch_std(d, (H, W), 2, "clip"))
    hist = _history(d)
    a = DDiTPolicy(ScheduleSettings(tau=1.1, video_std="frame"), (H, W), (1, 2, 4)).decide(3, hist)
    b = DDiTPolicy(ScheduleSettings(tau=1.1), (H, W), (1, 2, 4)).decide(3, hist)
    assert a == b


def test_constant_in_time_gives_one_answer_in_both_modes():
    d3 = _checker(0.5)  # the same Δ³ in every frame
    for mode in MODES:
        for k in (2, 4):
            assert np.allclose(patch_std(d3, GRID, k, mode), 0.5)
        assert _rule(mode, tau=0.5001).decide(5, _history(d3)).size == 4
        assert _rule(mode, tau=0.5).decide(5, _history(d3)).size == 1


def test_frame_to_frame_change_counts_in_clip_mode_only():
    # each frame smooth inside (std 0.5 everywhere), but a different offset per frame: a flicker in time
    offsets = np.array([0.0, 3.0, -2.0, 1.0])
    d3 = _checker(0.5) + _per_frame(offsets)
    expect_clip = np.sqrt(0.25 + offsets.var())  # variance inside a patch = within-frame + between-frame parts
    for k in (2, 4):
        assert np.allclose(patch_std(d3, GRID, k, "frame"), 0.5)
        assert np.allclose(patch_std(d3, GRID, k, "clip"), expect_clip)
    assert _rule("frame", tau=0.51).decide(5, _history(d3)).size == 4
    clip = _rule("clip", tau=0.51).decide(5, _history(d3))
    assert clip.size == 1 and clip.sigmas[2] == pytest.approx(expect_clip)


def test_frame_mode_is_stricter_when_most_frames_are_rough():
    # frames 0-2 rough (std r in every patch), frame 3 still: frame mode's 40th percentile over the F x patches is
    # r; clip mode pools the frames of a patch: std sqrt(3/4) r, below r
    r = 1.0
    d3 = np.concatenate([_checker(r, 3), np.zeros((1, H * W, C))], axis=1)
    assert np.allclose(sigma_at(d3, GRID, 2, 0.4, "frame"), r)
    assert np.allclose(sigma_at(d3, GRID, 2, 0.4, "clip"), np.sqrt(0.75) * r)
    tau = 0.95 * r
    assert _rule("clip", tau=tau).decide(4, _history(d3)).size == 4
    assert _rule("frame", tau=tau).decide(4, _history(d3)).size == 1


def test_one_rough_frame_is_outvoted_in_frame_mode_only():
    # frame 0 rough, frames 1-3 still: 75% of the frame patches are still, so frame mode's 40th percentile is 0;
    # in clip mode every spatial patch holds the rough frame
    d3 = np.concatenate([_checker(1.0, 1), np.zeros((1, (F - 1) * H * W, C))], axis=1)
    assert np.allclose(sigma_at(d3, GRID, 4, 0.4, "frame"), 0.0)
    assert np.allclose(sigma_at(d3, GRID, 4, 0.4, "clip"), 0.5)
    assert _rule("frame", tau=0.1).decide(3, _history(d3)).size == 4
    assert _rule("clip", tau=0.1).decide(3, _history(d3)).size == 1


# ---- decisions on a 3-D history ------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_largest_passing_size_wins_on_video(mode):
    # constant inside each 2x2 spatial block of each frame, the same blocks in every frame, varying between blocks
    blocks = rng.normal(size=(H // 2, W // 2)) * 10
    fine = np.tile(np.kron(blocks, np.ones((2, 2))).reshape(1, H * W, 1), (1, F, 1)) + _checker(0.5)
    d = _rule(mode, tau=0.6).decide(3, _history(fine))
    assert d.sigmas[2] == pytest.approx(0.5) and d.sigmas[4] > 1
    assert d.size == 2 and d.reason == "rule"


@pytest.mark.parametrize("mode", MODES)
def test_warmup_batch_and_window_on_video(mode):
    z = np.zeros((1, F * H * W, C))
    pol = _rule(mode, tau=1.0, warmup=4)
    assert [pol.decide(i, [z] * min(i + 1, 4)).size for i in range(6)] == [1, 1, 1, 1, 4, 4]
    smooth, rough = _checker(0.001), rng.normal(size=(1, F * H * W, C))
    assert _rule(mode, tau=0.01).decide(3, _history(np.concatenate([smooth, smooth]))).size == 4
    assert _rule(mode, tau=0.01).decide(3, _history(np.concatenate([smooth, rough]))).size == 1
    held = _rule(mode, tau=0.01, window="same-size")
    seq = [_history(smooth)] * 4 + [_history(rough)] * 3
    got = [held.decide(i, h) for i, h in enumerate(seq)]
    assert [d.size for d in got] == [1, 1, 1, 4, 4, 4, 1]
    assert [d.reason for d in got][3:] == ["rule", "hold", "hold", "rule"]


def test_only_the_spatial_axes_limit_the_sizes():
    # 3 token frames (odd), 6 x 6 spatial: size 2 merges 2x2 spatial tokens in each frame, size 4 does not fit
    pol = DDiTPolicy(ScheduleSettings(tau=1.0), (3, 6, 6), (1, 2, 4))
    assert pol.sizes == (1, 2)
    d = pol.decide(3, _history(np.zeros((1, 3 * 36, C))))
    assert set(d.sigmas) == {2} and d.size == 2
    assert DDiTPolicy(ScheduleSettings(), (3, 8, 8), (1, 2, 4)).sizes == (1, 2, 4)


# ---- static policies and the probe on 3-D grids ---------------------------------------------------------------
def test_static_and_ladder_policies_on_video_grids():
    s = make_policy(GenerateSettings(steps=4, static=(4, 2, 1, 1)), (3, 8, 8), (1, 2, 4))
    assert [s.decide(i, []).size for i in range(4)] == [4, 2, 1, 1]
    lad = make_policy(GenerateSettings(steps=6, schedule=parse_policy("ladder:head=1,n4=2,tail=2")), GRID, (1, 2, 4))
    assert [lad.decide(i, []).size for i in range(6)] == [1, 4, 4, 2, 1, 1]
    with pytest.raises(ConfigError, match=r"not available for grid \(4, 6, 6\)"):
        StaticSchedule((1, 4), (4, 6, 6), (1, 2, 4))
    with pytest.raises(ConfigError, match="not available"):
        make_policy(GenerateSettings(steps=6, schedule=parse_policy("ladder:n4=1,tail=2")), (4, 6, 6), (1, 2, 4))


@pytest.mark.parametrize("mode", MODES)
def test_probe_on_a_video_grid(mode):
    s = ScheduleSettings(policy="probe", n4=1, tail=2, extra=2, detail=0.5, video_std=mode)
    x, v = rng.normal(size=(1, F * H * W, C)), rng.normal(size=(1, F * H * W, C))
    p = ProbePolicy(s, 8, GRID, (1, 2, 4))
    p.observe(0, x, v, 0.9, 0.8)
    assert p.signal == pytest.approx(patch_std(x - 0.9 * v, GRID, 2, mode).mean())
    assert [p.decide(i, []).size for i in range(8)] == [4, 2, 2, 2, 1, 1, 1, 1]  # signal > 0.5: tail 2 + 2
    with pytest.raises(ConfigError, match="probe policy needs sizes"):
        ProbePolicy(s, 8, (4, 6, 6), (1, 2, 4))
    ProbePolicy(ScheduleSettings(policy="probe", n4=0), 8, (4, 6, 6), (1, 2, 4))  # sizes 1, 2 are enough


def test_video_std_setting():
    assert ScheduleSettings().video_std == "clip"
    with pytest.raises(ConfigError, match="video_std must be one of clip, frame"):
        ScheduleSettings(video_std="tube")
    s = parse_policy("ddit:tau=0.002,video_std=frame")
    assert s.video_std == "frame" and parse_policy(policy_spec(s)) == s
    assert policy_spec(ScheduleSettings()) == "ddit:tau=0.001,eps=0.4,warmup=3,window=any"  # image specs unchanged
