"""``ddit-export calibrate`` on video models (issue 23 item 2): the clip-caption calibration split, the sweep scored
per frame and over time, the profile with its resolution and clip length, and the bad input refused before work."""
import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import invoke, one_line_error

LOOSE = ["--min-psnr", 0, "--max-quality-drop", 100]  # tiny-wan is random: any setting passes the bar


@pytest.fixture
def clip_prompts(tmp_path):
    p = tmp_path / "clips.txt"
    p.write_text("# clip captions\na large red circle moving right on a black background\n"
                 "a small blue square turning green and a yellow triangle appearing in the center on a gray "
                 "background\n".replace("a yellow", "a medium yellow"))
    return p


@pytest.fixture
def no_generation(monkeypatch):
    """Generating is a test failure (loading a small model is allowed): the checks under test come first."""
    from ddit_export.runtime import generate as generate_mod

    def fail(*a, **k):
        raise AssertionError("generation started")

    monkeypatch.setattr(generate_mod, "generate", fail)


def _cal(tmp_path, prompts, *args):
    return invoke("calibrate", "--model", "tiny-wan", "--prompts", prompts, "--steps", 6, "--work",
                  tmp_path / "work", "--profile", tmp_path / "prof.json", "--quiet", *args)


def _rows(work):
    return [json.loads(line) for line in (work / "rows.jsonl").read_text().splitlines()]


# ---- the calibration split -------------------------------------------------------------------------------------
def test_the_shipped_split_is_what_the_function_draws_and_misses_the_evaluation_captions():
    from ddit_export.quality.calibrate_video import (calibration_clips, default_clip_prompts_path,
                                                     evaluation_captions, read_clip_prompts)
    from ddit_export.quality.evaluate_video import eval_clips
    from ddit_export.quality.motion import adherence
    from ddit_export.settings import EvalSettings
    from ddit_export.zoo import clips as C

    shipped = [c.caption for c in read_clip_prompts(default_clip_prompts_path())]
    drawn = calibration_clips(24)
    assert shipped == [c.caption for c in drawn] and len(set(shipped)) == 24
    # none among the captions evaluate scores on a video model (its own draw, with and without wan-mini's word limit)
    for words in (None, 24):
        held = {c.caption for c in eval_clips(64, "heldout", EvalSettings().prompt_seed, words)}
        assert len(held) > 32 and not held & set(shipped)
    assert not set(evaluation_captions(256)) & set(shipped)
    for c in drawn:  # held-out split, short enough for wan-mini, the probe reads the rendered truth right
        assert c.split == "heldout" and len(c.caption.split()) <= 24
        assert adherence(C.render(c), c)["all"]
    # calibration/prompts-wan-mini-64.txt (the larger split wan-mini's profile was checked on): the same draw, longer,
    # so it starts with the shipped 24 and also misses the evaluation captions
    larger = [c.caption for c in read_clip_prompts(Path(__file__).resolve().parents[2] / "calibration"
                                                    / "prompts-wan-mini-64.txt")]
    assert larger == [c.caption for c in calibration_clips(64)] and larger[:24] == shipped
    assert len(set(larger)) == 64 and not set(evaluation_captions(256)) & set(larger)


def test_the_mixed_split_has_the_evaluation_share_of_two_shape_captions():
    """calibration/prompts-wan-mini-mix-64.txt: the same draw, one- and two-shape captions taken in the evaluation's
    proportion (the plain draw has about twice its two-shape share)."""
    from ddit_export.quality.calibrate_video import (MAX_WORDS, calibration_clips, evaluation_captions,
                                                     evaluation_clips, read_clip_prompts, two_shape_share)

    share = two_shape_share(evaluation_clips(256, MAX_WORDS))
    two = lambda clips: sum(len(c.shapes) == 2 for c in clips)  # noqa: E731
    assert 0.15 < share < 0.35 and two(calibration_clips(64)) / 64 > share + 0.15
    mixed = calibration_clips(64, mixed=True)
    assert two(mixed) == round(64 * share) and len({c.caption for c in mixed}) == 64
    assert not set(evaluation_captions(256)) & {c.caption for c in mixed}
    path = Path(__file__).resolve().parents[2] / "calibration" / "prompts-wan-mini-mix-64.txt"
    assert [c.caption for c in read_clip_prompts(path)] == [c.caption for c in mixed]


