import json

import pytest
from click.testing import CliRunner

from ddit_export.cli import main

PROMPTS = ["a large red circle at the left on a black background",
           "a small blue square at the top on a white background",
           "a medium yellow triangle in the center on a gray background"]
LOOSE = ["--min-psnr", 0, "--max-quality-drop", 100]  # the random tiny model: any setting passes the bar


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def prompts(tmp_path):
    p = tmp_path / "prompts.txt"
    p.write_text("# calibration captions\n" + "\n".join(PROMPTS) + "\n")
    return p


def _calibrate(tmp_path, prompts, sweep, *extra):
    return invoke("calibrate", "--model", "tiny", "--prompts", prompts, "--steps", 6, "--policy", "ladder:n4=1",
                  "--sweep", sweep, "--work", tmp_path / "work", "--profile", tmp_path / "tiny.json", "--quiet",
                  *extra)


def _rows(tmp_path):
    return [json.loads(line) for line in (tmp_path / "work" / "rows.jsonl").read_text().splitlines()]


def test_calibrate_writes_profile_and_resume_skips_done_rows(tmp_path, prompts):
    r = _calibrate(tmp_path, prompts, "tail=1,2", *LOOSE)
    assert r.exit_code == 0, r.output + r.stderr
    first = _rows(tmp_path)
    assert [x["key"] for x in first] == ["fine", "ladder:head=0,n4=1,tail=1", "ladder:head=0,n4=1,tail=2"]
    prof = json.loads((tmp_path / "tiny.json").read_text())
    chosen = next(x for x in first if x["key"] == prof["policy"])
    assert prof["schedule"]["policy"] == "ladder" and prof["measured"]["flops_ratio"] == chosen["flops_ratio"]
    assert chosen["flops_ratio"] == min(x["flops_ratio"] for x in first[1:])  # loose bar: the fewest FLOPs wins
    assert prof["command"].startswith("ddit-export calibrate --model tiny ") and "--sweep tail=1,2" in prof["command"]
    assert len(prof["sweep"]) == 2
    # interrupted after the fine row and one setting: a cut-off last line is run again, done rows are not
    lines = (tmp_path / "work" / "rows.jsonl").read_text().splitlines()
    (tmp_path / "work" / "rows.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][:20])
    r = _calibrate(tmp_path, prompts, "tail=1,2,3", *LOOSE)
    assert r.exit_code == 0, r.output + r.stderr
    assert "resuming: 1 of 3 settings already measured" in r.output
    rows = _rows_lenient(tmp_path)
    assert [x["key"] for x in rows] == ["fine", "ladder:head=0,n4=1,tail=1", "ladder:head=0,n4=1,tail=2",
                                        "ladder:head=0,n4=1,tail=3"]
    assert rows[1] == first[1]  # not measured again


def _rows_lenient(tmp_path):
    out = []
    for line in (tmp_path / "work" / "rows.jsonl").read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def test_unreachable_target_exits_1_and_keeps_rows(tmp_path, prompts):
    r = _calibrate(tmp_path, prompts, "tail=2,3", "--target-speedup", 50, *LOOSE)
    assert r.exit_code == 1
    assert "no setting reaches a 50x FLOP-ratio speed-up" in r.stderr and "best reachable: ladder:" in r.stderr
    assert len(_rows(tmp_path)) == 3 and not (tmp_path / "tiny.json").exists()


def test_bad_sweep_is_a_one_line_error(tmp_path, prompts):
    r = _calibrate(tmp_path, prompts, "colour=1,2")
    assert r.exit_code == 2 and "error: --sweep: unknown knob 'colour'" in r.stderr


def test_profile_goes_into_the_bundle_and_generate_uses_it(tmp_path, prompts, bundle_copy):
    r = invoke("calibrate", "--bundle", bundle_copy, "--prompts", prompts, "--n-prompts", 2, "--steps", 6,
               "--policy", "ladder:n4=1", "--sweep", "tail=2,3", "--work", tmp_path / "work", "--profile",
               tmp_path / "tiny.json", "--quiet", *LOOSE)
    assert r.exit_code == 0, r.output + r.stderr
    man = json.loads((bundle_copy / "manifest.json").read_text())
    assert man["schedule"]["policy"] == "ladder" and man["schedule"]["n4"] == 1
    assert man["calibration"]["policy"] == json.loads((tmp_path / "tiny.json").read_text())["policy"]
    assert invoke("inspect", bundle_copy).exit_code == 0  # still a valid bundle (hashes untouched)
    trace = tmp_path / "t.json"
    r = invoke("generate", "--bundle", bundle_copy, "--steps", 6, "--out", tmp_path / "i.png", "--trace", trace)
    assert r.exit_code == 0, r.output
    t = json.loads(trace.read_text())
    sched = t["settings"]["generate"]["schedule"]
    assert sched == man["schedule"]
    tail = sched["tail"]
    assert [s["size"] for s in t["steps"]] == [4] + [2] * (5 - tail) + [1] * tail


def test_calibrate_with_the_step_cache_measures_it_and_hands_it_to_the_bundle(tmp_path, prompts, bundle_copy):
    """--cache ... runs every setting of the sweep with the cache (fine-only without it): cached steps count 0
    FLOPs, the profile and the bundle's manifest carry the cache, and generate --bundle then uses it."""
    common = ["--bundle", bundle_copy, "--prompts", prompts, "--n-prompts", 2, "--steps", 6, "--policy",
              "ladder:n4=1", "--sweep", "tail=2", "--quiet", *LOOSE]
    r = invoke("calibrate", *common, "--work", tmp_path / "w0", "--profile", tmp_path / "p0.json", "--dry-run")
    assert r.exit_code == 0, r.output + r.stderr
    r = invoke("calibrate", *common, "--work", tmp_path / "w1", "--profile", tmp_path / "p1.json",
               "--cache", "taylor", "--cache-interval", 2, "--cache-warmup", 1)
    assert r.exit_code == 0, r.output + r.stderr
    plain = [json.loads(x) for x in (tmp_path / "w0" / "rows.jsonl").read_text().splitlines()]
    cached = [json.loads(x) for x in (tmp_path / "w1" / "rows.jsonl").read_text().splitlines()]
    assert plain[0]["flops_ratio"] == cached[0]["flops_ratio"] == 1.0  # fine-only never uses the cache
    assert cached[1]["flops_ratio"] < plain[1]["flops_ratio"]
    prof = json.loads((tmp_path / "p1.json").read_text())
    assert prof["cache"]["mode"] == "taylor" and prof["cache"]["interval"] == 2
    assert "--cache taylor" in prof["command"]
    man = json.loads((bundle_copy / "manifest.json").read_text())
    assert man["cache"]["interval"] == 2
    trace = tmp_path / "t.json"
    r = invoke("generate", "--bundle", bundle_copy, "--steps", 6, "--out", tmp_path / "i.png", "--trace", trace)
    assert r.exit_code == 0, r.output
    assert "cached" in {s["kind"] for s in json.loads(trace.read_text())["steps"]}
    # a sweep folder measured with another cache is not resumed silently
    r = invoke("calibrate", *common, "--work", tmp_path / "w1", "--profile", tmp_path / "p1.json", "--dry-run")
    assert r.exit_code == 2 and "another" in r.output
