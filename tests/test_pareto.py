import json

import pytest
import torch

from ddit_export.errors import ConfigError
from ddit_export.pareto import Method, _counted_flops, _Runner, default_methods, ladder, run_pareto
from ddit_export.runtime.backends.torch import TorchBackend
from ddit_export.runtime.generate import initial_noise
from ddit_export.settings import ParetoSettings

STEPS = 12
FINE = {"static": (1,) * STEPS}
ROWS = (Method("fine-only", "fine-only", FINE),
        Method("ladder", "static", {"static": ladder((3, 1), (3, 4), (4, 2), (2, 1))}),
        Method("taylor N=3", "step cache (ours)", FINE, {"mode": "taylor", "interval": 3}),
        Method("ladder + taylor N=3", "ladder + cache", {"static": ladder((3, 1), (3, 4), (4, 2), (2, 1))},
               {"mode": "taylor", "interval": 3}),
        Method("fbc", "diffusers FirstBlockCache", FINE, peer={"kind": "fbc", "threshold": 0.5}),
        Method("magcache", "diffusers MagCache", FINE, peer={"kind": "magcache", "threshold": 0.5}))


def test_bench_runs_end_to_end_on_tiny_and_writes_md_json_png(tmp_path, tiny_bundle):
    s = ParetoSettings(model="tiny", n_prompts=2, wall_prompts=1, repeats=1, steps=STEPS, methods=ROWS,
                       bundle=str(tiny_bundle), out=str(tmp_path / "p"))
    rep = run_pareto(s, log=lambda *a: None, progress=False)
    for f in ("pareto.json", "pareto.md", "pareto.png"):
        assert (tmp_path / "p" / f).stat().st_size > 100
    back = json.loads((tmp_path / "p" / "pareto.json").read_text())
    rows = {r["name"]: r for r in back["rows"]}
    assert rows["fine-only"]["compute_ratio"] == 1.0 and rows["fine-only"]["psnr"] is None
    assert rows["taylor N=3"]["cached_fraction"] > 0.3
    assert rows["ladder + taylor N=3"]["compute_ratio"] < min(rows["ladder"]["compute_ratio"],
                                                              rows["taylor N=3"]["compute_ratio"])
    assert rows["taylor N=3"]["onnxruntime"]["speedup"] > 0 and rows["fbc"]["onnxruntime"] is None
    assert len(back["mag_ratios"]) == STEPS  # MagCache ran its own calibration
    assert all(len(k) == STEPS for k in rows["taylor N=3"]["kinds"])
    md = (tmp_path / "p" / "pareto.md").read_text()
    assert "| ladder + taylor N=3 |" in md


def test_a_diffusers_peer_runs_on_the_tiny_model_inside_the_loop(tiny_model):
    """FirstBlockCache on the trunk skips blocks inside fine-only steps: less counted work, close output."""
    r = _Runner(tiny_model, STEPS, [tiny_model.default_prompt])
    noise = initial_noise(tiny_model.geometry(), 1, 0)
    with TorchBackend(tiny_model.transformer) as base:
        fine_flops, fine = _counted_flops(lambda: r.generate(ROWS[0], base, tiny_model.default_prompt, noise))
    peer = Method("fbc", "fbc", FINE, peer={"kind": "fbc", "threshold": 0.5})
    be = r.backend(peer, None)
    with be:
        runs = [_counted_flops(lambda: r.generate(peer, be, tiny_model.default_prompt, noise)) for _ in range(2)]
    (f1, a), (f2, b) = runs
    assert f1 < 0.95 * fine_flops and f1 == f2  # skipped work; reset between generations: same decisions
    assert torch.equal(a.latents, b.latents)
    assert not torch.equal(a.latents, fine.latents)
    assert float((a.latents - fine.latents).abs().mean()) < 0.5 * float(fine.latents.abs().mean())
    with TorchBackend(tiny_model.transformer) as base:  # hooks gone after the row
        _, again = _counted_flops(lambda: r.generate(ROWS[0], base, tiny_model.default_prompt, noise))
    assert torch.equal(again.latents, fine.latents)


def test_first_row_must_be_fine_only(tmp_path):
    s = ParetoSettings(model="tiny", n_prompts=2, wall_prompts=1, repeats=1, steps=STEPS, methods=ROWS[1:],
                       out=str(tmp_path))
    with pytest.raises(ConfigError, match="fine-only"):
        run_pareto(s, log=lambda *a: None, progress=False)