def test_clip_captions_read_back_into_their_clips():
    from ddit_export.zoo import clips as C

    rng = np.random.default_rng(3)
    for i in range(300):
        c = C.sample_clip(rng, "heldout" if i % 2 else "train")
        p = C.parse_caption(c.caption)
        assert p.caption == c.caption and p.split == c.split and p.background == c.background
        assert [(s.shape, s.colour, s.size, s.motion, s.to_colour) for s in p.shapes] == \
            [(s.shape, s.colour, s.size, s.motion, s.to_colour) for s in c.shapes]
        # what the caption does not say is filled so the clip renders and moves the named way
        for s in p.shapes:
            if s.motion in C.DIRECTIONS:
                assert tuple(np.subtract(s.end, s.start)) == C.DIRECTIONS[s.motion]
    for bad in ("a large red circle at the center on a black background and more",
                "a small red circle at the top and a small blue circle at the left and a small green circle at the "
                "right on a black background",
                "a large red circle moving sideways on a black background", "a red circle on a black background"):
        with pytest.raises(ValueError, match="not a clip caption"):
            C.parse_caption(bad)


# ---- the sweep -----------------------------------------------------------------------------------------------
def test_video_sweep_scores_clips_writes_the_profile_with_frames_and_resumes(tmp_path, clip_prompts):
    r = _cal(tmp_path, clip_prompts, "--policy", "ladder:n4=1", "--sweep", "tail=1,3", *LOOSE)
    assert r.exit_code == 0, r.output
    assert "change ratio" in r.output and "| fine-only |" in r.output
    rows = _rows(tmp_path / "work")
    assert [x["key"] for x in rows] == ["fine", "ladder:head=0,n4=1,tail=1", "ladder:head=0,n4=1,tail=3"]
    for x in rows[1:]:
        assert 0 < x["coarse_fraction"] < 1 and x["psnr_min_frame"] <= x["psnr"] < 100
        assert x["change_ratio"] > 0 and x["diff_error"] > 0 and 0 <= x["motion"] <= 1
    assert rows[1]["coarse_fraction"] > rows[2]["coarse_fraction"]  # fewer fine tail steps: more coarse
    prof = json.loads((tmp_path / "prof.json").read_text())
    assert prof["resolution"] == [32, 32] and prof["frames"] == 8
    assert prof["measured"]["flops_ratio"] == min(x["flops_ratio"] for x in rows[1:])  # loose bar: fewest FLOPs
    assert json.loads((tmp_path / "work" / "sweep.json").read_text())["frames"] == 8
    # the fine-only clips are kept: (prompts, frames, 3, H, W)
    assert np.load(tmp_path / "work" / "fine.npz")["images"].shape == (2, 8, 3, 32, 32)
    r = _cal(tmp_path, clip_prompts, "--policy", "ladder:n4=1", "--sweep", "tail=1,2", *LOOSE)
    assert r.exit_code == 0 and "resuming: 1 of 2 settings already measured" in r.output
    assert _rows(tmp_path / "work")[1] == rows[1]


def test_rule_modes_and_the_cache_sweep_on_video(tmp_path, clip_prompts):
    r = _cal(tmp_path, clip_prompts, "--policy", "ddit:tau=0.05", "--sweep", "video_std=clip,frame", *LOOSE)
    assert r.exit_code == 0, r.output
    keys = [x["key"] for x in _rows(tmp_path / "work")]
    assert keys == ["fine", "ddit:tau=0.05,eps=0.4,warmup=3,window=any",
                    "ddit:tau=0.05,eps=0.4,warmup=3,window=any,video_std=frame"]
    plain = _rows(tmp_path / "work")[1]
    r = invoke("calibrate", "--model", "tiny-wan", "--prompts", clip_prompts, "--steps", 6, "--quiet",
               "--work", tmp_path / "cw", "--profile", tmp_path / "c.json", "--policy", "ddit:tau=0.05",
               "--sweep", "video_std=clip", "--cache", "taylor", "--cache-interval", 2, "--cache-warmup", 1, *LOOSE)
    assert r.exit_code == 0, r.output
    fine, cached = _rows(tmp_path / "cw")
    assert fine["flops_ratio"] == 1.0 and cached["flops_ratio"] < plain["flops_ratio"]
    assert json.loads((tmp_path / "c.json").read_text())["cache"]["interval"] == 2


