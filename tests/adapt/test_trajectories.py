"""The cached training trajectories: prompt files, coarse-step (mixed) trajectories, shard metadata."""
from pathlib import Path

from ddit_export.adapt import adapt
from tests.adapt.common import copy_model, quiet, settings


def test_prompt_file_and_coarse_mix(tiny_model_dir, tmp_path):
    """Trajectories from a prompt file, all of them taking random coarse steps after the warm-up."""
    model_dir = copy_model(tiny_model_dir, tmp_path / "model")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square at the top\n\na large green triangle in the center\n")
    s = settings(model_dir, tmp_path / "w", prompts_file=str(prompts), coarse_mix=1.0, steps=2,
                  out=str(tmp_path / "x.safetensors"))
    r = adapt(s, progress=False, log=quiet)
    assert r.state["step"] == 2 and Path(r.state["out"]).is_file()
    from safetensors import safe_open

    with safe_open(str(tmp_path / "w" / "trajectories" / "train_00000.safetensors"), "pt") as f:
        schedule = [int(k) for k in f.metadata()["schedule"].split(",")]
        assert f.get_tensor("coarse").all() and f.get_tensor("prompt").max() == 2
    assert schedule[:3] == [1, 1, 1] and any(k > 1 for k in schedule)


def test_policy_family_schedules_are_ladders_and_cache_plans():
    """--schedules ladders draws ladders over the calibrate range (monotone 4 -> 2 -> 1, head 0), half of them
    with a step-cache plan (starts computed, the warm-up computed, no gap longer than the interval)."""
    import numpy as np

    from ddit_export.adapt.trajectories import (CACHE_INTERVALS, LADDER_N4, LADDER_TAIL, cache_plan, draw_plans)

    rng = np.random.default_rng(0)
    plans = draw_plans("ladders", 200, 1.0, 28, [2, 4], rng)
    with_cache = [c for _, c in plans if c is not None]
    assert 60 < len(with_cache) < 140
    for sizes, cache in plans:
        assert len(sizes) == 28 and sizes[0] == 4 and sizes[-1] == 1
        assert all(a >= b for a, b in zip(sizes, sizes[1:]))  # coarse to fine, never back
        assert LADDER_N4[0] <= sizes.count(4) <= LADDER_N4[1] and LADDER_TAIL[0] <= sizes.count(1) <= LADDER_TAIL[1]
        if cache is not None:
            assert cache[0] == 1 and 0 in cache
            gaps = [len(g) for g in "".join(map(str, cache)).split("1") if g]
            assert max(gaps) < max(CACHE_INTERVALS)
    assert draw_plans("ladders", 10, 0.0, 28, [2, 4], rng) == [([1] * 28, None)] * 10  # mix 0: fine-only
    # a grid without size 4: its ladder steps run fine, never a size the grid cannot take
    assert all(4 not in s for s, _ in draw_plans("ladders", 20, 1.0, 28, [2], rng))
    # the cache plan is StepCache's own decision rule
    from ddit_export.runtime.cache import StepCache
    from ddit_export.settings import CacheSettings

    sc = StepCache(CacheSettings(mode="taylor", interval=5, warmup=2, tail=1), 28)
    want = []
    for i in range(28):
        c = sc.should_compute(i, 1 - i / 28)
        want.append(int(c))
        if c:
            sc.update(i, 1 - i / 28, __import__("torch").zeros(1))
    assert cache_plan(28, 5, 2, 1) == want


