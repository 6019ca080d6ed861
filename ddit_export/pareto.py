"""``ddit-export bench --pareto``: whole generations of every method on one chart (issue 8).

Methods are declarative rows (:class:`Method`): a name, a family (one curve on the chart), overrides of the
generation settings (``static``, ``coarse_first``, ``tau``, ``window``, ...: whatever ``api.build_settings`` takes),
an optional step-cache profile (``settings.CacheSettings`` fields) and an optional diffusers peer (``peers.py``).
A new schedule policy is a new row, not new code.

Per row: compute ratio (transformer FLOPs done relative to fine-only: from the trace for the project's own rows,
counted by torch's FlopCounterMode for the peers, whose skipping happens inside the trunk), wall-clock speed-up on
PyTorch and on ONNX Runtime (one bundle), PSNR/SSIM against fine-only, adherence (scene probe), Fréchet distance
of probe features to fine-only. Quality: ``n_prompts`` held-out captions x seeds, one prompt per generation (the
rule and the caches decide per batch). Wall-clock: the first ``wall_prompts`` captions, ``repeats`` rounds, the
rows in a new random order each round, each row's time the sum over those prompts; medians with min-max.
"""
from __future__ import annotations

import json
import random
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .errors import ConfigError
from .pareto_report import append_rows, chart, markdown, write_report  # noqa: F401 (re-exported)
from .settings import ScheduleSettings, parse_policy, policy_spec


@dataclass(frozen=True)
class Method:
    """One row of the chart. ``bundle``: the row runs on that ONNX Runtime bundle (a precision row: an int8 or
    other build of the same model), in the quality pass and the ONNX Runtime column; it has no PyTorch column."""

    name: str
    family: str
    generate: dict = field(default_factory=dict)
    cache: dict | None = None
    peer: dict | None = None
    bundle: str | None = None

    @classmethod
    def from_dict(cls, d: dict) -> "Method":
        try:
            g = {k: tuple(v) if isinstance(v, list) else v for k, v in d.get("generate", {}).items()}
            m = cls(d["name"], d.get("family", d["name"]), g, d.get("cache"), d.get("peer"), d.get("bundle"))
        except (KeyError, TypeError) as e:
            raise ConfigError(f"bad method row {d}: {e}") from None
        if m.bundle is not None and m.peer is not None:
            raise ConfigError(f"method row {m.name!r}: a peer row runs on PyTorch; it cannot name a bundle")
        return m

    def to_dict(self) -> dict:
        d = asdict(self)
        d["generate"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.generate.items()}
        if d["bundle"] is None:  # rows on the benchmarked model read as before
            del d["bundle"]
        return d


def ladder(*parts: tuple[int, int]) -> tuple[int, ...]:
    """(count, size) parts -> a static schedule, e.g. ladder((3, 1), (4, 4), (13, 2), (8, 1))."""
    return tuple(k for n, k in parts for _ in range(n))


LADDER_575 = ladder((3, 1), (4, 4), (13, 2), (8, 1))  # issue 8: FLOP 0.575 at 39.3 dB, no adherence loss
LADDER_551 = ladder((3, 1), (19, 2), (6, 1))
LADDER_503 = ladder((3, 1), (21, 2), (4, 1))
LADDER_44 = ladder((2, 1), (6, 4), (16, 2), (4, 1))


DEFAULT_LADDER_POLICY = "ladder:head=0,n4=10,tail=9"  # flux-mini's calibrated profile (calibration/flux-mini.json)
LADDER_POLICY_SWEEP = ((0, 0), (-2, 0), (2, 0), (4, 0), (0, -1), (0, 1))  # (n4, tail) around the profile's
PROBE_POLICY = "probe:head=0,n4=10,tail=8,extra=2,detail=0.35"
# The step cache alone past its default floor (warm-up 3 + tail 1 + one step per interval): warm-up 2, no fine
# tail, order 1 and 2 - the best the cache alone can do, not its default.
CACHE_PAST_FLOOR = ((16, 1, 2, 0), (24, 1, 2, 0), (12, 2, 2, 0), (16, 2, 2, 0), (24, 2, 2, 0))  # N, order, w, tail


