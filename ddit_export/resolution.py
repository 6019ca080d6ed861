"""The resolution table (issue 11): does DDiT's gain grow with resolution, as the paper says?

At each image side R of ``ResolutionSettings.resolutions``:

- quality, by :func:`ddit_export.quality.evaluate.evaluate` at height = width = R (held-out captions, the same
  noise in every variant): for the rule at the model's calibrated τ and for the static schedule (the model's
  default policy, or ``static_policy``) - coarse fraction, FLOP ratio, PSNR against fine-only, prompt adherence
  (the scene probe reads every image at 32x32, so at 64 it scores the downsampled image);
- per-step wall-clock of one transformer call at every patch size (:func:`ddit_export.bench.step_times`, medians,
  sizes interleaved) on PyTorch and on ONNX Runtime (a bundle built for R, or reused from ``bundles``);
- from those two, each schedule's estimated speed-up of the transformer calls: 1 / sum_k f_k t_k / t_1, with f_k the
  schedule's fraction of steps at size k and t_k the measured per-step time (text encoder and decode left out).

Writes ``resolution.json`` and ``resolution.md`` to ``out`` (plus each side's ``eval-R/``).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from .errors import ConfigError
from .settings import EvalSettings, ResolutionSettings, parse_policy, policy_spec

FORMAT = "ddit-resolution-table/1"


def resolution_table(s: ResolutionSettings, *, progress: bool = True, log=print) -> dict:
    """Run every measurement of ``s``; write ``resolution.json`` and ``resolution.md``; return the report."""
    import torch

    from .models.registry import load_model
    from .quality.evaluate import folder_adapters

    t0 = time.perf_counter()
    prev_threads = torch.get_num_threads()
    if s.threads:
        torch.set_num_threads(s.threads)
    try:
        loaded = load_model(s.model, s.weights, adapters=s.adapters)
        for r in s.resolutions:  # every side is checked before the first (long) measurement
            loaded.geometry(r, r)
        profile = loaded.schedule_defaults
        static = s.static_policy or (policy_spec(profile) if profile.policy != "ddit" else None)
        if static is not None and parse_policy(static, profile).policy == "ddit":
            raise ConfigError(f"static policy {static!r} is the rule; give a static one, e.g. ladder:n4=10,tail=9")
        adapted = s.adapters is not None or folder_adapters(s.model, s.weights) is not None
        out = Path(s.out)
        out.mkdir(parents=True, exist_ok=True)
        root = Path(s.bundles) if s.bundles else out / "bundles"
        bundles = {r: bundle_for(s, r, root, loaded.name, log) for r in s.resolutions} if s.ort else {}
        sides = []
        for r in s.resolutions:
            log(f"resolution {r}x{r}: quality")
            q = _quality(s, r, static, profile, adapted, out, progress, log)
            log(f"resolution {r}x{r}: step times (PyTorch{', ONNX Runtime' if s.ort else ''})")
            torch_ms, flop_bound = _torch_times(loaded, r, s.repeats)
            timings = {"torch": torch_ms}
            if s.ort:
                timings["onnxruntime"] = _ort_times(s, r, bundles[r])
            for row in q["methods"]:
                row["est_speedup"] = {rt: estimated_speedup(row["size_fractions"], t) for rt, t in timings.items()}
            sides.append({"side": r, "fine_tokens": loaded.geometry(r, r).tokens(1), **q, "step_ms": timings,
                          "step_flop_speedup": flop_bound})
    finally:
        torch.set_num_threads(prev_threads)
    report = {"format": FORMAT, "model": loaded.name, "adapters": "trained" if adapted else "training-free init",
              "trained_resolutions": [list(x) for x in (loaded.trained_resolutions or [])],
              "rule_tau": profile.tau, "static_policy": static, "n_prompts": s.n_prompts, "seeds": list(s.seeds),
              "repeats": s.repeats, "threads": s.threads or prev_threads, "torch": torch.__version__,
              "resolutions": sides, "seconds": time.perf_counter() - t0}
    report["trend"] = trend(report)
    (out / "resolution.json").write_text(json.dumps(report, indent=1))
    (out / "resolution.md").write_text(markdown(report))
    report["files"] = [str(out / "resolution.json"), str(out / "resolution.md")]
    return report


def _quality(s: ResolutionSettings, side: int, static, profile, adapted: bool, out: Path, progress, log) -> dict:
    from .quality.evaluate import evaluate

    es = EvalSettings(model=s.model, weights=s.weights, adapters=s.adapters, n_prompts=s.n_prompts, seeds=s.seeds,
                      steps=s.steps, training_free=not adapted, adapted=adapted or None, side=side,
                      policies=(static,) if static else (), out=str(out / f"eval-{side}"))
    rep = evaluate(es, progress=progress, log=log, reference_n=s.reference_n)
    kind = "adapted" if adapted else "training-free"
    rows = {r["key"]: r for r in rep["variants"]}
    want = [("rule", f"{kind}@{rep['default_tau']:g}")]
    if static:
        want.append(("static", f"{kind}@{policy_spec(parse_policy(static, profile))}"))
    methods = []
    for label, key in want:
        r = rows[key]
        methods.append({"method": label, "key": key, "coarse_fraction": r["coarse_fraction"],
                        "flops_ratio": r["flops_ratio"], "psnr": r["psnr"], "adherence": r["adherence"]["accuracy"],
                        "size_fractions": r["size_fractions"]})
    return {"fine_adherence": rows["fine"]["adherence"]["accuracy"], "methods": methods,
            "eval": str(out / f"eval-{side}" / "eval.json")}


def _torch_times(loaded, side: int, repeats: int) -> tuple[dict, dict]:
    """(median ms per size, FLOP-bound speed-up of each size over size 1)."""
    from .bench import step_times
    from .runtime.backends.torch import TorchBackend

    with TorchBackend(loaded.transformer) as backend:
        rows = step_times(loaded, backend, repeats=repeats, height=side, width=side)
    return {str(r.size): r.median_s * 1e3 for r in rows}, {str(r.size): rows[0].flops / r.flops for r in rows}


def _ort_times(s: ResolutionSettings, side: int, folder: Path) -> dict:
    from .bench import step_times
    from .runtime.bundle_model import open_bundle

    model, backend = open_bundle(folder, weights=s.weights, threads=s.threads, backend="onnxruntime")
    with backend:
        rows = step_times(model, backend, repeats=s.repeats, height=side, width=side)
    return {str(r.size): r.median_s * 1e3 for r in rows}


def bundle_for(s: ResolutionSettings, side: int, root: Path, name: str, log) -> Path:
    """``root/<model>-<side>``: reused when its manifest is model ``name`` at this side, else built (before any
    measurement, so the timings of one side are not taken while another is being built)."""
    from .bundle import BundleError, read_manifest

    folder = root / f"{Path(s.model).name}-{side}"
    if folder.is_dir():
        try:
            m = read_manifest(folder)
            if m.model["name"] == name and (m.model["height"], m.model["width"]) == (side, side):
                log(f"reusing bundle {folder}")
                return folder
        except BundleError:
            pass
        raise ConfigError(f"{folder} is not a {side}x{side} bundle of {name}; delete it or give another --bundles")
    from .export.build import build_bundle
    from .settings import BuildSettings

    log(f"building {folder}")
    return build_bundle(BuildSettings(model=s.model, weights=s.weights, adapters=s.adapters, height=side,
                                      width=side, out=str(folder)), progress=False, log=lambda *_: None)


def estimated_speedup(size_fractions: dict, step_ms: dict) -> float | None:
    """1 / sum_k f_k t_k / t_1: the transformer-call speed-up of a schedule spending fraction f_k of its steps at
    size k, from measured per-step times t_k (None if a size the schedule used was not timed)."""
    if not size_fractions or "1" not in step_ms:
        return None
    if any(k not in step_ms for k, f in size_fractions.items() if f > 0):
        return None
    return 1.0 / sum(f * step_ms[k] / step_ms["1"] for k, f in size_fractions.items())


def trend(report: dict) -> list[str]:
    """One line per method and measure: its value at the smallest and the largest side (measured, not judged)."""
    sides = report["resolutions"]
    if len(sides) < 2:
        return []
    lo, hi = sides[0], sides[-1]
    lines = []
    for a, b in zip(lo["methods"], hi["methods"]):
        parts = [f"FLOP speed-up {1 / a['flops_ratio']:.2f}x -> {1 / b['flops_ratio']:.2f}x",
                 f"PSNR {_f(a['psnr'], '.1f')} -> {_f(b['psnr'], '.1f')} dB"]
        for rt in b["est_speedup"]:
            x, y = a["est_speedup"].get(rt), b["est_speedup"].get(rt)
            parts.append(f"est. {rt} speed-up {_f(x, '.2f')}x -> {_f(y, '.2f')}x")
        lines.append(f"{a['method']} ({lo['side']} -> {hi['side']}): " + ", ".join(parts))
    return lines


def _f(v, fmt):
    return "–" if v is None else format(v, fmt)


def markdown(report: dict) -> str:
    sizes = sorted({k for r in report["resolutions"] for t in r["step_ms"].values() for k in t}, key=int)
    runtimes = list(report["resolutions"][0]["step_ms"])
    lines = [f"# Resolution table: {report['model']}", "",
             f"{report['n_prompts']} held-out captions x {len(report['seeds'])} seed(s) per side; adapters: "
             f"{report['adapters']}; rule at its calibrated τ {report['rule_tau']:g}; static schedule: "
             f"{report['static_policy'] or 'none (the model profile is the rule)'}; trained at "
             + (", ".join(f"{h}x{w}" for h, w in report["trained_resolutions"]) or "unknown")
             + f". Step times: medians of {report['repeats']} calls, {report['threads']} thread(s), "
             f"torch {report['torch']}.", "",
             "PSNR against fine-only from the same noise; adherence by the scene probe (images read at 32x32); "
             "est. speed-up = 1 / Σ f_k·t_k/t_1 from the schedule's size fractions and the measured per-step "
             "times (transformer calls only).", "",
             "| side | fine tokens | method | coarse | FLOPs | PSNR dB | adherence (fine) | "
             + " | ".join(f"est. {rt}" for rt in runtimes) + " |",
             "|---|---|---|---|---|---|---|" + "---|" * len(runtimes)]
    for r in report["resolutions"]:
        for m in r["methods"]:
            lines.append(f"| {r['side']} | {r['fine_tokens']} | {m['method']} | {m['coarse_fraction']:.0%} | "
                         f"{m['flops_ratio']:.3f} | {_f(m['psnr'], '.1f')} | {m['adherence']:.1%} "
                         f"({r['fine_adherence']:.1%}) | "
                         + " | ".join(f"{_f(m['est_speedup'][rt], '.2f')}x" for rt in runtimes) + " |")
    lines += ["", "Per-step wall-clock (ms) and speed-up over size 1 (FLOP bound: the FLOP ratio of one step):", "",
              "| side | runtime | " + " | ".join(f"k={k} ms" for k in sizes) + " | "
              + " | ".join(f"k={k} speed-up" for k in sizes[1:]) + " |",
              "|---|---|" + "---|" * (2 * len(sizes) - 1)]
    for r in report["resolutions"]:
        bound = r.get("step_flop_speedup", {})
        lines.append(f"| {r['side']} | FLOP bound | " + " | ".join("" for _ in sizes) + " | "
                     + " | ".join(f"{bound[k]:.2f}x" if k in bound else "–" for k in sizes[1:]) + " |")
        for rt, t in r["step_ms"].items():
            lines.append(f"| {r['side']} | {rt} | " + " | ".join(_f(t.get(k), ".2f") for k in sizes) + " | "
                         + " | ".join(f"{t['1'] / t[k]:.2f}x" if k in t else "–" for k in sizes[1:]) + " |")
    if report["trend"]:
        lines += ["", "From the smallest to the largest side:", ""] + [f"- {x}" for x in report["trend"]]
    return "\n".join(lines) + "\n"
