"""A table and a PNG plot of a trace: patch size and FLOPs per step."""
from __future__ import annotations

from pathlib import Path

from .trace import Trace


def table(trace: Trace) -> str:
    keys = sorted({k for s in trace.steps for k in s.sigmas})
    head = f"{'step':>4} {'t':>6} {'size':>4} {'tokens':>7} {'GFLOPs':>9}  " + " ".join(f"{'σ@' + str(k):>9}"
                                                                                   for k in keys)
    rows = [head]
    for s in trace.steps:
        sig = " ".join(f"{s.sigmas[k]:9.5f}" if k in s.sigmas else f"{'-':>9}" for k in keys)
        rows.append(f"{s.step:>4} {s.timestep:6.3f} {s.size:>4} {s.tokens:>7} {s.flops / 1e9:9.4f}  {sig}")
    rows.append(f"coarse steps: {trace.coarse_fraction:.0%}   FLOPs vs fine-only: {trace.flops_ratio:.3f}")
    return "\n".join(rows)


def plot_path(trace_path: str | Path) -> Path:
    """Where ``schedule TRACE`` puts its plot by default: TRACE.schedule.png (out/x.json -> out/x.schedule.png),
    never TRACE with .png, which is where ``generate --out`` usually put the image of that trace."""
    return Path(trace_path).with_suffix(".schedule.png")


def plot(trace: Trace, path: str | Path, fmt: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [s.step for s in trace.steps]
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(7, 4.5), sharex=True)
    a1.step(steps, [s.size for s in trace.steps], where="mid")
    a1.set_ylabel("patch size")
    a1.set_yticks(sorted({s.size for s in trace.steps} | {1}))
    a2.bar(steps, [s.flops / 1e9 for s in trace.steps])
    a2.set_ylabel("GFLOPs")
    a2.set_xlabel("step")
    a1.set_title(f"{trace.model}: {trace.coarse_fraction:.0%} coarse, FLOPs x{trace.flops_ratio:.2f} of fine-only")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100, format=fmt)  # fmt None: from the suffix
    plt.close(fig)
    return path