def profile_ladder(profile: str | None) -> tuple[int, int, int, str]:
    """(head, n4, tail, carry) of a ladder policy spec (None or a non-ladder policy: flux-mini's
    DEFAULT_LADDER_POLICY)."""
    s = parse_policy(profile or DEFAULT_LADDER_POLICY, ScheduleSettings())
    if s.policy != "ladder":
        s = parse_policy(DEFAULT_LADDER_POLICY, ScheduleSettings())
    return s.head, s.n4, s.tail, s.carry


def default_methods(steps: int = 28, tau: float = 0.002, peers: bool = True, cache_dit: bool = False,
                    profile: str | None = None) -> list:
    """The rows of the issue-8 chart for a ``steps``-step model whose calibrated τ is ``tau`` and whose
    calibrated ladder is ``profile`` (a ladder policy spec; default flux-mini's). Rows run without detail carry
    unless they say so (``carry`` in their settings): the profile's own ladder rows carry as the profile does."""
    head, n4_, tail_, carry_ = profile_ladder(profile)
    default = f"ladder:head={head},n4={n4_},tail={tail_}"  # its rows name carry beside the spec
    mark = " carry" if carry_ != "off" else ""
    fine = {"static": (1,) * steps}
    rows = [Method("fine-only", "fine-only", fine)]
    rows += [Method(f"ddit tau={t:g}", "ddit rule", {"tau": t}) for t in sorted({tau / 2, tau, tau * 1.5})]
    if steps == 28:
        rows += [Method("coarse-first 14:2", "static", {"coarse_first": (14, 2)}),
                 Method("ladder 0.575", "static", {"static": LADDER_575}),
                 Method("ladder 0.551", "static", {"static": LADDER_551}),
                 Method("ladder 0.503", "static", {"static": LADDER_503}),
                 Method("ladder 2/6x4/16x2/4", "static", {"static": LADDER_44})]
    for n in (3, 5, 8, 12, 16, 20):  # N >= 16: the default knobs' floor, 5 computed steps (warm-up 3, tail 1)
        rows.append(Method(f"taylor N={n}", "step cache (ours)", fine, {"mode": "taylor", "interval": n, "order": 1}))
    rows.append(Method("taylor N=8 o2", "step cache (ours)", fine, {"mode": "taylor", "interval": 8, "order": 2}))
    for n, order, w, t in CACHE_PAST_FLOOR:
        rows.append(Method(f"taylor N={n} o{order} w{w} t{t}", "step cache (ours)", fine,
                           {"mode": "taylor", "interval": n, "order": order, "warmup": w, "tail": t}))
    for thr in (0.05, 0.15):
        rows.append(Method(f"taylor thr={thr:g}", "step cache (ours)", fine,
                           {"mode": "taylor", "interval": 10, "order": 1, "threshold": thr}))
    if steps == 28:
        for n in (3, 5, 8):
            rows.append(Method(f"ladder 0.575 + taylor N={n}", "ladder + cache", {"static": LADDER_575},
                               {"mode": "taylor", "interval": n, "order": 1}))
        rows.append(Method("ladder 2/6x4/16x2/4 + taylor N=6 w2", "ladder + cache", {"static": LADDER_44},
                           {"mode": "taylor", "interval": 6, "order": 1, "warmup": 2}))
        for k, n in ((14, 5), (14, 8), (18, 5)):  # the best stacks measured on flux-mini (docs/results/pareto-flux-mini.md)
            rows.append(Method(f"coarse-first {k}:2 + taylor N={n}", "coarse-first + cache", {"coarse_first": (k, 2)},
                               {"mode": "taylor", "interval": n, "order": 1}))
    if steps == 28:  # the calibrated ladder policy over its knob, the adaptive probe, and the ladder stacked
        sweep = dict.fromkeys((n4_ + a, tail_ + b) for a, b in LADDER_POLICY_SWEEP)
        for n4, tail in (p for p in sweep if p[0] >= 0 and p[1] >= 0 and head + p[0] + p[1] <= steps):
            rows.append(Method(f"ladder policy n4={n4} tail={tail}{mark}",
                               f"ladder policy (default n4={n4_} tail={tail_}{mark})",
                               {"policy": f"ladder:head={head},n4={n4},tail={tail}", "carry": carry_}))
        rows.append(Method("probe detail=0.35", "probe (adaptive)", {"policy": PROBE_POLICY}))
        for n in (3, 4, 5, 6, 8):
            rows.append(Method(f"ladder policy default + taylor N={n}", f"ladder policy + cache{mark}",
                               {"policy": default, "carry": carry_}, {"mode": "taylor", "interval": n, "order": 1}))
    rows.append(Method(f"ddit tau={tau:g} + taylor N=5", "ddit rule + cache", {"tau": tau},
                       {"mode": "taylor", "interval": 5, "order": 1}))
    if peers:
        rows += [Method("diffusers FBC 0.2", "diffusers FirstBlockCache", fine, peer={"kind": "fbc", "threshold": 0.2}),
                 Method("diffusers FBC 0.4", "diffusers FirstBlockCache", fine, peer={"kind": "fbc", "threshold": 0.4}),
                 Method("diffusers TaylorSeer N=5", "diffusers TaylorSeer", fine,
                        peer={"kind": "taylorseer", "cache_interval": 5, "max_order": 1}),
                 Method("diffusers MagCache 0.24", "diffusers MagCache", fine,
                        peer={"kind": "magcache", "threshold": 0.24}),
                 Method("diffusers PAB 2", "diffusers PAB", fine,
                        peer={"kind": "pab", "spatial_attention_block_skip_range": 2,
                              "spatial_attention_timestep_skip_range": (0, 1000)})]
        if cache_dit:
            rows += [Method(f"cache-dit DBCache F1B0 {r:g}", "cache-dit DBCache", fine,
                            peer={"kind": "dbcache", "Fn_compute_blocks": 1, "Bn_compute_blocks": 0,
                                  "residual_diff_threshold": r}) for r in (0.2, 0.4)]
    return rows


