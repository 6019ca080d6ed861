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
from ..runtime.carry import make_carry
from ..runtime.generate import (GenerationResult, _jsonable, initial_noise, model_geometry, model_timesteps,
                                usable_sizes)
from ..schedule import StepRecord, Trace, make_policy
from ..settings import GenerateSettings


class Cancelled(DDiTError):
    """The job was cancelled (client gone, deadline passed) before it finished."""


@dataclass
class _State:
    index: int
    settings: GenerateSettings
    cancelled: object  # () -> bool
    on_done: object = None  # (result) -> None, called once when the job leaves the loop
    b: int = 0
    geom: object = None
    cond: object = None
    x: torch.Tensor | None = None
    guidance: torch.Tensor | None = None
    sched: object = None
    policy: object = None
    cache: object = None
    carry: object = None  # runtime/carry.py's DetailCarry, or None
    trace: Trace | None = None
    history: deque = field(default_factory=lambda: deque(maxlen=4))
    decision: object = None
    v: torch.Tensor | None = None
    kind: str = "model"
    error: BaseException | None = None
    step: int = 0  # the job's own step index: the next step it runs
    joined_at: int = 0  # the loop's step count when the job joined
    peak_jobs: int = 0  # the most jobs that stepped together with this one (itself included)
    admitted_at: float | None = None  # time.time() when it joined
    calls: dict = field(default_factory=dict)  # size -> backend calls this job's rows took part in
    transformer_s: float = 0.0  # seconds of those calls

    def info(self) -> dict:
        """What a response reports of the job's life in the loop."""
        return {"joined_at_step": self.joined_at, "admitted_at": self.admitted_at, "peak_jobs": self.peak_jobs,
                "calls": {str(k): v for k, v in sorted(self.calls.items())}, "transformer_s": self.transformer_s}


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


class StepLoop:
    """Continuous batching at step granularity: jobs join the running lockstep loop at the next step boundary, each
    with its own step index, timesteps, schedule and step cache, and leave (decoded) after their own last step.

    Every :meth:`step` is one boundary then one step: queued jobs are admitted (encoded, noised, their policy built)
    up to ``max_jobs`` running at once, cancelled jobs leave, then every running job runs its own next step; the
    jobs that chose the same size run as one backend call (their rows concatenated, each row with its own
    timestep). A job's result is the single-process ``generate`` output for its settings, whatever joined or left
    around it. Thread-safe :meth:`submit`; :meth:`step` runs on one thread (the replica's loop thread, or a test)."""

    def __init__(self, model, backend, *, max_jobs: int | None = None, decode: bool = True,
                 stats: BatchStats | None = None):
        import threading

        if max_jobs is not None and max_jobs < 1:
            raise DDiTError(f"max_jobs must be >= 1, got {max_jobs}")
        self.model, self.backend, self.max_jobs, self.decode = model, backend, max_jobs, decode
        self.stats = stats if stats is not None else BatchStats()
        self.queued: deque = deque()
        self.running: list[_State] = []
        self.steps = 0  # steps the loop ran (boundaries passed)
        self.last_jobs = 0  # jobs that ran the last step
        self._lock = threading.Lock()
        self._next = 0

    def submit(self, settings: GenerateSettings, cancelled=None, on_done=None) -> int:
        """Queue a job (it joins at the next step boundary); returns its id. ``cancelled``: ``() -> bool``, polled
        at every boundary; ``on_done(result)``: called on the loop's thread with a GenerationResult or the exception
        the job ended with (DDiTError for bad input, :class:`Cancelled`, a backend failure), and a dict of its life
        in the loop (:meth:`_State.info`)."""
        with self._lock:
            st = _State(self._next, settings, cancelled or (lambda: False), on_done)
            self._next += 1
            self.queued.append(st)
        return st.index

    @property
    def idle(self) -> bool:
        with self._lock:
            return not self.queued and not self.running

    def _finish(self, st: _State, result, done: list):
        done.append((st.index, result))
        if st.on_done is not None:
            st.on_done(result, st.info())

    def fail_all(self, error: BaseException) -> list[tuple[int, object]]:
        """Every running and queued job ends with ``error`` (the loop itself failed: no job waits forever)."""
        done: list[tuple[int, object]] = []
        with self._lock:
            jobs, self.running, self.queued = self.running + list(self.queued), [], deque()
        for st in jobs:
            self._finish(st, error, done)
        return done

    def step(self) -> list[tuple[int, object]]:
        """One boundary and one step; returns the (job id, result) pairs of the jobs that left at it."""
        done: list[tuple[int, object]] = []
        running = []
        for st in self.running:  # cancelled jobs leave first: their places go to queued jobs at this boundary
            if st.cancelled():
                self._finish(st, Cancelled("cancelled"), done)
            else:
                running.append(st)
        self.running = running
        with self._lock:
            room = len(self.queued) if self.max_jobs is None else max(0, self.max_jobs - len(self.running))
            admitted = [self.queued.popleft() for _ in range(min(room, len(self.queued)))]
        t0 = time.perf_counter()
        for st in admitted:
            self.stats.jobs += 1
            if st.cancelled():
                self._finish(st, Cancelled("cancelled"), done)
                continue
            try:
                _setup(self.model, self.backend, st)
            except Exception as e:  # noqa: BLE001 - one job's bad input must not fail the others
                self._finish(st, e, done)
                continue
            st.joined_at, st.admitted_at = self.steps, time.time()
            self.running.append(st)
        self.stats.encode_s += time.perf_counter() - t0
        live = self.running
        self.last_jobs = len(live)
        if live:
            _step(self.model, self.backend, live, self.stats)
            self.steps += 1
        still = []
        for st in self.running:
            if st.error is not None:
                self._finish(st, st.error, done)
            elif st.step == len(st.sched.timesteps):
                t0 = time.perf_counter()
                try:
                    images = self.model.decode(st.x, st.geom) if self.decode else None
                    result = GenerationResult(st.x, st.trace, images)
                except Exception as e:  # noqa: BLE001
                    result = e
                self.stats.decode_s += time.perf_counter() - t0
                self._finish(st, result, done)
            else:
                still.append(st)
        self.running = still
        return done


