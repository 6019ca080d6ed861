"""The resolution table (issue 11): quality and step times at several sides, on the tiny preset."""
import json
import shutil
from pathlib import Path

import pytest

from ddit_export.errors import ConfigError
from ddit_export.resolution import estimated_speedup, resolution_table
from ddit_export.settings import ResolutionSettings

LADDER = "ladder:head=0,n4=2,tail=2"


def quiet(*_):
    pass


def settings(tmp_path, **kw):
    base = dict(model="tiny", resolutions=(32, 64), n_prompts=2, steps=6, static_policy=LADDER, repeats=1,
                threads=1, ort=False, reference_n=8, out=str(tmp_path / "out"))
    return ResolutionSettings(**{**base, **kw})


def test_estimated_speedup_weights_step_times_by_size_fractions():
    assert estimated_speedup({"1": 0.5, "4": 0.5}, {"1": 10.0, "2": 5.0, "4": 2.0}) == pytest.approx(1 / 0.6)
    assert estimated_speedup({"1": 1.0}, {"1": 3.0, "4": 1.0}) == pytest.approx(1.0)
    assert estimated_speedup({"1": 0.5, "8": 0.5}, {"1": 10.0}) is None  # a size that was not timed


def test_two_sides_on_pytorch(tmp_path):
    rep = resolution_table(settings(tmp_path), progress=False, log=quiet)
    assert [r["side"] for r in rep["resolutions"]] == [32, 64]
    assert [r["fine_tokens"] for r in rep["resolutions"]] == [256, 1024]
    for r in rep["resolutions"]:
        assert [m["method"] for m in r["methods"]] == ["rule", "static"]
        rule, static = r["methods"]
        assert rule["key"] == "training-free@0.01" and static["key"] == f"training-free@{LADDER}"
        assert static["coarse_fraction"] == pytest.approx(4 / 6)  # 2 steps at k=4, 2 at k=2, 2 fine
        assert static["flops_ratio"] < 1 and static["psnr"] < 99 and 0 <= static["adherence"] <= 1
        assert set(r["step_ms"]) == {"torch"} and set(r["step_ms"]["torch"]) == {"1", "2", "4"}
        assert static["est_speedup"]["torch"] == pytest.approx(
            estimated_speedup(static["size_fractions"], r["step_ms"]["torch"]))
        assert json.loads(Path(r["eval"]).read_text())["height"] == r["side"]  # evaluate ran at that side
        bound = r["step_flop_speedup"]
        assert bound["1"] == 1 and 1 < bound["2"] < bound["4"]
    # attention grows quadratically: a size-4 step saves a larger share of FLOPs at 64 than at 32
    assert rep["resolutions"][1]["methods"][1]["flops_ratio"] < rep["resolutions"][0]["methods"][1]["flops_ratio"]
    assert len(rep["trend"]) == 2 and rep["trend"][1].startswith("static (32 -> 64): FLOP speed-up")
    md = (tmp_path / "out" / "resolution.md").read_text()
    assert "| 64 | 1024 | static |" in md and "| 64 | torch |" in md and "| 64 | FLOP bound |" in md
    assert json.loads((tmp_path / "out" / "resolution.json").read_text())["format"] == "ddit-resolution-table/1"


def test_onnxruntime_reuses_a_bundle_of_the_side(tmp_path, tiny_bundle):
    bundles = tmp_path / "bundles"
    shutil.copytree(tiny_bundle, bundles / "tiny-32")
    logged = []
    rep = resolution_table(settings(tmp_path, resolutions=(32,), ort=True, bundles=str(bundles), n_prompts=1),
                           progress=False, log=logged.append)
    assert any("reusing bundle" in m for m in logged) and not any("building" in m for m in logged)
    side = rep["resolutions"][0]
    assert set(side["step_ms"]["onnxruntime"]) == {"1", "2", "4"}
    assert side["methods"][0]["est_speedup"]["onnxruntime"] is not None
    assert rep["trend"] == []  # one side: nothing to compare


def test_a_bundle_of_another_side_is_refused_before_measuring(tmp_path, tiny_bundle):
    bundles = tmp_path / "bundles"
    shutil.copytree(tiny_bundle, bundles / "tiny-64")
    with pytest.raises(ConfigError, match="is not a 64x64 bundle of tiny"):
        resolution_table(settings(tmp_path, ort=True, bundles=str(bundles)), progress=False, log=quiet)
    assert not (tmp_path / "out" / "eval-32").exists()


@pytest.mark.parametrize("kw, message", [(dict(resolutions=()), "positive"), (dict(resolutions=(32, 32)), "repeat"),
                                         (dict(repeats=0), "repeats"), (dict(static_policy="nope"), "policy")])
def test_bad_settings(tmp_path, kw, message):
    with pytest.raises(ConfigError, match=message):
        settings(tmp_path, **kw)


def test_bad_inputs_end_in_one_error_line(tmp_path, capsys):
    from tests.helpers import load_script

    script = load_script("resolution_table")
    for args, text in ((["--resolutions", "32,x"], "comma-separated integers"),
                       (["--model", "tiny", "--resolutions", "32,33", "--no-ort"], "multiple of 2"),
                       (["--model", "tiny", "--static", "ddit:tau=0.1", "--no-ort"], "is the rule")):
        assert script.main(args + ["--out", str(tmp_path / "o"), "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and text in err[0], err
