"""The batch loop of the service (no Ray): each job's result equals the single-process generate output."""
import numpy as np
import pytest

from ddit_export.api import build_settings
from ddit_export.errors import VocabularyError
from ddit_export.runtime.generate import generate
from ddit_export.serve.batching import BatchStats, Cancelled, run_jobs

P = ["a large red circle in the center on a black background",
     "a small blue square at the top left on a striped background",
     "a medium yellow triangle at the bottom right"]


def _same_images(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))


def test_mixed_schedules_batch_each_keeps_its_own(flux_mini_runtime):
    """Default ladder, n=2, the DDiT rule (two taus: their decisions disagree step by step), fine-only and the step
    cache, all in one batch: every job's sizes and images equal generate's for its settings alone."""
    model, backend = flux_mini_runtime
    jobs = [build_settings(model, prompts=[P[0]], seed=1), build_settings(model, prompts=[P[1]] * 2, seed=2),
            build_settings(model, prompts=[P[2]], seed=3, policy="ddit"),
            build_settings(model, prompts=[P[0]], seed=4, policy="ddit:tau=0.004"),
            build_settings(model, prompts=[P[1]], seed=5, static=(1,) * 28),
            build_settings(model, prompts=[P[2]], seed=6, cache={"mode": "taylor", "interval": 4}),
            build_settings(model, prompts=[P[2]], seed=7, steps=12, policy="ladder:n4=4,tail=4")]
    refs = [generate(model, backend, s, progress=False) for s in jobs]
    stats = BatchStats()
    outs = run_jobs(model, backend, jobs, stats=stats)
    assert len({tuple(r.trace.sizes) for r in refs}) >= 4  # the batch really mixes schedules
    for ref, out in zip(refs, outs):
        assert out.trace.sizes == ref.trace.sizes
        assert out.trace.kinds == ref.trace.kinds
        assert _same_images(out.images, ref.images)
        assert out.trace.flops_ratio == pytest.approx(ref.trace.flops_ratio)
    # grouping by size: far fewer backend calls than the jobs' model steps added up
    model_steps = sum(sum(k == "model" for k in r.trace.kinds) for r in refs)
    assert sum(stats.calls.values()) < model_steps / 2
    assert sum(stats.samples.values()) == sum(sum(k == "model" for k in r.trace.kinds) * len(s.prompts)
                                              for r, s in zip(refs, jobs))


def test_one_bad_job_or_cancelled_job_leaves_the_others(flux_mini_runtime):
    model, backend = flux_mini_runtime
    good = build_settings(model, prompts=[P[0]], seed=1, steps=8, policy="ddit")
    bad = build_settings(model, prompts=["a zebra"], seed=1, steps=8, policy="ddit")
    calls = {"n": 0}

    def cancel_after_three_steps():
        calls["n"] += 1
        return calls["n"] > 3

    outs = run_jobs(model, backend, [good, bad, good], cancelled=[lambda: False, lambda: False,
                                                                  cancel_after_three_steps])
    assert isinstance(outs[1], VocabularyError)
    assert isinstance(outs[2], Cancelled)
    assert _same_images(outs[0].images, generate(model, backend, good, progress=False).images)
