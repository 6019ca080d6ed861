"""`evaluate --graded` and graded calibration (issue 19): detail grades in the reports; unreadable words stay one
clear error."""
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ddit_export.cli import main
from ddit_export.errors import ConfigError
from ddit_export.quality.evaluate import eval_scenes, evaluate
from ddit_export.quality.metrics import adherence, parse_caption
from ddit_export.settings import EvalSettings
from ddit_export.zoo import scenes as S

REF = 100
ROOT = Path(__file__).resolve().parents[2]
GRADED_PROMPTS = ROOT / "calibration" / "prompts-graded.txt"


@pytest.fixture(scope="module")
def graded_tiny(tmp_path_factory):
    """The tiny preset with the graded grammar's words (24 positions: grade 4 only as fine textures)."""
    from ddit_export.models.registry import save_pixel_model, tiny_components

    trunk, text, sched = tiny_components(vocab=S.GRADED_VOCAB)
    folder = tmp_path_factory.mktemp("tiny-graded")
    return save_pixel_model(folder, trunk, text, sched, name="tiny-graded", height=32, width=32, steps=4)


def test_parse_and_score_the_new_backgrounds():
    sc = S.graded_scenes(8, seed=3)
    assert [parse_caption(s.caption) for s in sc] == sc
    from ddit_export.quality.detector import load_probe

    chk = S.Scene((S.ShapeSpec("circle", "red", "large", "center"),), "checkered")
    a = adherence(load_probe().detect(chk.render()[None]), [chk])
    assert not a.background_ok[0]  # the shipped probe has no class for it: never counted right


def test_graded_eval_scenes_restricted_to_a_models_words():
    sc = eval_scenes(9, "graded", 5, max_words=24, grades=(1, 2, 3), words=tuple(S.TINY_VOCAB))
    assert [s.grade for s in sc] == [1, 2, 3] * 3 and all(s.split == "heldout" for s in sc)
    assert all(len(s.caption.split()) <= 24 and set(s.caption.split()) <= set(S.TINY_VOCAB) for s in sc)
    with pytest.raises(ConfigError, match="checkered, pinstriped.*--grades"):
        eval_scenes(4, "graded", 5, max_words=40, words=tuple(S.TINY_VOCAB))
    full = eval_scenes(8, "graded", 5)
    assert [s.grade for s in full] == [1, 2, 3, 4] * 2
    with pytest.raises(ConfigError):
        EvalSettings(split="graded", grades=(1, 5))


def test_evaluate_graded_reports_per_grade(graded_tiny, tmp_path):
    rep = evaluate(EvalSettings(model=str(graded_tiny), split="graded", n_prompts=4, steps=4, taus=(0.02,),
                                out=str(tmp_path)), progress=False, reference_n=REF)
    assert rep["grade_counts"] == {"1": 1, "2": 1, "3": 1, "4": 1}
    assert [p["grade"] for p in rep["prompts"]] == [1, 2, 3, 4]
    assert any("restricted" in n for n in rep["notes"])  # 24 positions: the graded captions were shortened
    v = {r["key"]: r for r in rep["variants"]}
    tf = v["training-free@0.02"]["by_grade"]
    assert set(tf) == {"adherence", "coarse_fraction", "flops_ratio", "psnr"}
    assert set(tf["psnr"]) == {"1", "2", "3", "4"}
    fine = v["fine"]["by_grade"]
    assert all(f == pytest.approx(1.0) for f in fine["flops_ratio"].values())
    assert np.mean(list(tf["coarse_fraction"].values())) == pytest.approx(v["training-free@0.02"]["coarse_fraction"])
    md = (tmp_path / "eval.md").read_text()
    assert "Per detail grade 1/2/3/4 (1/1/1/1 images" in md and "| training-free@0.02 |" in md


def test_todays_split_gets_grade_columns_too(tmp_path):
    rep = evaluate(EvalSettings(model="tiny", n_prompts=3, steps=4, training_free=False, out=str(tmp_path)),
                   progress=False, reference_n=REF)
    assert set(rep["grade_counts"]) <= {"1", "2", "3"} and sum(rep["grade_counts"].values()) == 3
    assert set(rep["variants"][1]["by_grade"]["adherence"]) == set(rep["grade_counts"])


def test_cli_graded_on_a_model_without_the_words_is_one_error_line(tmp_path):
    r = CliRunner().invoke(main, ["evaluate", "--model", "tiny", "--graded", "--n-prompts", "4", "--steps", "2",
                                  "--out", str(tmp_path)])
    assert r.exit_code == 2
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "checkered, pinstriped" in lines[0]
    r = CliRunner().invoke(main, ["generate", "--model", "tiny", "--prompt",
                                  "a large red circle in the center on a checkered background", "--steps", "6",
                                  "--out", str(tmp_path / "x.png")])
    assert r.exit_code == 2 and "error:" in r.output and "checkered" in r.output


def _calibrate(tmp_path, model, *extra):
    return CliRunner().invoke(main, [str(a) for a in (
        "calibrate", "--model", model, "--prompts", GRADED_PROMPTS, "--steps", 4, "--policy", "ladder:n4=1",
        "--sweep", "tail=1", "--work", tmp_path / "work", "--profile", tmp_path / "p.json", "--quiet",
        "--min-psnr", 0, "--max-quality-drop", 100, *extra)])


def test_calibrate_graded_prompts(graded_tiny, tmp_path):
    r = _calibrate(tmp_path / "a", "tiny", "--n-prompts", 3)
    assert r.exit_code == 2 and "error:" in r.output and "not in the model's vocabulary" in r.output
    assert "--readable-only" in r.output
    r = _calibrate(tmp_path / "b", str(graded_tiny), "--readable-only", "--grades", "1,3,4", "--n-prompts", 6)
    assert r.exit_code == 0, r.output
    assert "dropped" in r.output and "Per detail grade 1/3/4" in r.output
    rows = [json.loads(ln) for ln in (tmp_path / "b" / "work" / "rows.jsonl").read_text().splitlines()]
    assert set(rows[0]["by_grade"]) == {"1", "3", "4"} and "psnr" in rows[1]["by_grade"]["4"]
    assert sum(g["prompts"] for g in rows[0]["by_grade"].values()) == 6
    prof = json.loads((tmp_path / "b" / "p.json").read_text())
    assert prof["n_prompts"] == 6 and "by_grade" in prof["sweep"][0]
