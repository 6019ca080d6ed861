"""``ddit-export calibrate``: sweep one knob of a schedule policy on a calibration prompt set, measure every setting
against fine-only (coarse fraction, FLOP ratio, wall-clock speed-up of the loop, PSNR/SSIM, adherence), choose the
operating point and write it as the model's schedule profile (calibration/<model>.json, and a bundle's manifest).
A video model runs the same sweep on clip captions, scored per frame and over time (quality/calibrate_video.py).

The sweep lives in ``work``: ``sweep.json`` (what is being calibrated), ``fine.npz`` (the fine-only images) and
``rows.jsonl`` (one row per finished setting, appended as each finishes). A rerun with the same work folder skips
the rows already there, so an interrupted sweep resumes.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from functools import partial

from ..settings import (CacheSettings, CalibrateSettings, GenerateSettings, ScheduleSettings, check_sweep_knob,
                        parse_policy, policy_spec)

PROFILE_FORMAT = "ddit-schedule-profile/1"


class Unreachable(Exception):
    """No setting of the sweep meets the target; ``best`` is the closest row."""

    def __init__(self, message: str, best: dict | None):
        super().__init__(message)
        self.best = best


def sweep_settings(base: ScheduleSettings, knob: str, values) -> list[ScheduleSettings]:
    typ = type(getattr(base, knob))
    return [dataclasses.replace(base, **{knob: typ(v)}) for v in values]


def _load_rows(path: Path) -> dict:
    rows = {}
    if path.is_file():
        text = path.read_text()
        if text and not text.endswith("\n"):  # cut off mid-line: drop the partial row so appends start clean
            text = text[:text.rfind("\n") + 1]
            path.write_text(text)
        for line in text.splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue  # a line cut short by an interruption: that setting runs again
            rows[r["key"]] = r
    return rows


def _append(path: Path, row: dict):
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _row(key: str, sched: ScheduleSettings | None, run: dict, scores: dict | None, fine: dict | None,
         adherence: float, by_grade: dict | None = None) -> dict:
    row = dict(key=key, schedule=None if sched is None else dataclasses.asdict(sched),
               coarse_fraction=float(np.mean(run["coarse"])), flops_ratio=float(np.mean(run["flops"])),
               seconds=run["seconds"], sizes=run["sizes"], adherence=adherence)
    if by_grade is not None:
        row["by_grade"] = by_grade
    if scores is not None:
        row.update(psnr=float(scores["psnr"].mean()), ssim=float(scores["ssim"].mean()),
                   speedup_measured=fine["seconds"] / run["seconds"], speedup_flops=1.0 / row["flops_ratio"])
        row["adherence_drop"] = 100.0 * (fine["adherence"] - row["adherence"])
    return row


def run_sweep(settings: CalibrateSettings, model, backend, scenes_, *, work: Path, progress: bool = True,
              log=print) -> tuple[dict, list[dict]]:
    """Measure fine-only and every setting of the sweep (skipping rows already in ``work``). Returns (fine row,
    setting rows in sweep order)."""
    from tqdm.auto import tqdm

    from ..schedule import make_policy
    from .calibrate_video import VideoPolicyRunner
    from .policies import PolicyRunner

    video = is_video(model)
    base = parse_policy(settings.policy, model.schedule_defaults) if settings.policy else model.schedule_defaults
    knob, values = settings.sweep
    check_sweep_knob(base.policy, knob)  # the profile's policy (no --policy): before any generation
    grid = sweep_settings(base, knob, values)
    geom = model.geometry(settings.height, settings.width, settings.frames) if video else \
        model.geometry(settings.height, settings.width)
    have = tuple(model.manifest.sizes) if hasattr(model, "manifest") else tuple(model.transformer.sizes)
    for s in grid:  # a setting that does not fit the steps or the sizes: an error now, not after fine-only
        make_policy(GenerateSettings(steps=settings.steps or model.default_steps, schedule=s), geom.grid,
                    geom.available_sizes(have))
    work.mkdir(parents=True, exist_ok=True)
    header = dict(model=model.name, prompts=[s.caption for s in scenes_], seed=settings.seed,
                  steps=settings.steps or model.default_steps,
                  cache=None if settings.cache is None else settings.cache.to_dict())
    if settings.height or settings.width:  # sweeps at the model's own size keep the header they always had
        header["resolution"] = list(profile_resolution(model, settings))
    if video:
        header["frames"] = geom.frames
    hp = work / "sweep.json"
    if hp.is_file() and json.loads(hp.read_text()) != header:
        raise ConfigError(f"{work} holds a sweep of another model, prompt set, seed or step count: give another "
                          f"--work or delete it")
    hp.write_text(json.dumps(header, indent=1))
    rows_path = work / "rows.jsonl"
    done = _load_rows(rows_path)
    runner = (VideoPolicyRunner if video else PolicyRunner)(
        model, backend, scenes_, seed=settings.seed, steps=settings.steps, cache=settings.cache,
        height=settings.height, width=settings.width, **({"frames": geom.frames} if video else {}))
    row = partial(_video_row if video else _image_row, runner)
    fine_npz = work / "fine.npz"
    if "fine" in done and fine_npz.is_file():
        runner.fine_images = np.load(fine_npz)["images"]
        fine = done["fine"]
    else:
        r = runner.fine()
        np.savez(fine_npz, images=r["images"])
        fine = row("fine", None, r, None)
        _append(rows_path, fine)
    todo = [s for s in grid if policy_spec(s) not in done]
    if len(todo) < len(grid):
        log(f"resuming: {len(grid) - len(todo)} of {len(grid)} settings already measured in {rows_path}")
    bar = tqdm(total=len(grid), initial=len(grid) - len(todo), desc="calibrate", unit="setting",
               disable=not progress)
    for s in todo:
        key = policy_spec(s)
        bar.set_postfix_str(key)
        done[key] = row(key, s, runner.generate(s), fine)
        _append(rows_path, done[key])
        bar.update(1)
    bar.close()
    return fine, [done[policy_spec(s)] for s in grid]


def _image_row(runner, key: str, sched, run: dict, fine: dict | None) -> dict:
    """A row of an image sweep: ``fine`` None for the fine-only row itself."""
    scores = None if fine is None else runner.score(run["images"])
    return _row(key, sched, run, scores, fine, runner.adherence(run["images"]), _by_grade(runner, run, scores))


def _video_row(runner, key: str, sched, run: dict, fine: dict | None) -> dict:
    """A row of a video sweep (quality/calibrate_video.py's runner): adherence is the motion probe's "both", and
    colour, motion, worst-frame PSNR, frame-change ratio and frame-difference error are added."""
    probe = runner.probe_summary(run["images"])
    scores = None if fine is None else runner.score(run["images"])
    row = _row(key, sched, run, scores, fine, probe["all"])
    row.update(colour=probe["colour"], motion=probe["motion"])
    if scores is not None:
        row.update({k: float(np.mean(scores[k])) for k in ("psnr_min_frame", "change_ratio", "diff_error")
                    if k in scores})
    return row


def is_video(model) -> bool:
    return getattr(model, "family", "flux") == "wan"


def _by_grade(runner, run: dict, scores: dict | None = None) -> dict:
    """Per detail grade of the prompts (zoo/scenes.py ``Scene.grade``): prompts, coarse fraction, FLOPs ratio,
    adherence (prompted objects found right) and, against fine-only, PSNR."""
    from .metrics import adherence

    grades = np.array([s.grade for s in runner.scenes])
    adh = adherence(runner.detector.detect(run["images"]), runner.scenes)
    out = {}
    for g in sorted(set(grades.tolist())):
        idx = np.flatnonzero(grades == g)
        d = dict(prompts=len(idx), coarse_fraction=float(np.mean(np.asarray(run["coarse"])[idx])),
                 flops_ratio=float(np.mean(np.asarray(run["flops"])[idx])), adherence=adh.summary(idx)["accuracy"])
        if scores is not None:
            d["psnr"] = float(scores["psnr"][idx].mean())
        out[str(g)] = d
    return out


def choose(rows: list[dict], settings: CalibrateSettings) -> dict:
    """The operating point (see :class:`CalibrateSettings`); raises :class:`Unreachable` naming the best reachable."""
    from .calibrate_video import passes_temporal_bar

    good = [r for r in rows if r["psnr"] >= settings.min_psnr and r["adherence_drop"] <= settings.max_quality_drop
            and passes_temporal_bar(r, settings)]
    bar = f"PSNR >= {settings.min_psnr:g} dB and adherence within {settings.max_quality_drop:g} points"
    if settings.change_ratio is not None:
        bar += f" and frame-change ratio in [{settings.change_ratio[0]:g}, {settings.change_ratio[1]:g}]"
    if settings.target_speedup is None:
        if not good:
            best = max(rows, key=lambda r: (-r["adherence_drop"], r["psnr"]))
            raise Unreachable(f"no setting keeps {bar}; best reachable: {best['key']} at {best['psnr']:.1f} dB, "
                              f"adherence {-best['adherence_drop']:+.1f} points", best)
        return min(good, key=lambda r: (r["flops_ratio"], -r["psnr"]))
    fast = [r for r in good if r["speedup_flops"] >= settings.target_speedup]
    if not fast:
        best = max(good or rows, key=lambda r: r["speedup_flops"])
        raise Unreachable(f"no setting reaches a {settings.target_speedup:g}x FLOP-ratio speed-up with {bar}; best "
                          f"reachable: {best['key']} at {best['speedup_flops']:.2f}x ({best['psnr']:.1f} dB, "
                          f"adherence {-best['adherence_drop']:+.1f} points)", best)
    return max(fast, key=lambda r: r["psnr"])


def write_json_atomic(path: Path, data: dict):
    """``data`` as JSON through fsutil.write_file_atomic (temp + rename; a failed write leaves ``path`` as it was)."""
    from ..fsutil import write_file_atomic

    text = json.dumps(data, indent=1) + "\n"
    write_file_atomic(Path(path), lambda tmp: tmp.write_text(text))


def profile_resolution(model, settings: CalibrateSettings) -> tuple[int, int]:
    """(height, width) the sweep generates at: ``settings``' or the model's (a bundle's) own."""
    geom = model.geometry(settings.height, settings.width)
    return geom.height, geom.width


def write_bundle_schedule(bundle: str | Path, schedule: dict, calibration: dict, cache: dict | None = None):
    """Put ``schedule`` (a ScheduleSettings dict) into a bundle's manifest, keeping every other field; the
    resolution it was calibrated at (``calibration['resolution']``) goes to ``model.schedule_resolution``."""
    from ..bundle import MANIFEST, read_manifest

    read_manifest(bundle)  # a clear error if it is not a bundle
    path = Path(bundle) / MANIFEST
    d = json.loads(path.read_text())
    d["schedule"] = schedule
    d["calibration"] = calibration
    if calibration.get("resolution"):
        d["model"]["schedule_resolution"] = list(calibration["resolution"])
    if calibration.get("frames"):
        d["model"]["schedule_frames"] = int(calibration["frames"])
    if cache is not None:  # the step cache the chosen setting was measured with becomes the bundle's default
        d["cache"] = cache
    write_json_atomic(path, d)


def read_profile(path: str | Path, model: str | None = None) -> dict:
    """A profile file that ``calibrate`` wrote (calibration/<model>.json, or its ``--profile``); one ConfigError for
    anything else, or for a profile of another model than ``model`` (a preset name; None: not checked)."""
    try:
        d = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"--profile {path}: no such file") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"--profile {path}: not a readable JSON file ({type(e).__name__})") from None
    if not isinstance(d, dict) or d.get("format") != PROFILE_FORMAT or not isinstance(d.get("schedule"), dict):
        raise ConfigError(f"--profile {path}: not a schedule profile (format {PROFILE_FORMAT!r}, as "
                          f"`ddit-export calibrate` writes)")
    if model is not None and d.get("model") != model:
        raise ConfigError(f"--profile {path} was calibrated on {d.get('model')!r}, not on {model!r}")
    try:
        ScheduleSettings(**d["schedule"])
    except TypeError as e:
        raise ConfigError(f"--profile {path}: bad schedule ({e})") from None
    CacheSettings.from_dict(d.get("cache"))  # a ConfigError naming the bad field
    return d


