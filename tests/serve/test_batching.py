"""The batch loop of the service (no Ray): each job's result equals the single-process generate output."""
import numpy as np
import pytest
import torch

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


def test_cache_switch_refresh_in_the_batch_loop(flux_mini_runtime):
    """The batch loop gives the cache each step's size: a job with the switch refresh computes and extrapolates the
    steps generate does (alone: the same latents bit for bit; beside another job: to batch arithmetic)."""
    model, backend = flux_mini_runtime
    job = build_settings(model, prompts=[P[0]], seed=4, cache={"mode": "taylor", "interval": 6, "switch": True})
    plain = generate(model, backend, build_settings(model, prompts=[P[0]], seed=4,
                                                    cache={"mode": "taylor", "interval": 6}), progress=False)
    ref = generate(model, backend, job, progress=False)
    assert ref.trace.kinds != plain.trace.kinds  # the refresh decides steps here
    alone = run_jobs(model, backend, [job])[0]
    pair = run_jobs(model, backend, [build_settings(model, prompts=[P[1]], seed=1), job])[1]
    for out in (alone, pair):
        assert out.trace.kinds == ref.trace.kinds and out.trace.sizes == ref.trace.sizes
    assert torch.equal(alone.latents, ref.latents)
    torch.testing.assert_close(pair.latents, ref.latents, atol=1e-4, rtol=0)


def test_detail_carry_in_the_batch_loop(flux_mini_runtime):
    """Jobs with and without detail carry in one batch: each equals generate alone (runtime/carry.py)."""
    model, backend = flux_mini_runtime
    jobs = [build_settings(model, prompts=[P[0]], seed=1, steps=10, policy="ladder:head=1,n4=3,tail=3", carry=c)
            for c in ("fine", "off")]
    jobs.append(build_settings(model, prompts=[P[1]], seed=2, steps=10, static=(1, 4, 2, 1, 2, 4, 1, 2, 1, 1),
                               carry="fine", cache={"mode": "taylor", "interval": 3}))
    refs = [generate(model, backend, s, progress=False) for s in jobs]
    outs = run_jobs(model, backend, jobs)
    assert not _same_images(refs[0].images, refs[1].images)  # carry changed the result
    for ref, out in zip(refs, outs):
        assert out.trace.sizes == ref.trace.sizes and out.trace.kinds == ref.trace.kinds
        assert _same_images(out.images, ref.images)


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
class _Metrics:
    """The replica's metrics without Ray: records the jobs of every loop step."""

    def __init__(self):
        self.batch_jobs = []

    def request(self, *a):
        pass

    def batch_done(self, stats, png_s):
        self.batch_jobs.append(stats.jobs)


def _replica(model, backend, max_batch_size: int = 8):
    """The service's generator replica (serve/app.py) around an open bundle, without Ray and without its loop
    thread: the test steps the replica's loop itself (``step_once``, what the thread runs)."""
    from types import SimpleNamespace

    pytest.importorskip("ray.serve", reason="serve/app.py needs Ray Serve")
    from ddit_export.serve.app import Generator

    cls = Generator.func_or_class
    g = cls.__new__(cls)
    g.model, g.backend, g.metrics, g.pid = model, backend, _Metrics(), 0
    g.options = SimpleNamespace(max_batch_size=max_batch_size, batch_wait_s=0.0)
    g._start_loop(thread=False)
    return g


def test_concurrent_requests_queued_together_run_in_one_loop(flux_mini_runtime):
    """Four requests submitted before the loop steps: all four join at step 0 and every step runs them together
    (each response says batch_jobs 4, joined at step 0), one backend call per size per step for the jobs that share
    a size, and every image equals single-process generate of that request. No threads race: the test steps the
    replica's loop itself once every request is queued."""
    import asyncio
    import base64
    import io

    from PIL import Image

    from ddit_export.serve.schemas import parse_request

    model, backend = flux_mini_runtime
    bodies = [{"prompt": P[0], "seed": 1}, {"prompt": P[1], "seed": 2, "n": 2},
              {"prompt": P[2], "seed": 3, "policy": "ddit"}, {"prompt": P[0], "seed": 4, "cache": "taylor",
                                                               "cache_interval": 4}]
    jobs = [parse_request(b, model) for b in bodies]
    rec = _Recorder(backend)
    replica = _replica(model, rec)

    def drive():
        while not replica.loop.idle:
            replica.step_once()

    async def serve_all():
        tasks = [asyncio.ensure_future(replica.generate(j)) for j in jobs]
        await asyncio.sleep(0)  # every request has reached the loop's queue
        assert len(replica.loop.queued) == len(jobs)
        await asyncio.get_running_loop().run_in_executor(None, drive)
        return await asyncio.gather(*tasks)

    out = asyncio.run(serve_all())
    refs = [generate(model, backend, j.settings, progress=False) for j in jobs]
    assert set(replica.metrics.batch_jobs) == {len(jobs)} and len(replica.metrics.batch_jobs) == 28
    # one backend call per step for each size the jobs computing that step chose: fewer than their steps added up
    steps = range(len(refs[0].trace.steps))
    calls = sum(len({r.trace.sizes[i] for r in refs if r.trace.kinds[i] == "model"}) for i in steps)
    assert len(rec.calls) == calls < sum(sum(k == "model" for k in r.trace.kinds) for r in refs)
    for res, ref in zip(out, refs):
        assert res["status"] == 200, res
        body = res["body"]
        assert body["timings"]["batch_jobs"] == len(jobs) and body["timings"]["joined_at_step"] == 0
        assert sum(body["timings"]["batch"]["calls"].values()) == sum(k == "model" for k in ref.trace.kinds)
        assert body["schedule"]["sizes"] == ref.trace.sizes
        images = [Image.open(io.BytesIO(base64.b64decode(d["b64_json"]))).convert("RGB") for d in body["data"]]
        assert _same_images(images, ref.images)


