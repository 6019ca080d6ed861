"""The before/after report: PSNR of DDiT generations against fine-only (``WORK/quality.csv``)."""
from __future__ import annotations

import contextlib
import dataclasses
import math
from pathlib import Path

import numpy as np
import torch


def quality_schedules(steps: int, sizes, windows=("any",), ladder=None, rules: bool = True,
                      carry: bool = False) -> dict[str, dict]:
    """Schedules the run reports: static alternation (~45% coarse) per coarse size, the model's default ladder
    (``ladder`` = its ScheduleSettings, when its policy is a ladder of these sizes) and the rule at 2 taus;
    ``carry``: each static one also with detail carry (``NAME+carry``, runtime/carry.py)."""
    from ..schedule.static import ladder_sizes

    out = {}
    for k in sizes:
        if k > 1:
            out[f"static-alt-k{k}"] = {"static": tuple(k if i >= 3 and i % 2 and i < steps - 1 else 1
                                                       for i in range(steps))}
    if (ladder is not None and getattr(ladder, "policy", None) == "ladder"
            and ladder.head + ladder.n4 + ladder.tail <= steps):  # a profile longer than these steps: left out
        sizes_ = ladder_sizes(steps, ladder.head, ladder.n4, ladder.tail)
        if set(sizes_) <= set(sizes):
            out[f"ladder-{ladder.head}-{ladder.n4}-{ladder.tail}"] = {"static": sizes_}
    if carry:
        out.update({f"{n}+carry": {**sc, "carry": "fine"} for n, sc in list(out.items())})
    if not rules:
        return out
    for window in windows:
        for tau in (0.005, 0.01):
            out[f"rule-tau{tau:g}" + ("" if window == "any" else f"-{window}")] = {"tau": tau, "window": window}
    return out


def image_psnr(ref, img) -> float:
    """PSNR in dB of two 8-bit images (PIL or arrays); identical images give 99."""
    mse = ((np.asarray(ref, np.float64) - np.asarray(img, np.float64)) ** 2).mean()
    return 99.0 if mse == 0 else 10 * math.log10(255**2 / mse)


@torch.no_grad()
def compare_to_fine(loaded, prompts: list[str], steps: int, sizes, seed: int = 0, height=None, width=None,
                    guidance: float = 3.5, amp=None, rules: bool = True, carry: bool = False) -> dict[str, dict]:
    """Mean PSNR (dB, 8-bit images) of DDiT generations against fine-only from the same noise (prompt i: seed
    + i), and the coarse fraction. Static schedules run batched (``carry``: each also with detail carry); the rule
    (``rules``) runs one prompt at a time (its decisions are per prompt)."""
    from ..runtime.backends.torch import TorchBackend
    from ..runtime.generate import generate
    from ..settings import GenerateSettings, ScheduleSettings

    base = loaded.schedule_defaults
    windows = ("any", "same-size") if hasattr(base, "window") else ("any",)
    scheds = quality_schedules(steps, sizes, windows, ladder=base, rules=rules, carry=carry)
    res = {name: {"psnr": [], "coarse": []} for name in scheds}
    from ..runtime.generate import initial_noise

    geom = loaded.geometry(height, width)
    noise = torch.cat([initial_noise(geom, 1, seed + i) for i in range(len(prompts))])
    common = dict(prompts=tuple(prompts), seed=seed, steps=steps, height=height, width=width, guidance=guidance)

    with TorchBackend(loaded.transformer) as backend, (amp or contextlib.nullcontext()):
        # fine-only and the static schedules: the whole batch at once (one decision per step anyway)
        ref = generate(loaded, backend, GenerateSettings(**common, static=(1,) * steps), progress=False,
                       latents=noise).images
        for name, sc in scheds.items():
            if "static" in sc:
                gs = GenerateSettings(**common, static=sc["static"],
                                      schedule=ScheduleSettings(carry=sc.get("carry", "off")))
                r = generate(loaded, backend, gs, progress=False, latents=noise)
                res[name] = {"psnr": [image_psnr(a, b) for a, b in zip(ref, r.images)], "coarse": [r.trace.coarse_fraction]}
        # the rule decides per prompt: one prompt at a time, from the same noise
        for i, p in enumerate(prompts):
            one = dict(common, prompts=(p,), seed=seed + i)
            for name, sc in scheds.items():
                if "static" in sc:
                    continue
                extra = {"window": sc["window"]} if hasattr(base, "window") else {}
                gs = GenerateSettings(**one, schedule=dataclasses.replace(base, policy="ddit", tau=sc["tau"],
                                                                          **extra))
                r = generate(loaded, backend, gs, progress=False, latents=noise[i:i + 1])
                res[name]["psnr"].append(image_psnr(ref[i], r.images[0]))
                res[name]["coarse"].append(r.trace.coarse_fraction)
    return {n: {"psnr": float(np.mean(v["psnr"])), "coarse": float(np.mean(v["coarse"]))} for n, v in res.items()}


def log_quality(work: Path, step: int, label: str, q: dict, log):
    new = not (work / "quality.csv").exists()
    with open(work / "quality.csv", "a") as f:
        if new:
            f.write("step,adapters,schedule,psnr_db,coarse_fraction\n")
        for name, v in q.items():
            f.write(f"{step},{label},{name},{v['psnr']:.2f},{v['coarse']:.3f}\n")
    log(f"PSNR vs fine-only ({label} adapters, step {step}): " +
        ", ".join(f"{n} {v['psnr']:.2f} dB @ {v['coarse']:.0%} coarse" for n, v in q.items()))


def plateau_score(q: dict, carried: bool = False) -> float:
    """What a run's plateau check follows: the mean PSNR of the static alternating schedules (one per size): the
    adapters alone, or with ``carried`` (the ``blocks`` objective) their ``+carry`` rows."""
    vals = [v["psnr"] for n, v in q.items() if n.startswith("static-alt-") and ("+carry" in n) == carried]
    return float(np.mean(vals))


def plot_quality(work: Path) -> Path | None:
    """``WORK/quality.png``: held-out PSNR vs fine-only of every schedule the run checked, over training steps
    (the curve a plateau stop reads). None when ``quality.csv`` has fewer than two steps."""
    import csv

    path = work / "quality.csv"
    if not path.is_file():
        return None
    curves: dict[str, list[tuple[int, float]]] = {}
    for row in csv.DictReader(open(path)):
        if not row["schedule"].startswith("rule"):
            curves.setdefault(row["schedule"], []).append((int(row["step"]), float(row["psnr_db"])))
    if not curves or max(len(v) for v in curves.values()) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, pts in sorted(curves.items()):
        ax.plot(*zip(*pts), marker="o", ms=3, label=name)
    ax.set_xlabel("adapter training step")
    ax.set_ylabel("PSNR vs fine-only (dB)")
    ax.set_title(f"held-out PSNR during training ({work.name})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = work / "quality.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