def test_the_temporal_bar_is_part_of_the_choice(tmp_path, clip_prompts):
    r = _cal(tmp_path, clip_prompts, "--policy", "ladder:n4=1", "--sweep", "tail=1", "--change-ratio", "1,1",
             *LOOSE)
    rows = _rows(tmp_path / "work")
    assert rows[1]["change_ratio"] != 1.0  # a coarse clip does not change exactly as fine-only does
    assert r.exit_code == 1 and "frame-change ratio in [1, 1]" in r.stderr
    assert not (tmp_path / "prof.json").exists()
    lo, hi = rows[1]["change_ratio"] * 0.99, max(rows[1]["change_ratio"] * 1.01, 1.0)
    r = _cal(tmp_path, clip_prompts, "--policy", "ladder:n4=1", "--sweep", "tail=1", "--change-ratio",
             f"{min(lo, 1.0)},{hi}", *LOOSE)
    assert r.exit_code == 0, r.output


def test_calibrate_a_wan_folder(wan_dir, tmp_path, clip_prompts):
    r = invoke("calibrate", "--model", "wan", "--weights", wan_dir, "--prompts", clip_prompts, "--n-prompts", 1,
               "--frames", 5, "--height", 32, "--width", 32, "--steps", 4, "--policy", "ladder:head=1,n4=0",
               "--sweep", "tail=1", "--work", tmp_path / "w", "--profile", tmp_path / "p.json", "--quiet", *LOOSE)
    assert r.exit_code == 0, r.output
    prof = json.loads((tmp_path / "p.json").read_text())
    assert prof["frames"] == 5 and prof["resolution"] == [32, 32] and prof["model"] == "wan"
    assert np.load(tmp_path / "w" / "fine.npz")["images"].shape == (1, 5, 3, 32, 32)


# ---- bad input: one error line, exit 2, before any generation ------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--frames", 7], "frames 7 do not fit the temporal patch 2"),
    (["--height", 30], "height 30 must be a positive multiple of 4"),
    (["--grades", "1,2"], "--grades selects scene captions"),
    (["--oracle", 0.5], "--oracle searches per-prompt ladders scored on images"),
    (["--steps", 4, "--policy", "ladder:head=3,n4=1", "--sweep", "tail=2"], "exceed the 4 steps"),
    (["--change-ratio", "1.2,1.5"], "--change-ratio takes LOW,HIGH with 0 <= LOW <= 1 <= HIGH"),
    (["--change-ratio", "fast"], "--change-ratio takes LOW,HIGH"),
])
def test_video_bad_input(tmp_path, clip_prompts, no_generation, args, message):
    sweep = [] if "--sweep" in args else ["--sweep", "tail=1", "--policy", "ladder:n4=1"]
    one_line_error(invoke("calibrate", "--model", "tiny-wan", "--prompts", clip_prompts, *args, *sweep,
                          "--work", tmp_path / "w", "--dry-run", "--quiet"), message)
    assert not (tmp_path / "w" / "rows.jsonl").exists()


def test_scene_captions_for_a_video_model_and_clip_captions_for_an_image_model(tmp_path, clip_prompts,
                                                                                no_generation):
    scenes = tmp_path / "scenes.txt"
    # three shapes: a scene caption the clip grammar (one or two shapes) does not have
    scenes.write_text("a large red circle at the left and a small blue square at the top and a medium green "
                      "triangle at the bottom on a black background\n")
    one_line_error(invoke("calibrate", "--model", "tiny-wan", "--prompts", scenes, "--sweep", "tau=0.01",
                          "--dry-run"), "not a clip caption")
    one_line_error(invoke("calibrate", "--model", "tiny", "--prompts", clip_prompts, "--sweep", "tau=0.01",
                          "--dry-run"), "not a scene caption")