def run_jobs(model, backend, jobs: list[GenerateSettings], cancelled=None, decode: bool = True,
             stats: BatchStats | None = None) -> list:
    """Run ``jobs`` together on ``backend`` (all joining at the first boundary of a :class:`StepLoop`); returns one
    entry per job, in order: a GenerationResult, or the exception that job ended with (a DDiTError for bad input,
    :class:`Cancelled`, or a backend failure) so that one job's failure never fails the others. ``cancelled``: one
    ``() -> bool`` per job, polled every step."""
    t_start = time.perf_counter()
    loop = StepLoop(model, backend, decode=decode, stats=stats)
    cancelled = cancelled or [lambda: False] * len(jobs)
    ids = [loop.submit(s, c) for s, c in zip(jobs, cancelled)]
    results: dict[int, object] = {}
    while not loop.idle:
        results.update(loop.step())
    s = loop.stats
    s.other_s = max(0.0, time.perf_counter() - t_start - s.encode_s - s.transformer_s - s.decode_s)
    return [results[i] for i in ids]


def _setup(model, backend, st: _State):
    """What ``generate`` does before its loop, for one job."""
    s = st.settings
    geom = st.geom = model_geometry(model, s)  # a video bundle's (F, h, w) grid with the request's frames
    st.cond = model.encode(list(s.prompts))
    st.b = len(s.prompts)
    sizes = usable_sizes(s, geom, tuple(backend.sizes))
    st.policy = make_policy(s, geom.grid, sizes)
    device = st.cond.states.device
    st.x = initial_noise(geom, st.b, s.seed, device)
    st.guidance = torch.full((st.b,), s.guidance, device=device) if model.guidance_embeds else None
    st.sched = model_timesteps(model.scheduler_config, s.steps, geom.tokens(1))
    text_tokens = st.cond.states.shape[1]
    st.trace = Trace(model.name, geom.grid, {"generate": _jsonable(s), "sizes": list(sizes)},
                     fine_flops_per_step=step_flops(model.transformer_config, geom.tokens(1), text_tokens, 1,
                                                    batch=st.b))
    st.cache = make_cache(s.cache, s.steps)
    st.carry = make_carry(s.schedule, geom)