def apply_profile(bundle: str | Path, profile: dict):
    """Make ``profile`` (as :func:`read_profile` returns it) the bundle's defaults: its schedule, and its step cache
    when it was measured with one."""
    write_bundle_schedule(bundle, profile["schedule"],
                          {k: profile[k] for k in ("policy", "measured", "command", "date", "resolution", "frames")
                           if k in profile}, profile.get("cache"))


def calibrate(settings: CalibrateSettings, *, command: str = "", progress: bool = True, log=print) -> dict:
    """Run the sweep, choose, write the profile. Returns the profile; raises :class:`Unreachable` (after the sweep,
    with every row kept in the work folder) when no setting meets the target."""
    from ..api import model_family
    from ..fsutil import check_writable
    from . import calibrate_video as V
    from .policies import read_prompts

    video = model_family(settings.model, settings.weights, settings.bundle) == "wan"
    if video:  # before any model loads: options of the other family, the captions
        V.check_image_only(settings)
        scenes_ = V.read_clip_prompts(settings.prompts)
    else:
        V.check_video_only(settings, settings.bundle or settings.model)
        scenes_ = [s for s in read_prompts(settings.prompts) if settings.grades is None or s.grade in settings.grades]
    if not scenes_:
        raise ConfigError(f"{settings.prompts} has no prompts of detail grade {settings.grades}")
    if settings.work:  # before any model loads: a file at --work, or a folder that cannot be made
        check_writable(Path(settings.work) / "sweep.json")
    if settings.bundle is None:
        from ..models.registry import load_config_only

        stub = load_config_only(settings.model, settings.weights)  # --model wan: its JSON configs, no weights
        if stub is not None:  # frames, sides and RoPE checked before UMT5, the VAE and the transformer load
            stub.geometry(settings.height, settings.width, settings.frames)
    if settings.bundle is not None:
        from ..runtime.bundle_model import open_bundle

        model, backend = open_bundle(settings.bundle, weights=settings.weights)
    else:
        from ..models.registry import load_model
        from ..runtime.backends.torch import TorchBackend

        model = load_model(settings.model, settings.weights, adapters=settings.adapters)
        backend = TorchBackend(model.transformer)
    geom = model.geometry(settings.height, settings.width, settings.frames) if video else \
        model.geometry(settings.height, settings.width)  # frames, sides: one error line before any generation
    if settings.oracle is not None:  # a budget no ladder spends fails now, not after the sweep
        from ..schedule.oracle import ladder_family
        from .policies import step_costs

        if not ladder_family(settings.steps or model.default_steps, step_costs(model), settings.oracle):
            raise ConfigError(f"--oracle {settings.oracle:g}: no ladder schedule of "
                              f"{settings.steps or model.default_steps} steps spends that FLOP budget on "
                              f"{model.name} (the oracle searches ladders); give a larger budget")
    scenes_ = readable(model, scenes_, settings.readable_only, log)[:settings.n_prompts]
    work = Path(settings.work or f"runs/calibrate-{model.name}")
    check_writable(work / "sweep.json")
    t0 = time.perf_counter()
    with backend:
        fine, rows = run_sweep(settings, model, backend, scenes_, work=work, progress=progress, log=log)
        oracle = None
        if settings.oracle is not None:
            oracle = _oracle(settings, model, backend, scenes_, work, progress)
            log(f"oracle at FLOP budget {settings.oracle:g}: {oracle['oracle']['psnr']:.2f} dB; best static "
                f"{oracle['best_static']['sizes']}: {oracle['best_static']['psnr']:.2f} dB")
    log(V.table(fine, rows) if video else table(fine, rows))
    if len(fine.get("by_grade") or {}) > 1:
        log(grade_table(fine, rows))
    chosen = choose(rows, settings)
    cache = None if settings.cache is None else settings.cache.to_dict()
    profile = dict(format=PROFILE_FORMAT, model=model.name, policy=chosen["key"], schedule=chosen["schedule"],
                   cache=cache, resolution=list(profile_resolution(model, settings)),
                   **({"frames": geom.frames} if video else {}),
                   measured={k: v for k, v in chosen.items() if k not in ("sizes", "schedule")},
                   fine={k: fine[k] for k in ("seconds", "adherence", "colour", "motion") if k in fine},
                   rule=dict(min_psnr=settings.min_psnr, max_quality_drop=settings.max_quality_drop,
                             target_speedup=settings.target_speedup, speedup="FLOP ratio (1 / flops_ratio)"),
                   prompts=settings.prompts, n_prompts=len(scenes_), seed=settings.seed, command=command,
                   date=time.strftime("%Y-%m-%d", time.gmtime()),
                   sweep=[{k: v for k, v in r.items() if k not in ("sizes", "schedule")} for r in rows],
                   sweep_seconds=time.perf_counter() - t0, oracle=oracle)
    if settings.write:
        path = Path(settings.profile or f"calibration/{model.name}.json")
        write_json_atomic(path, profile)
        profile["written"] = [str(path)]
        if settings.bundle is not None:
            apply_profile(settings.bundle, profile)
            profile["written"].append(str(Path(settings.bundle) / "manifest.json"))
    return profile


