"""The run: validate, sample the trajectories, train (resuming from a checkpoint), write the adapters."""
from __future__ import annotations

import hashlib
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..errors import ConfigError, WeightsError
from ..settings import AdaptSettings
from .checkpoint import (CKPT, LEGACY_FIELDS, RUN_FORMAT, changed_run_fields, load_checkpoint,
                         named_adapter_params, read_checkpoint_state, run_settings, save_checkpoint, write_adapters)
from .logs import log_eval, truncate_log
from .losses import batch_indices, distill_losses, eval_losses, lr_at
from .prompts import PromptBank, training_prompts
from .report import compare_to_fine, log_quality, plateau_score, plot_quality
from .student import autocast_for, default_out, default_work, fingerprint, load_student
from .trajectories import TRAJ, build_trajectories, held_out


@dataclass
class AdaptResult:
    state: dict  # step, elapsed_s, losses, stopped_by_signal, out (None unless the budget completed)
    loaded: object = field(repr=False, default=None)  # the LoadedModel with the trained adapters


def _stderr(msg: str):
    print(msg, file=sys.stderr, flush=True)


def adapt(s: AdaptSettings, *, progress: bool = True, log: Callable[[str], None] = _stderr,
          callback: Callable[[int, dict], bool | None] | None = None, auto_threads: bool = False) -> AdaptResult:
    """Train (or resume) the coarse-size adapters of ``s.model``; ``callback(step, losses)`` returning True
    stops the run as a signal would (checkpoint, no final output). ``auto_threads``: pick 1 or 2 intra-op
    threads by timing, as the base training does (:class:`ddit_export.zoo.train.ThreadTuner`)."""
    from tqdm import tqdm

    work = Path(s.work) if s.work else default_work(s)
    prev_threads = torch.get_num_threads()
    if s.threads:
        torch.set_num_threads(s.threads)
    tuner = None
    if auto_threads:  # sampling and evaluation run on 1 thread: 2 threads stall badly on a shared CPU
        from ..training import ThreadTuner

        tuner = ThreadTuner()
        torch.set_num_threads(1)
    stop = {"flag": False}

    def on_signal(signum, frame):
        if stop["flag"]:  # a second Ctrl-C during trajectory sampling: give up at once
            raise KeyboardInterrupt
        stop["flag"] = True
        log(f"\n{signal.Signals(signum).name}: stopping after this step and writing a checkpoint")

    handlers = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            handlers[sig] = signal.signal(sig, on_signal)
    except ValueError:  # not the main thread: no signal handling, KeyboardInterrupt still checkpoints
        pass
    try:
        return _adapt(s, work, progress, log, callback, stop, tqdm, tuner)
    finally:
        for sig, h in handlers.items():
            signal.signal(sig, h)
        torch.set_num_threads(prev_threads)


