"""Several generation jobs run together, each keeping its own schedule: the service's batch loop.

A job is one request: its prompt (``n`` copies: a batch of n, which takes one decision, as ``generate`` does),
seed, steps and schedule, i.e. one :class:`~ddit_export.settings.GenerateSettings`. Jobs with the same number of
steps share the timesteps, so they step in lockstep; at every step each job's own policy (and step cache) decides
its size, and the jobs that chose the same size run as **one** backend call (their latents concatenated along the
batch). A static schedule (the default ladder) gives every job the same size at every step: one call per step for
the whole batch. When dynamic decisions disagree, a step splits into one call per size, never forcing a job onto
another job's size: each job's result is the single-process ``generate`` output for its settings (measured
bit-identical on ONNX Runtime for equal batch composition; batch size can change ONNX Runtime's float summation
order, which the tests bound at PSNR >= 40 dB).

Everything here is plain runtime code (no Ray): ``serve/app.py`` calls :func:`run_jobs` from a replica.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import torch

from ..errors import DDiTError
from ..flops import step_flops
from ..runtime.cache import make_cache
from ..runtime.generate import GenerationResult, _jsonable, _sizes, flux_timesteps, initial_noise
from ..schedule import StepRecord, Trace, make_policy
from ..settings import GenerateSettings


class Cancelled(DDiTError):
    """The job was cancelled (client gone, deadline passed) before it finished."""


@dataclass
class _State:
    index: int
    settings: GenerateSettings
    cancelled: object  # () -> bool
    b: int = 0
    cond: object = None
    x: torch.Tensor | None = None
    guidance: torch.Tensor | None = None
    sched: object = None
    policy: object = None
    cache: object = None
    trace: Trace | None = None
    history: deque = field(default_factory=lambda: deque(maxlen=4))
    decision: object = None
    v: torch.Tensor | None = None
    kind: str = "model"
    error: BaseException | None = None


@dataclass
class BatchStats:
    """Where a batch's time went (seconds) and how many backend calls it made per size."""

    jobs: int = 0
    encode_s: float = 0.0
    transformer_s: float = 0.0
    decode_s: float = 0.0
    other_s: float = 0.0
    calls: dict = field(default_factory=dict)  # size -> backend calls
    samples: dict = field(default_factory=dict)  # size -> samples those calls carried (batch rows)

    def to_dict(self) -> dict:
        return {"jobs": self.jobs, "encode_s": self.encode_s, "transformer_s": self.transformer_s,
                "decode_s": self.decode_s, "other_s": self.other_s,
                "calls": {str(k): v for k, v in sorted(self.calls.items())},
                "samples": {str(k): v for k, v in sorted(self.samples.items())}}


def run_jobs(model, backend, jobs: list[GenerateSettings], cancelled=None, decode: bool = True,
             stats: BatchStats | None = None) -> list:
    """Run ``jobs`` together on ``backend``; returns one entry per job, in order: a GenerationResult, or the
    exception that job ended with (a DDiTError for bad input, :class:`Cancelled`, or a backend failure) so that
    one job's failure never fails the others. ``cancelled``: one ``() -> bool`` per job, polled every step."""
    t_start = time.perf_counter()
    stats = stats if stats is not None else BatchStats()
    stats.jobs += len(jobs)
    cancelled = cancelled or [lambda: False] * len(jobs)
    states = [_State(i, s, c) for i, (s, c) in enumerate(zip(jobs, cancelled))]
    t0 = time.perf_counter()
    for st in states:
        try:
            _setup(model, backend, st)
        except Exception as e:  # noqa: BLE001 - one job's bad input must not fail the batch
            st.error = e
    stats.encode_s += time.perf_counter() - t0
    groups: dict[int, list[_State]] = {}
    for st in states:
        if st.error is None:
            groups.setdefault(st.settings.steps, []).append(st)
    for group in groups.values():
        _lockstep(model, backend, group, stats)
    t0 = time.perf_counter()
    out = []
    for st in states:
        if st.error is None:
            try:
                images = model.decode(st.x, model.geometry(st.settings.height, st.settings.width)) if decode else None
                out.append(GenerationResult(st.x, st.trace, images))
            except Exception as e:  # noqa: BLE001
                out.append(e)
        else:
            out.append(st.error)
    stats.decode_s += time.perf_counter() - t0
    stats.other_s = max(0.0, time.perf_counter() - t_start - stats.encode_s - stats.transformer_s - stats.decode_s)
    return out