def _oracle(settings, model, backend, scenes_, work: Path, progress: bool) -> dict:
    """The per-prompt oracle on the same prompts (kept in ``work/oracle-<budget>.json``: computed once)."""
    from .policies import PolicyRunner, search_oracle

    path = work / f"oracle-{settings.oracle:g}.json"
    if path.is_file():
        return json.loads(path.read_text())
    runner = PolicyRunner(model, backend, scenes_, seed=settings.seed, steps=settings.steps,
                          height=settings.height, width=settings.width)
    runner.fine_images = np.load(work / "fine.npz")["images"]
    res = search_oracle(runner, settings.oracle, progress=progress)
    write_json_atomic(path, res)
    return res


def readable(model, scenes_, drop: bool, log=print) -> list:
    """``scenes_`` whose captions the model reads; an unreadable one is a VocabularyError naming the words (one
    ``error:`` line) unless ``drop``, which drops them and says how many of each detail grade."""
    from ..errors import VocabularyError

    keep, dropped = [], {}
    for s in scenes_:
        try:
            model.encode([s.caption])
        except VocabularyError as e:
            if not drop:
                hint = " (--readable-only drops such prompts)" if any(getattr(x, "grade", 0) == 4 for x in scenes_) \
                    else ""
                raise VocabularyError(f"{e}{hint}") from None
            g = getattr(s, "grade", "-")  # clip captions have no detail grade
            dropped[g] = dropped.get(g, 0) + 1
            continue
        keep.append(s)
    if dropped:
        log(f"dropped {sum(dropped.values())} prompts the model cannot read (by grade: "
            f"{', '.join(f'{g}: {n}' for g, n in sorted(dropped.items()))})")
    if not keep:
        raise ConfigError("the model reads none of the calibration prompts")
    return keep