def test_default_rows_are_valid_settings(tiny_model):
    r = _Runner(tiny_model, 28, [])
    rows = default_methods(28, 0.002)
    assert rows[0].name == "fine-only" and {"ladder + cache", "diffusers MagCache"} <= {m.family for m in rows}
    for m in rows:
        r.settings(m, ["a red circle"])
    assert Method.from_dict({"name": "x", "generate": {"static": [1, 2]}}).generate == {"static": (1, 2)}


def test_replay_times_recorded_plans(tmp_path, tiny_model):
    from ddit_export.pareto_replay import load_plans, replay_report

    rows = [dict(name="fine-only", family="fine-only", method={"peer": None}, schedules=["1" * STEPS],
                 kinds=["m" * STEPS]),
            dict(name="stack", family="s", method={"peer": None}, schedules=["111444222211"],
                 kinds=["mmmcmcmcmcmm"]),
            dict(name="peer", family="p", method={"peer": {"kind": "fbc"}}, schedules=["1" * STEPS],
                 kinds=["m" * STEPS])]
    (tmp_path / "pareto.json").write_text(json.dumps({"format": "ddit-pareto/1", "rows": rows}))
    plans, notes = load_plans(tmp_path / "pareto.json", 4)
    assert [p["name"] for p in plans] == ["fine-only", "stack"] and "peer" in notes[0]
    res = replay_report(tmp_path / "pareto.json", model="tiny", repeats=1, prompts=1, log=lambda *a: None)
    stack = res["rows"][1]
    assert stack["flop_bound"] > 2 and stack["speedup"] > 0
    assert (tmp_path / "replay-tiny.md").is_file()


def test_append_keeps_earlier_rows_of_the_same_prompts_only():
    from ddit_export.pareto import append_rows

    base = dict(model="m", steps=28, prompts=["a"], seeds=[0], notes=[], rows=[{"name": "fine-only"}, {"name": "x"}])
    old = dict(model="m", steps=28, prompts=["a"], seeds=[0], rows=[{"name": "fine-only"}, {"name": "y"}])
    merged = append_rows(base, old)
    assert [r["name"] for r in merged["rows"]] == ["fine-only", "x", "y"] and "y" in merged["notes"][-1]
    with pytest.raises(ConfigError, match="prompts"):
        append_rows(base, dict(old, prompts=["b"]))


