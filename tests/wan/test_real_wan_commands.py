"""The README's real-Wan commands (issue 23 item 4): Wan 2.1's default 480x832 builds as written, every check on
frames, sides, sizes and steps runs before the pipeline loads, ``--model`` contradicting ``--bundle`` is an error,
wan-mini off its trained clip warns, and the model's profile runs with the sizes a resolution leaves."""
import json

import pytest

from tests.helpers import invoke, one_line_error


@pytest.fixture(scope="module")
def wan480_dir(tmp_path_factory):
    """A tiny random Wan 2.1 folder whose rotary table reaches 480x832 (a 30x52 token grid; Wan 2.1's is 1024)."""
    from tests.helpers import tiny_wan_pipeline

    folder = tmp_path_factory.mktemp("wan480")
    tiny_wan_pipeline(rope_max_seq_len=64).save_pretrained(folder)
    return folder


def _warnings(r):
    return [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]


def test_the_readme_command_builds_wan_at_480x832_without_the_size_that_does_not_divide(wan480_dir, tmp_path):
    # the README's `build --model wan --weights DIR --frames 81` at the default 480x832; one latent frame keeps it
    # fast (frames do not change the 30x52 grid of each frame)
    out = tmp_path / "b"
    r = invoke("build", "--model", "wan", "--weights", wan480_dir, "--frames", 1, "--out", out)
    assert r.exit_code == 0, r.output
    assert _warnings(r) == ["warning: patch size(s) [4] are not built at 480x832: they do not divide its 30x52 token "
                            "grid (building sizes [1, 2]; --sizes chooses them)"]
    m = json.loads((out / "manifest.json").read_text())
    assert [v["size"] for v in m["variants"]] == [1, 2]
    assert (m["model"]["name"], m["model"]["height"], m["model"]["width"]) == ("wan", 480, 832)


@pytest.mark.parametrize("args, message", [
    (["--sizes", "1,2,4"], "patch size(s) [4] do not divide the 30x52 token grid of 480x832"),  # asked: an error
    (["--frames", 80], "frames 80 do not fit the VAE's temporal factor 4"),
    (["--height", 100], "height 100 must be a positive multiple of 16"),
])
def test_build_wan_checks_run_before_the_pipeline_loads(wan480_dir, tmp_path, no_work, args, message):
    one_line_error(invoke("build", "--model", "wan", "--weights", wan480_dir, "--frames", 81, *args,
                          "--out", tmp_path / "b"), message)
    assert not (tmp_path / "b").exists()


def test_a_rope_table_shorter_than_the_grid_is_one_line_before_any_load_or_export(wan_dir, tmp_path, no_work):
    # the tiny folder's rope_max_seq_len is 32: Wan 2.1's default width 832 makes 52 tokens
    for cmd in (["build"], ["generate", "--steps", 4]):
        one_line_error(invoke(*cmd, "--model", "wan", "--weights", wan_dir, "--frames", 81,
                              "--out", tmp_path / ("b" if cmd == ["build"] else "v.gif")),
                       "width 832 makes 52 tokens; wan supports at most 32 (rope_max_seq_len): at most 512 pixels")


@pytest.mark.parametrize("args, message", [
    (["--frames", 10], "frames 10 do not fit the VAE's temporal factor 4"),
    (["--height", 100], "height 100 must be a positive multiple of 16"),
    (["--sizes", "1,2,4"], "[4] do not divide the 30x52 token grid"),
    (["--steps", 4, "--policy", "ladder:head=2,n4=1,tail=2"], "exceed the 4 steps"),
    (["--steps", 3, "--warmup", 4], "must be at least warmup + 1 (5)"),
    (["--schedule", "1,2"], "static schedule has 2 sizes for 50 steps"),
])
def test_generate_wan_checks_run_before_the_pipeline_loads(wan480_dir, tmp_path, no_work, args, message):
    one_line_error(invoke("generate", "--model", "wan", "--weights", wan480_dir, *args, "--out", tmp_path / "v.gif"),
                   message)


