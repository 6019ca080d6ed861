"""The ``bench --pareto`` report: the markdown table, the chart (FLOPs and wall-clock against PSNR, one curve per
family) and the JSON, from the report dict ``pareto.run_pareto`` builds; rows of an earlier report joined in
(``--append``). Reads dicts only, so it never imports the runner.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import ConfigError


def _f(v, fmt):
    return "–" if v is None else format(v, fmt)


def _speed(s):
    return "–" if s is None else f"{s['speedup']:.2f}x ({s['speedup_min']:.2f}–{s['speedup_max']:.2f})"


def markdown(rep: dict) -> str:
    what = ("held-out captions" if rep.get("split", "heldout") == "heldout"
            else f"graded held-out captions (grades {','.join(map(str, rep['grades']))})")
    lines = [f"# Pareto bench: {rep['model']}", "",
             f"{rep['n_prompts']} {what} x {len(rep['seeds'])} seed(s), {rep['steps']} steps, one prompt "
             f"per generation; wall-clock: {rep['wall_prompts']} prompts x {rep['repeats']} interleaved rounds, "
             f"{rep['threads']} thread(s), median speed-up (min–max); torch {rep['torch']}.", "",
             "| method | family | compute ratio | cached | coarse | PyTorch speed-up | ORT speed-up | PSNR dB | SSIM "
             "| adherence | FD vs fine |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rep["rows"]:
        lines.append(f"| {r['name']} | {r['family']} | {r['compute_ratio']:.3f} | {r['cached_fraction']:.0%} "
                     f"| {_f(r['coarse_fraction'], '.0%')} | {_speed(r['torch'])} | {_speed(r['onnxruntime'])} "
                     f"| {_f(r['psnr'], '.1f')} | {_f(r['ssim'], '.3f')} | {r['adherence']:.1%} "
                     f"| {_f(r['fd_vs_fine'], '.2f')} |")
    lines += ["", "compute ratio: transformer FLOPs done / fine-only (project rows: from the trace, cached steps 0; "
                  "diffusers/cache-dit rows: torch FlopCounterMode on the run). PSNR/SSIM/FD against fine-only on the "
                  "same prompt and noise."]
    lines += _grade_lines(rep)
    if rep.get("notes"):
        lines += ["", "Notes:"] + [f"- {x}" for x in rep["notes"]]
    return "\n".join(lines) + "\n"


def _grade_lines(rep: dict) -> list[str]:
    """On the graded captions: per detail grade, each row's FLOPs ratio, PSNR and adherence."""
    from .quality.evaluate import grade_lines

    if rep.get("split") != "graded":
        return []
    return grade_lines(rep.get("grade_counts") or {}, [(r["name"], r["by_grade"]) for r in rep["rows"]
                                                       if r.get("by_grade")],
                       "method", (("compute ratio", "flops_ratio", ".3f"), ("PSNR dB", "psnr", ".1f"),
                                  ("adherence", "adherence", ".0%")))


def _front(pts):
    """Points (psnr, speed-up) not beaten on both axes by another point of the family, by PSNR."""
    return sorted(p for p in pts if not any(q[0] >= p[0] and q[1] > p[1] or q[0] > p[0] and q[1] >= p[1]
                                            for q in pts))


def chart(rep: dict, path: Path) -> Path:
    """Speed-up against PSNR vs fine-only, one colour per family: every row a marker, the family's Pareto front a
    line. Panels: FLOP-bound (1 / compute ratio), PyTorch and ONNX Runtime wall-clock."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("flops", "FLOP-bound speed-up (1 / compute ratio)")]
    panels += [(k, f"wall-clock speed-up, {'PyTorch' if k == 'torch' else 'ONNX Runtime'} (median)")
               for k in ("torch", "onnxruntime") if any(r.get(k) for r in rep["rows"])]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 5.2), squeeze=False)
    families = list(dict.fromkeys(r["family"] for r in rep["rows"] if r["psnr"] is not None))
    colours = {f: plt.cm.tab10(i) if i < 10 else plt.cm.Dark2(i - 10) for i, f in enumerate(families)}
    for ax, (key, label) in zip(axes[0], panels):
        for fam in families:
            pts = [(r["psnr"], 1 / r["compute_ratio"] if key == "flops" else r[key]["speedup"])
                   for r in rep["rows"] if r["family"] == fam and r["psnr"] is not None
                   and (key == "flops" or r.get(key))]
            if not pts:
                continue
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], color=colours[fam], s=22, label=fam)
            front = _front(pts)
            ax.plot([p[0] for p in front], [p[1] for p in front], "-", color=colours[fam], lw=1.2)
        ax.axhline(1.0, color="gray", lw=0.8, ls=":")
        ax.axvline(30.0, color="gray", lw=0.8, ls="--")
        ax.set_xlabel("PSNR vs fine-only (dB), 30 dB bar dashed")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="upper right")
    graded = "" if rep.get("split", "heldout") == "heldout" else "graded "
    fig.suptitle(f"{rep['model']}, {rep['steps']} steps, {rep['n_prompts']} {graded}held-out prompts")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def append_rows(rep: dict, previous: dict) -> dict:
    """``rep`` plus the rows of an earlier report that it does not have (same model, steps, prompts and seeds:
    quality columns are comparable; each wall-clock speed-up stays the ratio measured within its own run)."""
    same = ("model", "steps", "prompts", "seeds")
    diff = [k for k in same if rep.get(k) != previous.get(k)]
    if diff:
        raise ConfigError(f"cannot append a report that differs in {', '.join(diff)}")
    have = {r["name"] for r in rep["rows"]}
    extra = [r for r in previous["rows"] if r["name"] not in have]
    rep = dict(rep, rows=rep["rows"] + extra)
    rep["notes"] = rep.get("notes", []) + previous.get("notes", []) + [
        f"{len(extra)} row(s) from an earlier run of the same prompts and seeds (their wall-clock speed-ups are "
        f"relative to that run's fine-only): {', '.join(r['name'] for r in extra)}"]
    return rep


def write_report(rep: dict, out: Path) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "pareto.json").write_text(json.dumps(rep, indent=1, default=_json_default))
    (out / "pareto.md").write_text(markdown(rep))
    chart(rep, out / "pareto.png")
    return [str(out / f) for f in ("pareto.json", "pareto.md", "pareto.png")]


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if hasattr(o, "to_dict"):  # a pareto.Method row
        return o.to_dict()
    raise TypeError(type(o))
