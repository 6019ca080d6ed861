"""The batch loop of the service (no Ray): each job's result equals the single-process generate output."""
import threading

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


# ---- issue 20, point 5: the service's batching, checked without depending on when requests arrive ---------------
class HoldUntil:
    """Requests from concurrent callers are held until ``n`` are queued, then handed to ``run_batch`` as one batch
    (what Ray Serve's batcher does when ``n`` arrive within its wait): no arrival timing is involved."""

    def __init__(self, n: int, run_batch):
        self.n, self.run_batch = n, run_batch
        self.items, self.results, self.batches = [], None, 0
        self.cond = threading.Condition()

    def submit(self, item):
        with self.cond:
            i = len(self.items)
            self.items.append(item)
            if len(self.items) == self.n:
                self.batches += 1
                self.results = self.run_batch(list(self.items))
                self.cond.notify_all()
            elif not self.cond.wait_for(lambda: self.results is not None, timeout=300):
                raise TimeoutError(f"only {len(self.items)} of {self.n} requests arrived")
            return self.results[i]


class _Metrics:
    """The replica's metrics without Ray: records the batches."""

    def __init__(self):
        self.batch_jobs = []

    def request(self, *a):
        pass

    def batch_done(self, stats, png_s):
        self.batch_jobs.append(stats.jobs)


def _replica(model, backend):
    """The service's generator replica (serve/app.py) around an open bundle, without Ray: its batch function
    ``_run`` is the one Ray Serve's batcher calls with the requests it gathered."""
    pytest.importorskip("ray.serve", reason="serve/app.py needs Ray Serve")
    from ddit_export.serve.app import Generator

    cls = Generator.func_or_class
    g = cls.__new__(cls)
    g.model, g.backend, g.metrics, g.pid = model, backend, _Metrics(), 0
    return g


def test_concurrent_requests_held_together_run_as_one_batch(flux_mini_runtime):
    """Four requests from four threads, held until all four are queued: the replica runs them as ONE batch (every
    response says batch_jobs 4), one backend call per size per step for the jobs that share a size, and every image
    equals single-process generate of that request."""
    import base64
    import io

    from PIL import Image

    from ddit_export.serve.app import _Pending
    from ddit_export.serve.schemas import parse_request

    model, backend = flux_mini_runtime
    bodies = [{"prompt": P[0], "seed": 1}, {"prompt": P[1], "seed": 2, "n": 2},
              {"prompt": P[2], "seed": 3, "policy": "ddit"}, {"prompt": P[0], "seed": 4, "cache": "taylor",
                                                               "cache_interval": 4}]
    jobs = [parse_request(b, model) for b in bodies]
    replica = _replica(model, backend)
    hold = HoldUntil(len(jobs), replica._run)
    out = [None] * len(jobs)

    def send(i):
        out[i] = hold.submit(_Pending(jobs[i]))

    threads = [threading.Thread(target=send, args=(i,), daemon=True) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not any(t.is_alive() for t in threads)
    assert hold.batches == 1 and replica.metrics.batch_jobs == [len(jobs)]
    refs = [generate(model, backend, j.settings, progress=False) for j in jobs]
    # one backend call per step for each size the jobs computing that step chose: fewer than their steps added up
    steps = range(len(refs[0].trace.steps))
    calls = sum(len({r.trace.sizes[i] for r in refs if r.trace.kinds[i] == "model"}) for i in steps)
    assert calls < sum(sum(k == "model" for k in r.trace.kinds) for r in refs)
    for res, ref in zip(out, refs):
        assert res["status"] == 200, res
        body = res["body"]
        assert body["timings"]["batch_jobs"] == len(jobs)  # what the service test used to see only by luck
        assert sum(body["timings"]["batch"]["calls"].values()) == calls
        assert body["schedule"]["sizes"] == ref.trace.sizes
        images = [Image.open(io.BytesIO(base64.b64decode(d["b64_json"]))).convert("RGB") for d in body["data"]]
        assert _same_images(images, ref.images)
