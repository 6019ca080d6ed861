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