def _adapt(s, work, progress, log, callback, stop, tqdm, tuner=None) -> AdaptResult:
    # ---- validate everything before the expensive parts
    from ..models.registry import PRESETS

    if s.model not in PRESETS and not Path(s.model).is_dir():
        raise WeightsError(f"model folder not found: {s.model} (or a preset: {', '.join(PRESETS)})")
    prior = read_checkpoint_state(work)
    fp = fingerprint(s)
    if prior is not None:
        saved = prior.get("settings", {})
        diff = changed_run_fields(saved, s)
        if diff:
            shown = ", ".join(f"{k} {saved.get(k, LEGACY_FIELDS.get(k))!r} -> {run_settings(s)[k]!r}"
                              for k in diff[:4])
            raise ConfigError(f"{work} holds a run with other settings ({shown}); use another --work or the "
                              f"same settings to resume")
        if prior.get("fingerprint") != fp:
            raise ConfigError(f"the weights of {s.model} changed since {work} was started; use a fresh --work")
    loaded = load_student(s)
    mp = loaded.transformer
    geom = loaded.geometry(s.height, s.width)
    coarse = [k for k in s.sizes if k > 1 and geom.available(k)]
    if not coarse:
        raise ConfigError(f"none of the coarse sizes {[k for k in s.sizes if k > 1]} divides the token grid "
                          f"{geom.grid}")
    joint = joint_geometries(loaded, s, coarse)
    train_prompts, eval_prompts = training_prompts(s, loaded)
    out = Path(s.out) if s.out else default_out(s, work)
    work.mkdir(parents=True, exist_ok=True)
    if prior is None:  # logs of a run stopped before its first checkpoint would repeat its first rows
        for name in ("loss.csv", "eval.csv", "quality.csv"):
            (work / name).unlink(missing_ok=True)
    steps_per_traj = s.sample_steps or loaded.default_steps
    guidance = s.guidance if loaded.guidance_embeds else None
    amp = autocast_for(s, mp.device)
    log(f"adapt {loaded.name}: sizes {list(s.sizes)} (training {coarse}), rank {s.rank}, init {s.init}, "
        f"{sum(p.numel() for p in mp.adapter_parameters()) / 1e6:.2f} M adapter parameters, "
        f"{len(train_prompts)} prompts x {steps_per_traj} steps, work {work}, out {out}"
        + (f", jointly at {' and '.join(label for label, _ in joint)} (batches alternate)" if joint else ""))

    # ---- data
    t_data = time.time()
    bank = PromptBank.encode(loaded, train_prompts + eval_prompts)
    key = {"fingerprint": fp, "steps": steps_per_traj, "grid": list(geom.grid), "seed": s.seed,
           "guidance": guidance, "prompts": hashlib.sha256("\n".join(train_prompts + eval_prompts).encode())
           .hexdigest()[:16], "mix": s.coarse_mix}
    if s.coarse_mix > 0:  # mixed trajectories take coarse steps with the run's starting adapters
        key.update(sizes=list(s.sizes), init=s.init, rank=s.rank)
        if s.schedules != "random":
            key.update(schedules=s.schedules)
        if s.init_adapters:
            key.update(init_adapters=hashlib.sha256(Path(s.init_adapters).read_bytes()).hexdigest()[:16])
    folder = work / TRAJ
    held = None
    try:
        data = build_trajectories(loaded, s, bank, len(train_prompts), folder, key, "train", s.coarse_mix, log,
                                  stop, progress)
        if data is not None:
            held = held_out(loaded, s, bank, train_prompts, eval_prompts, folder, key, log, stop, progress)
        extra_sets = []  # (label, grid, train states, held-out states) of the --joint resolutions
        for label, g in joint:
            if data is None or held is None:
                break
            jkey, jfolder = dict(key, grid=list(g.grid)), folder / label
            jd = build_trajectories(loaded, s, bank, len(train_prompts), jfolder, jkey, "train", s.coarse_mix, log,
                                    stop, progress, geom=g)
            jh = None if jd is None else held_out(loaded, s, bank, train_prompts, eval_prompts, jfolder, jkey, log,
                                                  stop, progress, geom=g)
            if jd is None or jh is None:
                data = None
                break
            extra_sets.append((label, g.grid, jd, jh))
    except KeyboardInterrupt:
        data = None
    if data is None or held is None:
        log(f"stopped while sampling trajectories; finished chunks are cached in {folder}")
        return AdaptResult({"step": 0, "stopped_by_signal": True, "out": None}, loaded)
    log(f"{len(data)} training states ({int(data.coarse.sum())} from coarse-step trajectories), "
        f"{len(held)} held-out states" + "".join(f"; {label}: {len(jd)} + {len(jh)}" for label, _, jd, jh in extra_sets)
        + f", {time.time() - t_data:.0f} s")
    # the batches of step i come from train_sets[i % len(train_sets)]: resumes replay the same resolutions
    train_sets = [(data, geom.grid, None)] + [(jd, grid, label) for label, grid, jd, _ in extra_sets]

    # ---- optimiser, resume
    named = named_adapter_params(mp)
    params = [p for _, p in named]
    opt = torch.optim.AdamW(params, lr=s.lr, betas=(0.9, 0.99), weight_decay=0.0)
    clip_groups = [[p for n, p in named if n.split(".")[1] == str(k)] for k in coarse]
    state = {"step": 0, "elapsed_s": 0.0}
    if prior is not None:
        load_checkpoint(work, mp, opt, prior)
        state = prior
        log(f"resuming from {work / CKPT} at step {state['step']}")
    step, t_prev = int(state["step"]), float(state["elapsed_s"])
    if prior is None and s.eval_images:
        q = quality(loaded, s, eval_prompts, steps_per_traj, amp, joint, rules=True)
        log_quality(work, 0, "init", q, log)
        state["plateau"] = {"best": plateau_score(q, carried=s.objective == "blocks"), "best_step": 0, "since": 0}
    if prior is None:
        log_eval(work, 0, 0.0, eval_losses(loaded, held, bank, coarse, geom.grid, guidance, amp,
                                           objective=s.objective), log)

    loss_path = work / "loss.csv"
    truncate_log(loss_path, step)
    truncate_log(work / "eval.csv", step)
    truncate_log(work / "quality.csv", step)
    plateau = dict(state.get("plateau") or {})  # held-out PSNR of the quality checks: best, its step, checks since
    last_quality = float(state.get("quality_elapsed_s", state["elapsed_s"] if prior is not None else 0.0))
    loss_log = open(loss_path, "a")
    if loss_log.tell() == 0:
        loss_log.write("step," + ",".join(f"loss_{k}" for k in coarse) + ",lr,elapsed_s,s_per_step,threads"
                       + (",resolution" if joint else "") + "\n")
    budget = None if s.minutes is None else s.minutes * 60
    t0 = time.time()
    last_ckpt = t0
    last = {}

    def elapsed():
        return t_prev + time.time() - t0

    def frac():
        p = 0.0 if s.steps is None else step / s.steps
        return max(p, 0.0 if budget is None else elapsed() / budget)

    def checkpoint():
        st = {"format": RUN_FORMAT, "step": step, "elapsed_s": elapsed(), "settings": run_settings(s),
              "fingerprint": fp, "losses": {str(k): v for k, v in last.items()},
              "rng": {"batches": "torch.Generator().manual_seed(seed * 1000003 + step)", "seed": s.seed},
              "plateau": plateau, "quality_elapsed_s": last_quality}
        save_checkpoint(work, mp, opt, st)
        return st

    def plateaued():
        return s.patience is not None and plateau.get("since", 0) >= s.patience

    def done():
        return ((s.steps is not None and step >= s.steps) or (budget is not None and elapsed() >= budget)
                or plateaued())

    def quality_check():
        """Held-out PSNR of the static schedules (no rule runs: cheap enough to repeat), logged; plateau kept."""
        nonlocal last_quality
        mp.eval()
        q = quality(loaded, s, eval_prompts, steps_per_traj, amp, joint, rules=False)
        mp.train()
        log_quality(work, step, "training", q, log)
        plot_quality(work)
        score = plateau_score(q, carried=s.objective == "blocks")
        if not plateau or score >= plateau["best"] + 0.1:
            plateau.update(best=score, best_step=step, since=0)
        else:
            plateau["since"] = plateau.get("since", 0) + 1
        last_quality = elapsed()
        if plateaued():
            log(f"held-out PSNR has not improved by 0.1 dB in {s.patience} checks (best {plateau['best']:.2f} dB "
                f"at step {plateau['best_step']}): stopping")

    def quality_due():
        return (s.quality_minutes is not None and s.eval_images > 0
                and elapsed() - last_quality >= s.quality_minutes * 60)

    if prior is not None and quality_due():  # the check that was due when the run stopped: as it resumes
        quality_check()
    mp.train()
    bar = tqdm(total=s.steps, initial=step, disable=not progress, mininterval=5.0, dynamic_ncols=True,
               file=sys.stderr, desc="adapt")
    try:
        try:
            while not stop["flag"] and not done():
                if tuner is not None:
                    tuner.before_step()
                ts = time.time()
                lr = lr_at(s, step, frac())
                for g in opt.param_groups:
                    g["lr"] = lr
                cur, grid, label = train_sets[step % len(train_sets)]
                idx = batch_indices(s, step, len(cur))
                losses = distill_losses(loaded, cur, bank, idx, coarse, grid, guidance, amp, s.objective)
                loss = sum(losses.values())
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss is {loss.item()} at step {step}; try a lower --lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                for group in clip_groups:  # per size: one size's spike does not shrink the other's step
                    torch.nn.utils.clip_grad_norm_(group, s.grad_clip)
                opt.step()
                step += 1
                last = {k: float(v.detach()) for k, v in losses.items()}
                dt = time.time() - ts
                if tuner is not None:
                    tuner.after_step(dt)
                loss_log.write(f"{step}," + ",".join(f"{last[k]:.6f}" for k in coarse) +
                               f",{lr:.3e},{elapsed():.1f},{dt:.3f},{torch.get_num_threads()}"
                               + (f",{label or main_label(geom)}" if joint else "") + "\n")
                bar.update(1)
                bar.set_postfix({f"k{k}": f"{v:.4f}" for k, v in last.items()} | {"lr": f"{lr:.1e}"},
                                refresh=False)
                if step % 20 == 0:
                    loss_log.flush()
                if callback is not None and callback(step, last):
                    stop["flag"] = True
                if not stop["flag"] and quality_due():
                    loss_log.flush()
                    quality_check()
                if time.time() - last_ckpt > s.ckpt_minutes * 60 and not stop["flag"] and not done():
                    loss_log.flush()
                    st = checkpoint()
                    mp.eval()
                    log_eval(work, step, st["elapsed_s"],
                              eval_losses(loaded, held, bank, coarse, geom.grid, guidance, amp,
                                          objective=s.objective), log, quiet=True)
                    mp.train()
                    last_ckpt = time.time()
        except KeyboardInterrupt:  # only when no signal handler could be installed
            stop["flag"] = True
        loss_log.flush()
        state = checkpoint()
    finally:
        bar.close()
        loss_log.close()
        mp.eval()
    if tuner is not None:
        torch.set_num_threads(1)
    state["stopped_by_signal"] = stop["flag"]
    state["out"] = None
    if stop["flag"]:
        log(f"stopped at step {step}; checkpoint in {work / CKPT} - run the same command again to resume")
        return AdaptResult(state, loaded)
    ev = eval_losses(loaded, held, bank, coarse, geom.grid, guidance, amp, objective=s.objective)
    log_eval(work, step, state["elapsed_s"], ev, log)
    joint_ev = {}
    for label, grid, _, jh in extra_sets:
        jl = eval_losses(loaded, jh, bank, coarse, grid, guidance, amp, objective=s.objective)
        joint_ev[label] = {str(k): round(v, 6) for k, v in jl.items()}
        log(f"held-out distillation loss at {label}, step {step}: "
            + ", ".join(f"k={k} {v:.5f}" for k, v in joint_ev[label].items()))
    if s.eval_images:
        q = quality(loaded, s, eval_prompts, steps_per_traj, amp, joint, rules=True)
        log_quality(work, step, "adapted", q, log)
        plot_quality(work)
        state["quality"] = q
    extra = {"steps": step, "elapsed_s": round(state["elapsed_s"], 1), "fingerprint": fp,
             "eval_loss": {str(k): round(v, 6) for k, v in ev.items()}, "prompts": len(train_prompts),
             "coarse_mix": s.coarse_mix, "lr": s.lr, "batch": s.batch}
    if joint:
        extra.update(resolutions=[main_label(geom)] + [label for label, _ in joint], joint_eval_loss=joint_ev)
    state["out"] = str(write_adapters(mp, out, extra))
    state["eval_loss"] = {str(k): v for k, v in ev.items()}
    log(f"wrote {out} after {step} steps ({state['elapsed_s'] / 60:.1f} min)")
    return AdaptResult(state, loaded)