def test_ladder_trajectories_with_the_step_cache(tiny_model_dir, tmp_path):
    """Coarse trajectories of the deployed family: shard metadata names the ladder and the cache plan; on a
    cached step the state moves on the extrapolated velocity (so the states differ from the fine trajectory)."""
    from safetensors import safe_open

    model_dir = copy_model(tiny_model_dir, tmp_path / "model")
    s = settings(model_dir, tmp_path / "w", coarse_mix=1.0, schedules="ladders", steps=2, num_prompts=64,
                 out=str(tmp_path / "x.safetensors"))
    r = adapt(s, progress=False, log=quiet)
    assert r.state["step"] == 2
    shards = sorted((tmp_path / "w" / "trajectories").glob("train_*.safetensors"))
    cached = 0
    for p in shards:
        with safe_open(str(p), "pt") as f:
            meta = f.metadata()
            sizes = [int(k) for k in meta["schedule"].split(",")]
            assert sizes[0] in (2, 4) and sizes[-1] == 1 and f.get_tensor("coarse").all()
            cached += "cache" in meta
    assert cached >= 1  # 4 shards, each with a cache plan with p = 1/2: seed 0 draws at least one


def test_init_adapters_continue_a_run_and_a_mismatch_is_refused(tiny_model_dir, tmp_path):
    import pytest
    import torch
    from safetensors.torch import load_file

    from ddit_export.adapt import load_student
    from ddit_export.errors import WeightsError

    model_dir = copy_model(tiny_model_dir, tmp_path / "model")
    first = adapt(settings(model_dir, tmp_path / "a", out=str(tmp_path / "a.safetensors")), progress=False, log=quiet)
    s = settings(model_dir, tmp_path / "b", init_adapters=first.state["out"], steps=1)
    start = load_student(s).transformer.adapter_state_dict()
    trained = load_file(first.state["out"])
    assert all(torch.equal(start[k], trained[k]) for k in trained)
    with pytest.raises(WeightsError, match="rank 32, init tile; this run has sizes .* rank 8"):
        load_student(settings(model_dir, tmp_path / "c", init_adapters=first.state["out"], rank=8))
    with pytest.raises(WeightsError, match="not found"):
        load_student(settings(model_dir, tmp_path / "c", init_adapters=str(tmp_path / "none.safetensors")))


def test_plateau_score_reads_the_adapters_alone():
    from ddit_export.adapt.report import plateau_score, quality_schedules

    q = quality_schedules(28, (1, 2, 4), rules=False, carry=True)
    assert q["static-alt-k2+carry"] == {**q["static-alt-k2"], "carry": "fine"}
    assert plateau_score({"static-alt-k2": {"psnr": 30.0}, "static-alt-k2+carry": {"psnr": 40.0},
                          "static-alt-k4": {"psnr": 20.0}}) == 25.0
    # --objective blocks trains what a carried step keeps, so its plateau follows the carried rows
    assert plateau_score({"static-alt-k2": {"psnr": 30.0}, "static-alt-k2+carry": {"psnr": 40.0},
                          "static-alt-k4+carry": {"psnr": 36.0}}, carried=True) == 38.0


def test_quality_checks_and_plateau_stop(tiny_model_dir, tmp_path):
    """--quality-minutes logs held-out PSNR during training; --patience stops at a plateau and still writes the
    adapters. A learning rate of ~0 cannot gain 0.1 dB, so 2 checks without a gain end the run early."""
    import csv

    model_dir = copy_model(tiny_model_dir, tmp_path / "model")
    s = settings(model_dir, tmp_path / "w", steps=50, lr=1e-12, eval_images=2, quality_minutes=1e-9, patience=2,
                 sample_steps=6, out=str(tmp_path / "x.safetensors"))
    r = adapt(s, progress=False, log=quiet)
    assert r.state["step"] == 2 and Path(r.state["out"]).is_file()
    rows = list(csv.DictReader(open(tmp_path / "w" / "quality.csv")))
    assert [row["step"] for row in rows if row["adapters"] == "training"] == ["1"] * 4 + ["2"] * 4
    # the adapters alone and with detail carry (runtime/carry.py); the plateau check reads the first two only
    assert {row["schedule"] for row in rows if row["adapters"] == "training"} == {
        "static-alt-k2", "static-alt-k4", "static-alt-k2+carry", "static-alt-k4+carry"}
    assert (tmp_path / "w" / "quality.png").stat().st_size > 1000  # the curve the plateau stop read
