"""``ddit-export bench --replay pareto.json``: the sizes and cache decisions a Pareto bench recorded (per row, per
prompt) replayed on another model, typically a bigger FLUX-shaped speed config with random weights (random-20m on
the CPU, scripts/gpu_bench.py's on a GPU), where the decisions themselves cannot be reproduced. Per row: measured
speed-up over fine-only against the FLOP bound (fine FLOPs / the row's FLOPs on this model), and their ratio.

The diffusers/cache-dit peers skip work inside the trunk and leave no step plan: they are not replayed.
"""
from __future__ import annotations

import json
import random
import statistics
import time
from pathlib import Path

from .errors import ConfigError


def load_plans(path, prompts: int) -> tuple[list[dict], list[str]]:
    """[{name, family, plans: [(sizes, kinds), ...]}] of the replayable rows of a pareto.json; the first is the
    fine-only reference."""
    try:
        rep = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from None
    if rep.get("format") != "ddit-pareto/1":
        raise ConfigError(f"{path} is not a pareto bench report (format {rep.get('format')!r})")
    rows, notes = [], []
    for r in rep["rows"]:
        if r["method"].get("peer"):
            notes.append(f"{r['name']}: skips inside the trunk, no step plan to replay")
            continue
        if not r.get("kinds"):
            notes.append(f"{r['name']}: a per-prompt search result (oracle), no single step plan to replay")
            continue
        plans = [(tuple(int(c) for c in s), tuple(int(k == "m") for k in kd))
                 for s, kd in list(zip(r["schedules"], r["kinds"]))[:prompts]]
        rows.append(dict(name=r["name"], family=r["family"], plans=plans))
    if not rows or set(rows[0]["plans"][0][0]) != {1} or 0 in rows[0]["plans"][0][1]:
        raise ConfigError(f"{path}: the first row is not fine-only")
    return rows, notes


def replay_rows(model, backend, rows: list[dict], clock, repeats: int, *, deadline: float | None = None,
                log=print) -> list[dict]:
    """Time every row's plans as whole generations (static sizes + cache plan), rows shuffled per round; the
    FLOP bound comes from the traces of the same runs. ``clock(fn)`` returns seconds (GPU: synchronised)."""
    from .api import build_settings
    from .runtime.generate import generate
    from .settings import CacheSettings

    sizes_ok = set(model.geometry().available_sizes(backend.sizes))
    flops = {r["name"]: 0.0 for r in rows}
    times = {r["name"]: [] for r in rows}

    def run_row(r, record: bool):
        total = 0.0
        for sizes, plan in r["plans"]:
            if set(sizes) - sizes_ok:
                raise ConfigError(f"row {r['name']} uses sizes {sorted(set(sizes) - sizes_ok)} this model lacks")
            cache = CacheSettings("plan", plan=plan) if 0 in plan else CacheSettings()
            gs = build_settings(model, prompts=(model.default_prompt,), steps=len(sizes), static=sizes, cache=cache)
            box = {}
            total += clock(lambda: box.setdefault("r", generate(model, backend, gs, progress=False, decode=False)))
            if record:
                flops[r["name"]] += box["r"].trace.flops
        return total

    for r in rows:  # warm-up round, also the FLOP count
        run_row(r, True)
    for rep in range(repeats):
        if rep and deadline is not None and time.monotonic() > deadline:
            log(f"time budget reached after {rep} round(s)")
            break
        for r in random.sample(rows, len(rows)):
            times[r["name"]].append(run_row(r, False))
        log(f"replay round {rep + 1}/{repeats}")
    from .pareto import speedup_stats

    fine = rows[0]["name"]
    out = []
    for r in rows:
        t = times[r["name"]]
        stats = speedup_stats(times[fine], t)
        bound = flops[fine] / flops[r["name"]]
        out.append(dict(name=r["name"], family=r["family"], prompts=len(r["plans"]), median_s=statistics.median(t),
                        runs_s=t, **stats, flop_bound=bound, fraction_of_bound=stats["speedup"] / bound))
    return out


def table_rows(rows: list[dict]) -> list[str]:
    """Markdown rows of a replay: measured speed-up (min–max), FLOP bound, measured / bound (also gpu_bench.py's)."""
    return [f"| {r['name']} | {r['family']} | {r['speedup']:.2f}x ({r['speedup_min']:.2f}–{r['speedup_max']:.2f}) "
            f"| {r['flop_bound']:.2f}x | {r['fraction_of_bound']:.2f} |" for r in rows]


def markdown(res: dict) -> str:
    lines = [f"# Replay of {res['source']} on {res['model']}", "", res["description"], "",
             "| method | family | measured speed-up (min–max) | FLOP-bound speed-up | measured / bound |",
             "|---|---|---|---|---|"]
    lines += table_rows(res["rows"])
    if res.get("notes"):
        lines += ["", "Not replayed:"] + [f"- {n}" for n in res["notes"]]
    return "\n".join(lines) + "\n"


def replay_report(path, *, model="random-20m", weights=None, repeats=3, prompts=4, out=None, log=print) -> dict:
    """CPU replay with the PyTorch backend; writes replay-<model>.{json,md} next to ``path`` (or into ``out``)."""
    import torch

    from .models.registry import load_model
    from .runtime.backends.torch import TorchBackend

    rows, notes = load_plans(path, prompts)
    loaded = load_model(model, weights)
    random.seed(0)

    def clock(fn):
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    with TorchBackend(loaded.transformer) as backend:
        res_rows = replay_rows(loaded, backend, rows, clock, repeats, log=log)
    n_params = sum(p.numel() for p in loaded.transformer.trunk.parameters())
    geom = loaded.geometry()
    res = dict(format="ddit-replay/1", source=str(path), model=loaded.name, rows=res_rows, notes=notes,
               repeats=repeats, threads=torch.get_num_threads(), torch=torch.__version__,
               description=f"{loaded.name}: {n_params / 1e6:.1f} M trunk parameters, {geom.tokens(1)} fine tokens, "
                           f"PyTorch CPU, {torch.get_num_threads()} thread(s); per row the first {prompts} recorded "
                           f"(sizes, cache decisions) plans as whole generations, {repeats} interleaved rounds, "
                           f"medians.")
    folder = Path(out) if out else Path(path).parent
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"replay-{loaded.name}.json").write_text(json.dumps(res, indent=1))
    res["markdown"] = markdown(res)
    (folder / f"replay-{loaded.name}.md").write_text(res["markdown"])
    res["files"] = [str(folder / f"replay-{loaded.name}.{e}") for e in ("json", "md")]
    return res