@pytest.mark.parametrize("args,msg", [
    (["bench", "--pareto", "o", "--replay", "r.json"], "not both"),
    (["bench", "--model", "tiny", "--pareto", "o", "--n-prompts", "1"], "n_prompts"),
    (["bench", "--model", "tiny", "--replay", "missing.json"], "cannot read"),
    (["generate", "--model", "tiny", "--cache", "taylor", "--cache-interval", "0"], "cache interval"),
    (["bench", "--model", "tiny", "--pareto", "o", "--grades", "1,2"], "--grades applies with --graded"),
    (["bench", "--model", "tiny", "--pareto", "o", "--graded", "--grades", "1,5"], "--grades must be"),
    (["bench", "--model", "tiny", "--pareto", "o", "--graded", "--grades", "1,4"], "checkered, pinstriped"),
])
def test_bad_bench_and_cache_options_end_in_one_error_line(args, msg, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from ddit_export.cli import main

    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2 and msg in r.output, r.output


def test_oracle_rows_bound_the_single_ladder_and_are_not_replayed(tmp_path):
    """--oracle adds the per-prompt best ladder at a FLOP budget and the best single ladder of the same search:
    the oracle is at least as good in PSNR, both within the budget, quality columns only, skipped by --replay."""
    from ddit_export.pareto_replay import load_plans

    s = ParetoSettings(model="tiny", n_prompts=2, wall_prompts=1, repeats=1, steps=STEPS, methods=ROWS[:2],
                       peers=False, oracle=0.6, out=str(tmp_path / "p"))
    rep = run_pareto(s, log=lambda *a: None, progress=False)
    oracle, single = [r for r in rep["rows"] if r["family"] == "oracle"]
    assert oracle["psnr"] >= single["psnr"] - 1e-9
    assert oracle["compute_ratio"] <= 0.6 + 1e-9 and single["compute_ratio"] <= 0.6 + 1e-9
    assert oracle["torch"] is None and len(oracle["schedules"]) == 2
    assert "| oracle per prompt" in (tmp_path / "p" / "pareto.md").read_text()
    plans, notes = load_plans(tmp_path / "p" / "pareto.json", 1)
    assert "oracle" not in {p["family"] for p in plans} and any("oracle" in n for n in notes)
    with pytest.raises(ConfigError, match="oracle"):
        ParetoSettings(oracle=1.5)


def test_rows_follow_the_models_profile_and_the_cache_goes_past_its_floor(tiny_model):
    """The ladder rows and the stacks use the calibrated profile they are given; the cache-alone rows include
    settings below its default floor of computed steps (warm-up 2, no fine tail)."""
    from ddit_export.runtime.cache import StepCache
    from ddit_export.settings import CacheSettings

    rows = default_methods(28, 0.002, profile="ladder:head=0,n4=12,tail=6")
    ladders = [m.generate["policy"] for m in rows if m.family.startswith("ladder policy (")]
    assert ladders[0] == "ladder:head=0,n4=12,tail=6" and "ladder:head=0,n4=16,tail=6" in ladders
    stacks = [m for m in rows if m.family == "ladder policy + cache"]
    assert {m.generate["policy"] for m in stacks} == {"ladder:head=0,n4=12,tail=6"}
    assert {m.cache["interval"] for m in stacks} == {3, 4, 5, 6, 8}

    def computed(cache):
        c = StepCache(CacheSettings(**cache), 28)
        n = 0
        for i in range(28):
            if c.should_compute(i, 1 - i / 28):
                c.update(i, 1 - i / 28, __import__("torch").zeros(1))
                n += 1
        return n

    floor = min(computed(m.cache) for m in rows if m.family == "step cache (ours)" and "w2" not in m.name)
    past = [computed(m.cache) for m in rows if m.family == "step cache (ours)" and "w2" in m.name]
    assert past and min(past) < floor
    r = _Runner(tiny_model, 28, [])
    for m in rows:
        r.settings(m, ["a red circle"])
    # no profile, or a rule profile: flux-mini's ladder
    def ladder_rows(rows):
        return [m.generate for m in rows if m.family.startswith("ladder policy")]

    from ddit_export.pareto import DEFAULT_LADDER_POLICY

    assert ladder_rows(default_methods(28, 0.002, profile="ddit:tau=0.002")) == ladder_rows(default_methods(28, 0.002))
    assert ladder_rows(default_methods(28, 0.002))[0] == {"policy": DEFAULT_LADDER_POLICY, "carry": "off"}
    # a profile with detail carry: its ladder rows and stacks carry, named so; the other rows do not
    rows = default_methods(28, 0.002, profile="ladder:head=1,n4=8,tail=5,carry=fine")
    assert {m.generate["carry"] for m in rows if m.family.startswith("ladder policy")} == {"fine"}
    assert "ladder policy n4=8 tail=5 carry" in {m.name for m in rows}
    assert all("carry" not in m.generate for m in rows if not m.family.startswith("ladder policy"))


def test_rows_run_without_carry_unless_they_say_so(tiny_model):
    import dataclasses

    from ddit_export.pareto import Method, _Runner

    model = tiny_model  # its profile is switched to carry for the test, then restored
    runner = _Runner(model, 6, [])
    saved = model.schedule_defaults
    try:
        model.schedule_defaults = dataclasses.replace(saved, carry="fine")
        plain = runner.settings(Method("x", "x", {"static": (1, 2, 1, 2, 1, 1)}), ["a red circle"])
        carried = runner.settings(Method("y", "y", {"static": (1, 2, 1, 2, 1, 1), "carry": "fine"}), ["a red circle"])
    finally:
        model.schedule_defaults = saved
    assert plain.schedule.carry == "off" and carried.schedule.carry == "fine"


def test_graded_captions_give_per_grade_columns_and_do_not_mix_with_held_out_reports(tmp_path):
    """--graded: the graded held-out captions evaluate --graded draws (the model's words), each row's FLOPs, PSNR and
    adherence per grade; a held-out report cannot be appended to it (other prompts)."""
    from ddit_export.models.registry import load_model
    from ddit_export.pareto import append_rows
    from ddit_export.quality.evaluate import eval_scenes

    s = ParetoSettings(model="tiny", n_prompts=3, wall_prompts=1, repeats=1, steps=STEPS, methods=ROWS[:2],
                       peers=False, grades=(1, 2, 3), out=str(tmp_path / "g"))
    rep = run_pareto(s, log=lambda *a: None, progress=False)
    enc = load_model("tiny").extras["text_encoder"].config
    want = eval_scenes(3, "graded", s.prompt_seed, enc.max_length, (1, 2, 3), tuple(enc.vocab))
    assert rep["prompts"] == [sc.caption for sc in want]
    assert rep["split"] == "graded" and rep["grades"] == [1, 2, 3] and rep["grade_counts"] == {"1": 1, "2": 1, "3": 1}
    fine, lad = rep["rows"]
    assert set(fine["by_grade"]) == {"adherence", "flops_ratio"}
    assert set(lad["by_grade"]["psnr"]) == {"1", "2", "3"}
    assert sum(lad["by_grade"]["psnr"].values()) / 3 == pytest.approx(lad["psnr"])
    assert lad["by_grade"]["flops_ratio"]["2"] == pytest.approx(lad["compute_ratio"])  # a static ladder: same FLOPs
    md = (tmp_path / "g" / "pareto.md").read_text()
    assert "graded held-out captions (grades 1,2,3)" in md and "Per detail grade 1/2/3" in md
    held = dict(rep, prompts=["a held-out caption"] * 3, split="heldout")
    with pytest.raises(ConfigError, match="prompts"):
        append_rows(rep, held)


def test_a_precision_row_runs_on_its_own_bundle(tmp_path, tiny_bundle, bundle_copy):
    """A row with ``bundle`` runs on that ONNX Runtime bundle in the quality pass and the ONNX Runtime column (no
    PyTorch column), scored against the PyTorch fp32 fine-only images; the row records the bundle's precision."""
    rows = (ROWS[0], Method("fine-only, bundle", "precision", FINE, bundle=str(bundle_copy)),
            Method("ladder, bundle", "precision", ROWS[1].generate, bundle=str(bundle_copy)))
    s = ParetoSettings(model="tiny", n_prompts=2, wall_prompts=1, repeats=1, steps=STEPS, methods=rows,
                       peers=False, bundle=str(tiny_bundle), out=str(tmp_path / "p"))
    rep = run_pareto(s, log=lambda *a: None, progress=False)
    r = {x["name"]: x for x in rep["rows"]}
    on = r["fine-only, bundle"]
    assert on["bundle"] == str(bundle_copy) and on["precision"] == "fp32"
    assert on["psnr"] > 50 and on["compute_ratio"] == 1.0  # the fp32 graphs: the same images within float error
    assert r["ladder, bundle"]["compute_ratio"] < 1 and r["ladder, bundle"]["psnr"] < on["psnr"]
    assert on["torch"] is None and on["onnxruntime"]["speedup"] > 0
    assert r["fine-only"]["torch"] is not None and "bundle" not in r["fine-only"]["method"]
    assert Method.from_dict(on["method"]).bundle == str(bundle_copy)  # the row reads back


def test_a_precision_row_of_another_model_or_with_a_peer_is_refused(tmp_path, tiny_bundle, monkeypatch):
    with pytest.raises(ConfigError, match="peer row runs on PyTorch"):
        Method.from_dict({"name": "x", "generate": FINE, "peer": {"kind": "fbc"}, "bundle": str(tiny_bundle)})
    from ddit_export import pareto

    ran = []
    monkeypatch.setattr(pareto, "_wall", lambda *a, **k: ran.append(1) or {})
    rows = (ROWS[0], Method("b", "precision", FINE, bundle=str(tiny_bundle)))
    s = ParetoSettings(model="tiny", n_prompts=2, wall_prompts=1, repeats=1, steps=STEPS, methods=rows,
                       peers=False, out=str(tmp_path / "p"))
    import ddit_export.runtime.bundle_model as bmod

    real = bmod.open_bundle

    def renamed(*a, **k):
        bm, be = real(*a, **k)
        bm.name = "another-model"
        return bm, be
    monkeypatch.setattr(bmod, "open_bundle", renamed)
    with pytest.raises(ConfigError, match="holds 'another-model', not the benchmarked 'tiny'"):
        run_pareto(s, log=lambda *a: None, progress=False)
    assert not ran  # refused before the quality pass