# ---- continuous batching: jobs join the running loop at a step boundary ------------------------------------------
class _Recorder:
    """The backend, recording every call: (size, rows, each row's timestep)."""

    def __init__(self, backend):
        self.backend, self.calls = backend, []

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def run(self, k, x, cond, t, guidance, grid):
        self.calls.append((k, x.shape[0], [round(float(v), 6) for v in t]))
        return self.backend.run(k, x, cond, t, guidance, grid)


def _close(a, b):
    from ddit_export.quality.metrics import psnr

    return all(np.array_equal(np.asarray(x), np.asarray(y)) or psnr(np.asarray(x), np.asarray(y)) >= 40
               for x, y in zip(a, b))


def test_jobs_join_the_running_loop_at_the_next_step_boundary(flux_mini_runtime):
    """Deterministic (no threads, no timing): job A runs 5 steps alone; B joins at boundary 5 and its step 0 runs in
    the same backend call as A's step 5 (one call, two rows, each with its own timestep); C (the DDiT rule) and D
    (step cache, n=2) join at boundary 9; B leaves after its own 12 steps, while the others go on. Every job's
    schedule and images equal single-process generate for its settings."""
    from ddit_export.serve.batching import StepLoop

    model, backend = flux_mini_runtime
    rec = _Recorder(backend)
    a = build_settings(model, prompts=[P[0]], seed=1, static=(1,) * 28)
    b = build_settings(model, prompts=[P[1]], seed=2, steps=12, policy="fine")
    c = build_settings(model, prompts=[P[2]], seed=3, policy="ddit")
    d = build_settings(model, prompts=[P[0]] * 2, seed=4, cache={"mode": "taylor", "interval": 4})
    loop = StepLoop(model, rec)
    finished = {}
    ids = {"a": loop.submit(a)}
    for _ in range(5):
        finished.update({i: (loop.steps, r) for i, r in loop.step()})
    assert len(rec.calls) == 5 and all(rows == 1 for _, rows, _ in rec.calls)
    ids["b"] = loop.submit(b)
    loop.step()
    k, rows, ts = rec.calls[-1]
    sa, sb = [flux_sched(model, s) for s in (a, b)]
    assert (k, rows) == (1, 2) and ts == [round(float(sa[5]) / 1000, 6), round(float(sb[0]) / 1000, 6)]
    for _ in range(3):
        loop.step()
    ids["c"], ids["d"] = loop.submit(c), loop.submit(d)
    while not loop.idle:
        finished.update({i: (loop.steps, r) for i, r in loop.step()})
    assert finished[ids["b"]][0] == 5 + 12 and finished[ids["a"]][0] == 28 and finished[ids["c"]][0] == 9 + 28
    for name, s in zip("abcd", (a, b, c, d)):
        res = finished[ids[name]][1]
        ref = generate(model, backend, s, progress=False)
        assert res.trace.sizes == ref.trace.sizes and res.trace.kinds == ref.trace.kinds, name
        assert _close(res.images, ref.images), name
    assert len({tuple(finished[ids[n]][1].trace.sizes) for n in "abcd"}) >= 3  # the loop really mixes schedules


def test_step_loop_admits_at_most_max_jobs_and_drops_a_cancelled_job(flux_mini_runtime):
    from ddit_export.serve.batching import StepLoop

    model, backend = flux_mini_runtime
    s = build_settings(model, prompts=[P[0]], seed=1, steps=4, policy="fine")
    loop = StepLoop(model, backend, max_jobs=2)
    flag = {"cancel": False}
    first = loop.submit(s, cancelled=lambda: flag["cancel"])
    second, third = loop.submit(s), loop.submit(s)
    loop.step()
    assert len(loop.running) == 2 and len(loop.queued) == 1  # the third waits for room
    flag["cancel"] = True
    done = dict(loop.step())
    assert isinstance(done[first], Cancelled) and len(loop.running) == 2  # the third took the freed place
    while not loop.idle:
        done.update(loop.step())
    assert _close(done[second].images, done[third].images)


def flux_sched(model, s):
    from ddit_export.runtime.generate import flux_timesteps

    geom = model.geometry(s.height, s.width)
    return flux_timesteps(model.scheduler_config, s.steps, geom.tokens(1)).timesteps