def _step(model, backend, live: list[_State], stats: BatchStats):
    """One step of ``generate``'s loop for every job in ``live``, each at its own step index: per-job decisions,
    one backend call per (size, token grid) for the jobs that compute this step."""
    cfg, rank = model.transformer_config, model.lora_rank
    groups: dict[tuple, list[_State]] = {}
    for st in live:
        i = st.step
        st.peak_jobs = max(st.peak_jobs, len(live))
        sigma = float(st.sched.timesteps[i] / 1000)
        if getattr(st.policy, "needs_history", True):
            st.history.append(st.x.detach().float().cpu().numpy())
        st.decision = st.policy.decide(i, st.history)
        if st.cache is None or st.cache.should_compute(i, sigma, st.decision.size):
            st.kind = "model"
            groups.setdefault((st.decision.size, tuple(st.geom.grid)), []).append(st)
        else:
            st.kind, st.v = "cached", st.cache.predict(sigma)
    seconds = {}
    for (k, _), members in groups.items():
        t0 = time.perf_counter()
        try:
            _run_size(backend, k, members)
        except Exception as e:  # noqa: BLE001 - the jobs of this call fail, the others go on
            for st in members:
                st.error = e
        dt = time.perf_counter() - t0
        stats.transformer_s += dt
        stats.calls[k] = stats.calls.get(k, 0) + 1
        stats.samples[k] = stats.samples.get(k, 0) + sum(st.b for st in members)
        for st in members:
            seconds[st.index] = dt
            st.calls[k] = st.calls.get(k, 0) + 1
            st.transformer_s += dt
    for st in live:
        if st.error is not None:
            continue
        i, k, geom = st.step, st.decision.size, st.geom
        t = st.sched.timesteps[i]
        sigma = float(t / 1000)
        if st.kind == "model" and st.carry is not None:
            st.v = st.carry.apply(k, st.v)
        if st.kind == "model" and st.cache is not None:
            st.cache.update(i, sigma, st.v, st.decision.size)
        observe = getattr(st.policy, "observe", None)
        if observe is not None:
            observe(i, st.x, st.v, float(st.sched.sigmas[i]), float(st.sched.sigmas[i + 1]))
        st.x = st.sched.step(st.v.to(st.x.dtype), t, st.x, return_dict=False)[0]
        text_tokens = st.cond.states.shape[1]
        flops = float(step_flops(cfg, geom.tokens(1), text_tokens, k, rank, st.b)) if st.kind == "model" else 0.0
        st.trace.steps.append(StepRecord(i, sigma, k, st.decision.reason, geom.tokens(k), flops,
                                         st.decision.sigmas, seconds.get(st.index, 0.0), st.kind))
        st.v = None
        st.step += 1


def _run_size(backend, k: int, members: list[_State]):
    """One backend call at size ``k`` for ``members`` (one token grid), their rows concatenated, each row with its
    own job's timestep; each job gets its slice of v."""
    from ..models.registry import Conditioning

    def timestep(st):  # FLUX's transformer takes t / 1000; Wan's the scheduler's timestep as is (generate.py)
        t = st.sched.timesteps[st.step]
        return (t if getattr(st.geom, "is_video", False) else t / 1000).expand(st.b).to(st.x.device)

    grid = members[0].geom.grid
    if len(members) == 1:
        st = members[0]
        st.v = backend.run(k, st.x, st.cond, timestep(st), st.guidance, grid)
        return
    x = torch.cat([st.x for st in members])
    pooled = None if members[0].cond.pooled is None else torch.cat([st.cond.pooled for st in members])
    cond = Conditioning(torch.cat([st.cond.states for st in members]), pooled, members[0].cond.txt_ids)
    guidance = None if members[0].guidance is None else torch.cat([st.guidance for st in members])
    v = backend.run(k, x, cond, torch.cat([timestep(st) for st in members]), guidance, grid)
    start = 0
    for st in members:
        st.v = v[start:start + st.b]
        start += st.b