def main_label(geom) -> str:
    return f"{geom.height}x{geom.width}"


def joint_geometries(loaded, s: AdaptSettings, coarse: list[int]) -> list[tuple[str, object]]:
    """(label ``HxW``, geometry) of each ``--joint`` resolution, checked before any sampling: image models only,
    every size the run trains must fit the grid, and none may repeat the run's own resolution."""
    if not s.joint:
        return []
    main = loaded.geometry(s.height, s.width)
    if getattr(main, "is_video", False):
        raise ConfigError("--joint trains image models at several resolutions; this model makes video")
    out = []
    for h, w in s.joint:
        g = loaded.geometry(h, w)
        label = f"{h}x{w}"
        if (g.height, g.width) == (main.height, main.width):
            raise ConfigError(f"--joint {label} is the run's own resolution")
        missing = [k for k in coarse if not g.available(k)]
        if missing:
            raise ConfigError(f"--joint {label}: patch size {missing[0]} does not divide its token grid {g.grid}; "
                              f"pick a resolution every trained size fits")
        out.append((label, g))
    return out


def quality(loaded, s: AdaptSettings, eval_prompts, steps: int, amp, joint, rules: bool) -> dict:
    """Held-out PSNR vs fine-only at the run's resolution; the ``--joint`` ones follow, named ``schedule@HxW``
    (static schedules only there: the rule is per prompt, hence slow)."""
    prompts = eval_prompts[: s.eval_images]
    q = compare_to_fine(loaded, prompts, steps, s.sizes, 10_000, s.height, s.width, s.guidance, amp, rules=rules,
                        carry=True)
    for label, g in joint:
        for name, v in compare_to_fine(loaded, prompts, steps, s.sizes, 10_000, g.height, g.width, s.guidance, amp,
                                       rules=False).items():
            q[f"{name}@{label}"] = v
    return q