def _setup(model, backend, st: _State):
    """What ``generate`` does before its loop, for one job."""
    s = st.settings
    geom = model.geometry(s.height, s.width)
    st.cond = model.encode(list(s.prompts))
    st.b = len(s.prompts)
    sizes = _sizes(s, geom, tuple(backend.sizes))
    st.policy = make_policy(s, geom.grid, sizes)
    device = st.cond.states.device
    st.x = initial_noise(geom, st.b, s.seed, device)
    st.guidance = torch.full((st.b,), s.guidance, device=device) if model.guidance_embeds else None
    st.sched = flux_timesteps(model.scheduler_config, s.steps, geom.tokens(1))
    text_tokens = st.cond.states.shape[1]
    st.trace = Trace(model.name, geom.grid, {"generate": _jsonable(s), "sizes": list(sizes)},
                     fine_flops_per_step=step_flops(model.transformer_config, geom.tokens(1), text_tokens, 1,
                                                    batch=st.b))
    st.cache = make_cache(s.cache, s.steps)


def _lockstep(model, backend, group: list[_State], stats: BatchStats):
    """The loop of ``generate`` over jobs with one number of steps: same step order, per-job decisions, one
    backend call per size per step."""
    geom = model.geometry(group[0].settings.height, group[0].settings.width)
    cfg, rank = model.transformer_config, model.lora_rank
    timesteps = group[0].sched.timesteps
    for i, t in enumerate(timesteps):
        live = []
        for st in group:
            if st.error is not None:
                continue
            if st.cancelled():
                st.error = Cancelled("cancelled")
                continue
            live.append(st)
        if not live:
            return
        sigma = float(t / 1000)
        by_size: dict[int, list[_State]] = {}
        for st in live:
            if getattr(st.policy, "needs_history", True):
                st.history.append(st.x.detach().float().cpu().numpy())
            st.decision = st.policy.decide(i, st.history)
            if st.cache is None or st.cache.should_compute(i, sigma):
                st.kind = "model"
                by_size.setdefault(st.decision.size, []).append(st)
            else:
                st.kind, st.v = "cached", st.cache.predict(sigma)
        seconds = {}
        for k, members in by_size.items():
            t0 = time.perf_counter()
            try:
                _run_size(backend, k, members, t, geom)
            except Exception as e:  # noqa: BLE001 - the jobs of this call fail, the others go on
                for st in members:
                    st.error = e
            dt = time.perf_counter() - t0
            stats.transformer_s += dt
            stats.calls[k] = stats.calls.get(k, 0) + 1
            stats.samples[k] = stats.samples.get(k, 0) + sum(st.b for st in members)
            for st in members:
                seconds[st.index] = dt
        for st in live:
            if st.error is not None:
                continue
            k = st.decision.size
            if st.kind == "model" and st.cache is not None:
                st.cache.update(i, sigma, st.v)
            observe = getattr(st.policy, "observe", None)
            if observe is not None:
                observe(i, st.x, st.v, float(st.sched.sigmas[i]), float(st.sched.sigmas[i + 1]))
            st.x = st.sched.step(st.v.to(st.x.dtype), t, st.x, return_dict=False)[0]
            text_tokens = st.cond.states.shape[1]
            flops = float(step_flops(cfg, geom.tokens(1), text_tokens, k, rank, st.b)) if st.kind == "model" else 0.0
            st.trace.steps.append(StepRecord(i, sigma, k, st.decision.reason, geom.tokens(k), flops,
                                             st.decision.sigmas, seconds.get(st.index, 0.0), st.kind))
            st.v = None


def _run_size(backend, k: int, members: list[_State], t, geom):
    """One backend call at size ``k`` for ``members``, their rows concatenated; each gets its slice of v."""
    from ..models.registry import Conditioning

    if len(members) == 1:
        st = members[0]
        st.v = backend.run(k, st.x, st.cond, (t / 1000).expand(st.b).to(st.x.device), st.guidance, geom.grid)
        return
    x = torch.cat([st.x for st in members])
    cond = Conditioning(torch.cat([st.cond.states for st in members]), torch.cat([st.cond.pooled for st in members]),
                        members[0].cond.txt_ids)
    b = x.shape[0]
    guidance = None if members[0].guidance is None else torch.cat([st.guidance for st in members])
    v = backend.run(k, x, cond, (t / 1000).expand(b).to(x.device), guidance, geom.grid)
    start = 0
    for st in members:
        st.v = v[start:start + st.b]
        start += st.b