# ---- running ------------------------------------------------------------------------------------------------
class _Runner:
    """Generates one row on one prompt with a backend that stays open for the row."""

    def __init__(self, model, steps: int, calib_captions: list[str], threads: int = 1):
        self.model, self.steps, self.calib, self.threads = model, steps, calib_captions, threads
        self.mag_ratios = None
        self.bundles: dict[str, tuple] = {}  # a precision row's bundle -> (its model, its ONNX Runtime backend)

    def scope(self, m: Method, be, base):
        """A row's peer backend (its hooks, entered per row); the base backend and a precision row's bundle stay
        open for the whole bench (re-entering one would re-create its sessions inside the timed rounds)."""
        return _nullctx() if be is base or m.bundle is not None else be

    def bundle(self, path: str):
        """A precision row's bundle, opened (and activated) once; it must hold the benchmarked model."""
        if path not in self.bundles:
            from .runtime.bundle_model import open_bundle

            bm, be = open_bundle(path, threads=self.threads, backend="onnxruntime")
            if bm.name != self.model.name:
                raise ConfigError(f"bundle {path} holds {bm.name!r}, not the benchmarked {self.model.name!r}")
            self.bundles[path] = (bm, be)
        return self.bundles[path]

    def settings(self, m: Method, prompts):
        from .api import build_settings

        gen = {"carry": "off", **m.generate}  # a row carries detail only when it says so, whatever the profile
        return build_settings(self.model, prompts=prompts, steps=self.steps, **gen,
                              cache=m.cache if m.cache is not None else {"mode": "off"})

    def backend(self, m: Method, base_backend):
        if m.bundle is not None:
            return self.bundle(m.bundle)[1]
        if m.peer is None:
            return base_backend
        from .peers import PeerBackend

        peer = dict(m.peer)
        if peer["kind"] == "magcache" and "mag_ratios" not in peer:
            peer["mag_ratios"] = self.magcache_ratios()
        return PeerBackend(self.model.transformer, peer, self.steps)

    def magcache_ratios(self):
        """MagCache's calibration mode on calibration captions (not the evaluation ones), once per bench."""
        if self.mag_ratios is None:
            from .peers import PeerBackend, calibrate_magcache
            from .runtime.generate import generate

            be = PeerBackend(self.model.transformer, {"kind": "magcache", "calibrate": True}, self.steps)

            def one(c):
                def run():
                    be.reset()
                    generate(self.model, be, self.settings(Method("c", "c", {"static": (1,) * self.steps}), [c]),
                             progress=False, decode=False)
                return run

            with be:
                self.mag_ratios = calibrate_magcache(self.model, [one(c) for c in self.calib], self.steps)
        return self.mag_ratios

    def generate(self, m: Method, backend, prompt: str, noise):
        from .runtime.generate import generate

        if hasattr(backend, "reset"):
            backend.reset()
        model = self.bundle(m.bundle)[0] if m.bundle is not None else self.model
        return generate(model, backend, self.settings(m, [prompt]), progress=False, decode=False, latents=noise)