@pytest.mark.parametrize("args, message", [
    (["--frames", 8], "--frames applies to video models (wan-mini, wan); tiny makes images"),
    (["--change-ratio", "0.9,1.1"], "--change-ratio is a temporal bar for video models"),
])
def test_video_options_for_an_image_model(tmp_path, no_generation, args, message):
    from ddit_export.quality.policies import default_prompts_path

    one_line_error(invoke("calibrate", "--model", "tiny", "--prompts", default_prompts_path(), "--sweep", "n4=1",
                          *args, "--dry-run"), message)


def test_a_wan_folders_frames_are_checked_before_the_pipeline_loads(wan_dir, tmp_path, clip_prompts, no_work):
    one_line_error(invoke("calibrate", "--model", "wan", "--weights", wan_dir, "--prompts", clip_prompts,
                          "--frames", 8, "--sweep", "tail=1", "--policy", "ladder:n4=0", "--dry-run"),
                   "frames 8 do not fit the VAE's temporal factor 4")


# ---- the profile's clip length travels and warns ------------------------------------------------------------------
def test_a_video_profile_used_at_another_clip_length_warns_once(tmp_path):
    from ddit_export.api import generate_images
    from ddit_export.models.registry import PIXEL_META, save_video_model, tiny_wan_components
    from ddit_export.settings import ScheduleSettings

    folder = save_video_model(tmp_path / "m", *tiny_wan_components(), name="vid", height=32, width=32, frames=8,
                              steps=4, schedule=ScheduleSettings(policy="ladder", head=1, n4=0, tail=1))
    meta = json.loads((folder / PIXEL_META).read_text())
    (folder / PIXEL_META).write_text(json.dumps({**meta, "schedule_resolution": [32, 32], "schedule_frames": 8}))

    def profile_lines(**kw):
        lines = []
        generate_images(model=str(folder), steps=4, warn=lines.append, **kw)
        return [ln for ln in lines if "schedule profile" in ln]

    assert profile_lines() == []
    assert profile_lines(frames=10) == [
        "warning: vid's schedule profile (ladder:head=1,n4=0,tail=1) was calibrated at 8 frames of 32x32; this run "
        "is 10 frames of 32x32, where its quality is not measured (ddit-export calibrate --frames 10 --height 32 "
        "--width 32 measures it there)"]
    assert profile_lines(frames=10, policy="fine") == []  # the user's own schedule: no warning


def test_calibrate_a_video_bundle_writes_its_clip_length_into_the_manifest(wan_bundle, tmp_path, clip_prompts):
    import shutil

    from ddit_export.api import generate_images
    from ddit_export.bundle import load

    bundle = shutil.copytree(wan_bundle, tmp_path / "bundle")
    r = invoke("calibrate", "--bundle", bundle, "--prompts", clip_prompts, "--n-prompts", 1, "--steps", 6,
               "--policy", "ladder:n4=1", "--sweep", "tail=2", "--work", tmp_path / "w", "--profile",
               tmp_path / "p.json", "--quiet", *LOOSE)
    assert r.exit_code == 0, r.output
    man = json.loads((bundle / "manifest.json").read_text())
    assert man["model"]["schedule_resolution"] == [32, 32] and man["model"]["schedule_frames"] == 8
    assert man["calibration"]["frames"] == 8 and man["schedule"]["n4"] == 1
    assert load(bundle).schedule_frames == 8
    lines = []
    generate_images(bundle=str(bundle), steps=6, warn=lines.append)
    assert [ln for ln in lines if "schedule profile" in ln] == []
    man["model"]["schedule_frames"] = 16  # a profile measured on 16-frame clips, run on the bundle's 8
    (bundle / "manifest.json").write_text(json.dumps(man))
    generate_images(bundle=str(bundle), steps=6, warn=lines.append)
    assert [ln for ln in lines if "schedule profile" in ln] == [
        "warning: tiny-wan's schedule profile (ladder:head=0,n4=1,tail=2) was calibrated at 16 frames of 32x32; this "
        "run is 8 frames of 32x32, where its quality is not measured (ddit-export calibrate --frames 8 --height 32 "
        "--width 32 measures it there)"]