def test_model_contradicting_the_bundle_is_an_error_before_anything_loads(wan_bundle, tiny_bundle, tmp_path,
                                                                          no_work):
    # wan_bundle holds tiny-wan, tiny_bundle holds tiny: another model of the same family is refused, every command
    one_line_error(invoke("generate", "--bundle", wan_bundle, "--model", "wan-mini", "--out", tmp_path / "v.gif"),
                   f"--model wan-mini is not the model of bundle {wan_bundle}, which holds 'tiny-wan'")
    one_line_error(invoke("generate", "--bundle", tiny_bundle, "--model", "flux-mini", "--out", tmp_path / "a.png"),
                   "which holds 'tiny'")
    one_line_error(invoke("calibrate", "--bundle", tiny_bundle, "--model", "flux-mini-64", "--sweep", "tau=1",
                          "--dry-run"), "which holds 'tiny'")
    one_line_error(invoke("calibrate", "--bundle", wan_bundle, "--model", "wan-mini", "--sweep", "tau=1",
                          "--dry-run"), "which holds 'tiny-wan'")
    one_line_error(invoke("bench", "--model", "flux-mini", "--bundle", tiny_bundle, "--pareto", tmp_path / "p"),
                   "which holds 'tiny'")
    one_line_error(invoke("generate", "--bundle", wan_bundle, "--model", "tiny", "--out", tmp_path / "v.gif"),
                   "is an image (FLUX-family) model")  # the other family: the message it had


def test_the_bundles_own_model_named_explicitly_is_accepted(wan_bundle, tmp_path):
    r = invoke("generate", "--bundle", wan_bundle, "--model", "tiny-wan", "--steps", 4, "--schedule", "1,1,1,1",
               "--out", tmp_path / "v.gif")
    assert r.exit_code == 0, r.output


def test_wan_mini_off_its_trained_clip_warns_and_a_height_that_leaves_size_1_runs_fine(tmp_path):
    # --frames 10: the trained-size warning, as --height 36 gives it
    r = invoke("generate", "--model", "wan-mini", "--frames", 10, "--steps", 4, "--policy", "fine",
               "--out", tmp_path / "a.gif")
    assert r.exit_code == 0, r.output
    assert _warnings(r) == ["warning: wan-mini was trained at 8 frames of 32x32; 10 frames of 32x32 is outside that "
                            "(allowed: RoPE extrapolates, but expect lower quality)"]
    # --height 36: a 9x8 grid leaves size 1 only; the model's profile (the rule since 2026-12-07; a ladder profile
    # becomes policy fine) runs with it (README: "runs with the others"), not an error after the warning
    r = invoke("generate", "--model", "wan-mini", "--height", 36, "--out", tmp_path / "b.gif")
    assert r.exit_code == 0, r.output
    assert _warnings(r) == [
        "warning: patch size(s) [2, 4] are not used at 36x32: they do not divide its 9x8 token grid (sizes used: [1])",
        "warning: wan-mini was trained at 8 frames of 32x32; 8 frames of 36x32 is outside that (allowed: RoPE "
        "extrapolates, but expect lower quality)"]
    assert set(r.stdout.split("sizes per step: ")[1].split()[0].split(",")) == {"1"}
    # a ladder the user asks for (not the profile's) is kept as given: an error naming the sizes
    one_line_error(invoke("generate", "--model", "wan-mini", "--height", 36, "--policy", "ladder:head=6,n4=0,tail=16",
                          "--out", tmp_path / "c.gif"), "not available for grid (4, 9, 8)")


def test_the_profile_keeps_its_shape_with_the_sizes_left():
    from ddit_export.api import fit_profile
    from ddit_export.settings import GenerateSettings, ScheduleSettings, parse_policy

    profile = parse_policy("ladder:head=2,n4=3,tail=2")
    s = GenerateSettings(steps=10, schedule=profile)
    assert fit_profile(s, profile, (1, 2, 4)) is s
    assert fit_profile(s, profile, (1, 2)).schedule == parse_policy("ladder:head=2,n4=0,tail=2")  # 4 -> 2
    assert fit_profile(s, profile, (1,)).schedule.policy == "fine"
    mine = GenerateSettings(steps=10, schedule=parse_policy("ladder:head=2,n4=4,tail=2"))
    assert fit_profile(mine, profile, (1, 2)) is mine  # not the profile: kept as given
    rule = GenerateSettings(steps=10, schedule=ScheduleSettings())
    assert fit_profile(rule, ScheduleSettings(), (1,)) is rule  # the rule picks among the sizes left itself


def test_the_trained_frames_warning_line():
    from ddit_export.shapes import resolution_warning

    assert resolution_warning("m", ((32, 32),), 32, 32, 8, (8,)) is None
    assert resolution_warning("m", ((32, 32),), 32, 32, 16, None) is None  # clip length not known
    assert resolution_warning("m", ((32, 32),), 32, 32, 16, (8,)).startswith(
        "warning: m was trained at 8 frames of 32x32; 16 frames of 32x32 is outside that")
    assert resolution_warning("m", ((32, 32),), 48, 32) == ("warning: m was trained at 32x32; 48x32 is outside that "
                                                           "(allowed: RoPE extrapolates, but expect lower quality)")