def _counted_flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        out = fn()
    return float(fc.get_total_flops()), out


def run_pareto(settings, *, log=print, progress: bool = True) -> dict:
    """Run the bench described by ``settings`` (a :class:`~.settings.ParetoSettings`); write md/json/png."""
    import torch
    from tqdm.auto import tqdm

    from .models.registry import load_model
    from .quality.detector import load_probe
    from .quality.evaluate import _images, eval_scenes, grade_means
    from .quality.metrics import adherence, frechet_distance, psnr, ssim
    from .runtime.backends.torch import TorchBackend
    from .runtime.generate import initial_noise

    from .fsutil import check_writable

    for name in ("pareto.json", "pareto.md", "pareto.png"):  # before any work: OUT is a folder, or can be made one
        check_writable(Path(settings.out) / name)
    t_start = time.perf_counter()
    torch.set_num_threads(settings.threads)
    random.seed(0)
    detector = load_probe()
    model = load_model(settings.model, settings.weights, adapters=settings.adapters)
    steps = settings.steps or model.default_steps
    methods = settings.methods or default_methods(steps, model.schedule_defaults.tau, peers=settings.peers,
                                                  cache_dit=settings.cache_dit,
                                                  profile=policy_spec(model.schedule_defaults))
    if methods[0].generate.get("static") != (1,) * steps or methods[0].cache or methods[0].peer:
        raise ConfigError("the first method row must be fine-only (static all-1, no cache, no peer): the reference")
    enc = model.extras.get("text_encoder")
    max_words = getattr(getattr(enc, "config", None), "max_length", None)
    if settings.grades is None:  # the held-out complexity buckets
        scenes_ = eval_scenes(settings.n_prompts, "heldout", settings.prompt_seed, max_words)
    else:  # the graded held-out captions (evaluate --graded), within the model's words
        vocab = getattr(getattr(enc, "config", None), "vocab", None)
        scenes_ = eval_scenes(settings.n_prompts, "graded", settings.prompt_seed, max_words, settings.grades,
                              None if vocab is None else tuple(vocab))
    captions = [s.caption for s in scenes_]
    calib = [s.caption for s in eval_scenes(settings.calib_prompts, "train", settings.prompt_seed + 1, max_words)]
    geom = model.geometry()
    runner = _Runner(model, steps, calib, settings.threads)
    for m in methods:
        runner.settings(m, captions[:1])  # validate every row before the long run
        if m.bundle is not None:
            runner.bundle(m.bundle)

    # ---- quality: every row on every (prompt, seed) ----
    n = len(captions)
    rows = {m.name: dict(method=m, images=[], flops=[], sizes=[], kinds=[], seconds=0.0) for m in methods}
    bar = tqdm(total=n * len(settings.seeds) * len(methods), desc="pareto quality", disable=not progress)
    with TorchBackend(model.transformer) as base:
        fine_counted = None
        if any(m.peer for m in methods):  # the peers' reference: fine-only counted the same way
            fine_counted, _ = _counted_flops(lambda: runner.generate(methods[0], base, captions[0],
                                                                     initial_noise(geom, 1, settings.seeds[0])))
        for seed in settings.seeds:
            noise = initial_noise(geom, n, seed)
            for m in methods:
                r = rows[m.name]
                be = runner.backend(m, base)
                with runner.scope(m, be, base):
                    for i, c in enumerate(captions):
                        t0 = time.perf_counter()
                        if m.peer is not None:
                            counted, res = _counted_flops(lambda: runner.generate(m, be, c, noise[i:i + 1]))
                            r["flops"].append(counted / fine_counted)
                        else:
                            res = runner.generate(m, be, c, noise[i:i + 1])
                            r["flops"].append(res.trace.flops_ratio)
                        r["seconds"] += time.perf_counter() - t0
                        r["images"].append(_images(model, res.latents, geom))
                        r["sizes"].append("".join(map(str, res.trace.sizes)))
                        r["kinds"].append("".join("c" if k == "cached" else "m" for k in res.trace.kinds))
                        bar.update(1)
    bar.close()
    all_scenes = scenes_ * len(settings.seeds)
    grades = np.array([s.grade for s in all_scenes])
    fine = rows[methods[0].name]
    fine_imgs = np.concatenate(fine["images"])
    fine_det = detector.detect(fine_imgs)
    out_rows = []
    for m in methods:
        r = rows[m.name]
        imgs = np.concatenate(r["images"])
        det = detector.detect(imgs)
        is_fine = m is methods[0]
        p = None if is_fine else psnr(imgs, fine_imgs)
        q = None if is_fine else ssim(imgs, fine_imgs)
        adh = adherence(det, all_scenes)
        out_rows.append(dict(
            name=m.name, family=m.family, method=_method_dict(m),
            compute_ratio=float(np.mean(r["flops"])), compute_source="flop counter" if m.peer else "trace",
            cached_fraction=float(np.mean([k.count("c") / len(k) for k in r["kinds"]])),
            coarse_fraction=float(np.mean([sum(s != "1" for s in z) / len(z) for z in r["sizes"]])),
            psnr=None if p is None else float(p.mean()), psnr_min=None if p is None else float(p.min()),
            ssim=None if q is None else float(q.mean()),
            adherence=adh.summary()["accuracy"],
            fd_vs_fine=None if is_fine else frechet_distance(det.features, fine_det.features),
            by_grade=grade_means(grades, adh, flops_ratio=r["flops"], psnr=p),
            schedules=r["sizes"], kinds=r["kinds"],
            **({} if m.bundle is None else {"bundle": m.bundle,
                                            "precision": runner.bundle(m.bundle)[0].manifest.effective_precision})))
    log(f"quality pass: {time.perf_counter() - t_start:.0f} s")
    if settings.oracle is not None:
        out_rows += _oracle_rows(model, scenes_, settings, fine_imgs, log)

    # ---- wall-clock ----
    wall = captions[:settings.wall_prompts]
    noise = initial_noise(geom, len(wall), settings.seeds[0])
    with TorchBackend(model.transformer) as base:
        torch_times = _wall(runner, [m for m in methods if m.bundle is None], base, wall, noise, settings.repeats,
                            log, "torch")
    ort_times, bundle_note = {}, None
    if settings.bundle:
        from .runtime.bundle_model import open_bundle

        bm, ort = open_bundle(settings.bundle, threads=settings.threads, backend="onnxruntime")
        if bm.name != model.name:
            raise ConfigError(f"bundle {settings.bundle} holds {bm.name!r}, not the benchmarked {model.name!r}")
        ort_runner = _Runner(bm, steps, calib, settings.threads)
        ort_runner.bundles = runner.bundles  # precision rows: their own bundles, timed in the same rounds
        with ort:
            ort_times = _wall(ort_runner, [m for m in methods if m.peer is None], ort, wall, noise,
                              settings.repeats, log, "onnxruntime")
    else:
        bundle_note = "no bundle given: ONNX Runtime column skipped"
    for _, be in runner.bundles.values():  # the precision rows' bundles, open since the rows were checked
        be.deactivate()
    for row in out_rows:
        if row.get("no_wall"):
            continue
        for key, times in (("torch", torch_times), ("onnxruntime", ort_times)):
            t, f = times.get(row["name"]), times.get(methods[0].name)
            row[key] = None if t is None else dict(median_s=statistics.median(t), min_s=min(t), max_s=max(t),
                                                   **speedup_stats(f, t))

    report = dict(format="ddit-pareto/1", model=model.name, steps=steps, n_prompts=n, seeds=list(settings.seeds),
                  split="heldout" if settings.grades is None else "graded",
                  grades=None if settings.grades is None else list(settings.grades),
                  grade_counts={str(g): int((grades == g).sum()) for g in sorted(set(grades.tolist()))},
                  wall_prompts=len(wall), repeats=settings.repeats, threads=settings.threads,
                  bundle=settings.bundle, torch=torch.__version__, notes=[x for x in [bundle_note] if x],
                  mag_ratios=runner.mag_ratios, rows=out_rows, prompts=captions,
                  seconds=time.perf_counter() - t_start)
    if settings.append:
        try:
            previous = json.loads(Path(settings.append).read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read {settings.append}: {e}") from None
        report = append_rows(report, previous)
    report["files"] = write_report(report, Path(settings.out))
    return report


def _oracle_rows(model, scenes_, settings, fine_imgs, log) -> list[dict]:
    """The per-prompt oracle at a FLOP budget (quality/policies.search_oracle: the best monotone ladder per prompt
    by PSNR vs this run's fine-only images, same captions and noise) and the best single ladder of that search.
    Quality only: a schedule that differs per prompt has no one wall-clock row. Adherence here is the mean of the
    per-image fraction of objects found right (the other rows count all objects together)."""
    from .quality.policies import PolicyRunner, search_oracle
    from .runtime.backends.torch import TorchBackend

    with TorchBackend(model.transformer) as be:
        pr = PolicyRunner(model, be, scenes_, seed=settings.seeds[0], steps=settings.steps)
        pr.fine_images = fine_imgs[:len(scenes_)]
        res = search_oracle(pr, settings.oracle, progress=False)
    log(f"oracle at FLOP budget {settings.oracle:g}: {res['candidates']} ladders searched")
    out = []
    for name, fam, d in ((f"oracle per prompt (FLOPs <= {settings.oracle:g})", "oracle", res["oracle"]),
                         (f"best single ladder (FLOPs <= {settings.oracle:g}): {res['best_static']['sizes']}",
                          "oracle", res["best_static"])):
        out.append(dict(name=name, family=fam, method=dict(oracle=settings.oracle), compute_ratio=d["flops_ratio"],
                        compute_source="trace", cached_fraction=0.0, coarse_fraction=None, psnr=d["psnr"],
                        psnr_min=None, ssim=d["ssim"], adherence=d["adherence"], fd_vs_fine=None,
                        schedules=res["per_prompt"] if fam == "oracle" and "per prompt" in name else None,
                        kinds=None, torch=None, onnxruntime=None, no_wall=True))
    return out


def speedup_stats(fine: list, times: list) -> dict:
    """Speed-up of ``times`` over the reference ``fine`` (seconds of interleaved rounds): the ratio of medians, and
    the extreme ratios (slowest reference round over fastest row round, and the reverse) as its range."""
    return dict(speedup=statistics.median(fine) / statistics.median(times), speedup_min=min(fine) / max(times),
                speedup_max=max(fine) / min(times))


class _nullctx:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _wall(runner, methods, base, prompts, noise, repeats, log, what) -> dict:
    """Per row: ``repeats`` sums over ``prompts`` of one-prompt generations, rows shuffled every round."""
    times = {m.name: [] for m in methods}
    backends = {m.name: runner.backend(m, base) for m in methods}
    for m in methods:  # warm-up: first calls allocate
        be = backends[m.name]
        with runner.scope(m, be, base):
            runner.generate(m, be, prompts[0], noise[:1])
    for rep in range(repeats):
        for m in random.sample(methods, len(methods)):
            be = backends[m.name]
            with runner.scope(m, be, base):
                t0 = time.perf_counter()
                for i, c in enumerate(prompts):
                    runner.generate(m, be, c, noise[i:i + 1])
                times[m.name].append(time.perf_counter() - t0)
        log(f"wall-clock {what}: round {rep + 1}/{repeats}")
    return times


def _method_dict(m: Method) -> dict:
    return m.to_dict()
