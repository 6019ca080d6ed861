"""scripts/cpp_video_parity.py: a policy spec becomes the same knobs on the C++ side, detail carry included (a
ladder given on the command line runs without the profile's carry on both sides unless the spec names it)."""
import pytest

from tests.helpers import load_script


@pytest.mark.parametrize("spec, args", [
    ("profile", []),
    ("ladder:head=14+n4=0+tail=8", ["--ladder", "14,0,8"]),
    ("ladder:head=14+n4=0+tail=8+carry=fine", ["--ladder", "14,0,8", "--carry", "fine"]),
    ("ddit:tau=0.001+video_std=frame+carry=off", ["--policy", "ddit", "--tau", "0.001", "--video-std", "frame",
                                                  "--carry", "off"]),
])
def test_policy_specs_map_to_ddit_run_options(spec, args):
    assert load_script("cpp_video_parity").cpp_args(spec) == args


def test_other_policies_are_refused():
    with pytest.raises(SystemExit, match="maps ddit and ladder specs only"):
        load_script("cpp_video_parity").cpp_args("probe:head=2")


@pytest.mark.parametrize("spec, py, args", [
    (None, None, []),
    ("off", {"mode": "off"}, ["--cache", "off"]),
    ("taylor+interval=4+switch", {"mode": "taylor", "interval": 4, "switch": True},
     ["--cache", "taylor", "--cache-interval", "4", "--cache-switch"]),
    ("taylor+warmup=3+tail=1+order=2", {"mode": "taylor", "warmup": 3, "tail": 1, "order": 2},
     ["--cache", "taylor", "--cache-warmup", "3", "--cache-tail", "1", "--cache-order", "2"]),
])
def test_cache_specs_map_to_both_sides(spec, py, args):
    assert load_script("cpp_video_parity").cache_args(spec) == (py, args)


@pytest.mark.parametrize("spec", ["fast", "taylor+interval=x", "taylor+every=4", "taylor+switch=1"])
def test_bad_cache_specs_are_refused(spec):
    with pytest.raises(SystemExit, match="error: cache"):
        load_script("cpp_video_parity").cache_args(spec)
