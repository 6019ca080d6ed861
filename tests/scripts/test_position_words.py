"""scripts/position_words.py (issue 23): the summary it prints, and a run on a micro video model."""
import json

from tests.helpers import load_script


def test_summary_counts_hits_and_seeds_the_word_did_not_move():
    s = load_script("position_words")
    positions = ("top left", "bottom right")
    # seed 0 lands in the named cell both times (the word moved it); seed 1 lands in the center whatever the word
    r = s.summarise([["top left", "center"], ["bottom right", "center"]], positions)
    assert r["in_named_cell"] == {"top left": 0.5, "bottom right": 0.5} and r["mean_in_named_cell"] == 0.5
    assert r["unchanged_across_words"] == 0.5
    r = s.summarise([["center", None], ["center", None]], positions)
    assert r["mean_in_named_cell"] == 0 and r["unchanged_across_words"] == 1.0


def test_runs_on_a_micro_video_model(tmp_path, capsys):
    import torch

    from ddit_export.zoo import train_wan as W

    threads = torch.get_num_threads()  # the script sets its own

    W.train(W.WanTrainConfig(**W.MICRO), tmp_path / "w", steps=1, threads=1, log=lambda *a: None, samples=False,
            probe_n=0)
    out = tmp_path / "pw.json"
    try:
        assert load_script("position_words").main(["--video", str(tmp_path / "w" / "model"), "--n", "2",
                                                   "--backgrounds", "black", "--json", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 1 and rows[0]["kind"] == "video" and set(rows[0]["cells"]) == {
        "top left", "top right", "bottom left", "bottom right"}
    assert all(len(v) == 2 for v in rows[0]["cells"].values()) and "in the named corner" in capsys.readouterr().out
