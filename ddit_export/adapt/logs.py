"""The run's CSV logs: ``loss.csv`` (per-size training loss) and ``eval.csv`` (held-out loss)."""
from __future__ import annotations

import csv
from pathlib import Path


def log_eval(work: Path, step: int, elapsed: float, ev: dict, log, quiet: bool = False):
    new = not (work / "eval.csv").exists()
    with open(work / "eval.csv", "a") as f:
        if new:
            f.write("step,elapsed_s," + ",".join(f"eval_loss_{k}" for k in ev) + "\n")
        f.write(f"{step},{elapsed:.1f}," + ",".join(f"{v:.6f}" for v in ev.values()) + "\n")
    if not quiet:
        log(f"held-out distillation loss at step {step}: " + ", ".join(f"k={k} {v:.5f}" for k, v in ev.items()))


def truncate_log(path: Path, step: int):
    """Drop rows written after the checkpoint a run resumes from (those steps are replayed)."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    keep = lines[:1]
    for ln in lines[1:]:
        try:
            if int(ln.split(",", 1)[0]) <= step:
                keep.append(ln)
        except ValueError:
            pass
    if len(keep) != len(lines):
        path.write_text("".join(keep))


def read_loss_csv(path: str | Path) -> list[dict]:
    with open(path) as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
