"""The embedded models' folders carry the schedule their calibrated profile chose (calibration/<model>.json is the
measured record; the folder's ddit_model.json is what `generate` and `build` read): the two must not drift."""
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = ROOT / "ddit_export" / "zoo" / "weights"


@pytest.mark.parametrize("name", ["flux-mini-64", "flux-mini", "wan-mini"])
def test_model_folder_schedule_is_its_calibrated_profile(name):
    profile = json.loads((ROOT / "calibration" / f"{name}.json").read_text())
    folder = json.loads((WEIGHTS / name / "ddit_model.json").read_text())
    assert profile["model"] == name
    ran = profile["schedule"]
    shipped = folder["schedule"]
    for knob in ("policy", "head", "n4", "tail", "tau"):
        assert shipped.get(knob) == ran.get(knob), (name, knob, shipped.get(knob), ran.get(knob))
    assert shipped.get("carry", "off") == ran.get("carry", "off")
    if "resolution" in profile:  # the profile's resolution is the folder's schedule resolution
        assert list(folder.get("schedule_resolution", profile["resolution"])) == list(profile["resolution"])


def test_wan_mini_stack_profile_is_a_runnable_stack():
    """calibration/wan-mini-stack.json (the stacked operating point, run with `--profile` or written into a bundle):
    `read_profile` takes it, its schedule and cache load as settings, it was chosen with a cache and the switch
    refresh, and what it measured is the row of its own sweep that it names, at the issue's bar."""
    from ddit_export.quality.calibrate import read_profile
    from ddit_export.settings import CacheSettings, ScheduleSettings
    from ddit_export.settings.core import policy_spec

    profile = read_profile(ROOT / "calibration" / "wan-mini-stack.json", "wan-mini")  # what build --profile takes
    assert profile["model"] == "wan-mini" and profile["frames"] == 8
    sched = ScheduleSettings(**profile["schedule"])
    cache = CacheSettings.from_dict(profile["cache"])
    assert cache.mode == "taylor" and cache.switch and sched.carry == "fine"
    assert policy_spec(sched) == profile["policy"]
    row = next(r for r in profile["sweep"] if r["key"] == profile["policy"])
    m = profile["measured"]
    assert row["flops_ratio"] == m["flops_ratio"] <= 1 / 3.2 and m["psnr"] >= 30
    assert m["adherence_drop"] <= profile["rule"]["max_quality_drop"] == 5
    assert "--profile calibration/wan-mini-stack.json" in profile["command"]


def test_wan_mini_default_is_ddit_alone_at_the_issues_bar():
    """calibration/wan-mini.json, the model's default (DDiT alone at the issue's 5-point bar): no cache, carried, and
    what it measured is the row of its own sweep that it names: FLOP ratio <= 0.6, >= 30 dB, change ratio in 0.9-1.1.
    calibration/wan-mini-rule.json, the rule at calibrate's default bar, is slower on the same captions."""
    from ddit_export.quality.calibrate import read_profile
    from ddit_export.settings import ScheduleSettings
    from ddit_export.settings.core import policy_spec

    profile = read_profile(ROOT / "calibration" / "wan-mini.json", "wan-mini")
    sched = ScheduleSettings(**profile["schedule"])
    assert profile["cache"] is None and sched.carry == "fine" and policy_spec(sched) == profile["policy"]
    row = next(r for r in profile["sweep"] if r["key"] == profile["policy"])
    m = profile["measured"]
    assert row["flops_ratio"] == m["flops_ratio"] <= 0.6 and m["psnr"] >= 30
    assert 0.9 <= m["change_ratio"] <= 1.1 and m["adherence_drop"] <= profile["rule"]["max_quality_drop"] == 5
    rule = read_profile(ROOT / "calibration" / "wan-mini-rule.json", "wan-mini")
    assert rule["schedule"]["policy"] == "ddit" and rule["rule"]["max_quality_drop"] == 2
    assert rule["prompts"] == profile["prompts"] and rule["measured"]["flops_ratio"] > m["flops_ratio"]