def grade_table(fine: dict, rows: list[dict]) -> str:
    """Per detail grade: coarse fraction, FLOPs ratio, PSNR and adherence of each setting (fine-only first)."""
    gs = list(fine["by_grade"])

    def cells(r, k, fmt):
        b = r.get("by_grade") or {}
        return "/".join("–" if k not in b.get(g, {}) else format(b[g][k], fmt) for g in gs)

    lines = [f"Per detail grade {'/'.join(gs)} ({'/'.join(str(fine['by_grade'][g]['prompts']) for g in gs)} "
             "prompts):", "", "| setting | coarse | FLOP ratio | PSNR dB | adherence |", "|---|---|---|---|---|",
             f"| fine-only | – | – | – | {cells(fine, 'adherence', '.0%')} |"]
    for r in rows:
        lines.append(f"| {r['key']} | {cells(r, 'coarse_fraction', '.0%')} | {cells(r, 'flops_ratio', '.3f')} | "
                     f"{cells(r, 'psnr', '.1f')} | {cells(r, 'adherence', '.0%')} |")
    return "\n".join(lines)


def table(fine: dict, rows: list[dict]) -> str:
    lines = ["| setting | coarse | FLOP ratio | speed-up (FLOPs) | speed-up (measured) | PSNR dB | SSIM | adherence |",
             "|---|---|---|---|---|---|---|---|",
             f"| fine-only | 0% | 1.000 | 1.00x | 1.00x | – | – | {fine['adherence']:.1%} |"]
    for r in rows:
        lines.append(f"| {r['key']} | {r['coarse_fraction']:.0%} | {r['flops_ratio']:.3f} | "
                     f"{r['speedup_flops']:.2f}x | {r['speedup_measured']:.2f}x | {r['psnr']:.1f} | {r['ssim']:.3f} | "
                     f"{r['adherence']:.1%} ({-r['adherence_drop']:+.1f}) |")
    return "\n".join(lines)
