"""GPU benchmark of whole generations with the CUDA-graph backend: static fine-only vs DDiT schedules replayed.

    python scripts/gpu_bench.py --out $OUT [--schedules scripts/flux_mini_schedules.json] [--time-budget 330]
    python scripts/gpu_bench.py --cpu-smoke --out /tmp/smoke        # dry run on the CPU at tiny sizes

Model: FLUX architecture with random weights (bf16), the "speed" config below: FLUX.1-dev's width (3072 = 24 heads
x 128, so attention runs FLUX's own head size and kernels), its input/text/pooled dims and guidance embedding, and
8 double + 16 single blocks (FLUX's 1:2 ratio at ~40% of its depth; ~5.0 B trunk parameters, 10 GB in bf16) at
1024x1024 = a 64x64 grid of 4096 fine tokens + 512 text tokens. A fine step is ~31 TFLOP (ddit_export.flops), i.e.
~50-60 ms on an H100 at 500-600 TFLOP/s: well above the 20 ms that makes launch overhead negligible, while a full
generation (28 steps) stays under 2 s so that repeats fit the time budget.

Schedules: DDiT size sequences recorded on flux-mini, replayed here as static schedules (the decisions depend on
the trained model's latents, which random weights cannot reproduce). File format (JSON): a list of size lists,
``[[1, 1, 1, 2, 2, 4, ...], ...]``, or ``{"schedules": [[...], ...], "source": "..."}``; every list is one
generation, its length is its step count. A missing file falls back to synthetic schedules, labelled as such.

Measured, interleaved (random order within each repeat), medians reported:
1. step time per size (CUDA-graph replays, synchronised);
2. whole generations (the project's loop: runtime.generate.generate, static schedule, no decode): fine-only with
   the same number of steps vs each DDiT schedule;
3. the per-switch cost: the same calls alternating sizes vs grouped by size; target < 1% of a fine step;
4. the replay table (issue 8): every row of a Pareto bench report (``--plans``, default
   docs/results/pareto-flux-mini-replay-rows.json: 9 rows of docs/results/pareto-flux-mini.json, the sizes and step-cache
   decisions recorded on flux-mini by ``ddit-export bench
   --pareto``) replayed as whole generations, measured speed-up vs the FLOP-bound one (ddit_export.pareto_replay).
Writes ``results.json`` and ``results.md`` into --out after every phase, so a timeout still leaves results.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a copy of the repo without installing it

SPEED = dict(width=3072, heads=24, double=8, single=16, in_channels=64, joint=4096, pooled=768, guidance=True,
             text_len=512, side=1024, rope=(16, 56, 56), rank=32, steps=28)
SMOKE = dict(width=64, heads=2, double=1, single=1, in_channels=64, joint=32, pooled=32, guidance=True,
             text_len=8, side=64, rope=(8, 12, 12), rank=4, steps=6)
SIZES = (1, 2, 4)
FLUX_SCHEDULER = {"shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15,
                  "base_image_seq_len": 256, "max_image_seq_len": 4096}
SWITCH_TARGET = 0.01


def fail(msg: str, code: int = 2):
    print(f"gpu_bench: error: {msg}", file=sys.stderr)
    sys.exit(code)


# ---- inputs -----------------------------------------------------------------------------------------------
def synthetic_schedules(steps: int) -> list[list[int]]:
    warm = [1] * 3
    rest = steps - 3
    return [warm + [4] * (rest // 3) + [2] * (rest // 3) + [1] * (rest - 2 * (rest // 3)),
            warm + [2] * (rest // 2) + [1] * (rest - rest // 2)]


def load_schedules(path: Path, steps: int, max_count: int) -> tuple[list[list[int]], str]:
    """(schedules, source) from the recorded-traces file; synthetic ones if it does not exist."""
    if not path.is_file():
        print(f"gpu_bench: warning: {path} not found; using synthetic schedules (record flux-mini's with the "
              f"lead's script and pass --schedules)", file=sys.stderr)
        return synthetic_schedules(steps), "synthetic (no recorded schedules file)"
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        fail(f"{path}: not valid JSON ({e})")
    source = str(path)
    if isinstance(data, dict):
        source = data.get("source", source)
        data = data.get("schedules")
    if not isinstance(data, list) or not data or not all(isinstance(s, list) and s for s in data):
        fail(f"{path}: expected a non-empty list of non-empty size lists, e.g. [[1,1,1,2,4], ...]")
    bad = sorted({k for s in data for k in s if k not in SIZES})
    if bad:
        fail(f"{path}: sizes {bad} are not among the benchmarked sizes {list(SIZES)}")
    if len(data) > max_count:  # evenly spread, deterministic
        data = [data[round(i * (len(data) - 1) / (max_count - 1))] for i in range(max_count)] if max_count > 1 \
            else data[:1]
    return [[int(k) for k in s] for s in data], source


# ---- model and backend ------------------------------------------------------------------------------------
def build_model(cfg: dict, device: str, dtype):
    """A LoadedModel around a random FLUX-architecture MultiPatchFlux, conditioning fixed and random."""
    import torch
    from diffusers import FluxTransformer2DModel

    from ddit_export.models.flux import MultiPatchFlux
    from ddit_export.models.registry import Conditioning, LoadedModel
    from ddit_export.settings import AdapterSettings

    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # initialise directly in the benchmark dtype: no fp32 copy of 5 B parameters
    try:
        with torch.device(device):
            trunk = FluxTransformer2DModel(
                patch_size=1, in_channels=cfg["in_channels"], num_layers=cfg["double"],
                num_single_layers=cfg["single"], attention_head_dim=cfg["width"] // cfg["heads"],
                num_attention_heads=cfg["heads"], joint_attention_dim=cfg["joint"],
                pooled_projection_dim=cfg["pooled"], guidance_embeds=cfg["guidance"], axes_dims_rope=cfg["rope"])
            mp = MultiPatchFlux(trunk.eval(), sizes=SIZES, adapter=AdapterSettings(rank=cfg["rank"])).eval()
    finally:
        torch.set_default_dtype(prev)
    g = torch.Generator(device).manual_seed(1)
    cond = Conditioning(torch.randn(1, cfg["text_len"], cfg["joint"], generator=g, device=device).to(dtype),
                        torch.randn(1, cfg["pooled"], generator=g, device=device).to(dtype),
                        torch.zeros(cfg["text_len"], 3, device=device, dtype=dtype))
    return LoadedModel(name="flux-speed", transformer=mp, encode=lambda prompts: cond, decode=lambda *a: None,
                       scheduler_config=dict(FLUX_SCHEDULER), vae_scale=8, latent_channels=cfg["in_channels"] // 4,
                       default_height=cfg["side"], default_width=cfg["side"], default_steps=cfg["steps"],
                       guidance_embeds=cfg["guidance"])


def make_backend(model, smoke: bool):
    if smoke:
        from ddit_export.runtime.backends.torch import TorchBackend

        return TorchBackend(model.transformer)
    from ddit_export.runtime.backends.torch_cuda import TorchCudaBackend

    return TorchCudaBackend(model.transformer)


class Clock:
    def __init__(self, cuda: bool):
        import torch

        self.sync = torch.cuda.synchronize if cuda else (lambda: None)

    def __call__(self, fn) -> float:
        self.sync()
        t0 = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - t0


def fixed_inputs(model):
    import torch

    from ddit_export.runtime.generate import initial_noise

    geom = model.geometry()
    cond = model.encode(["bench"])
    dev = cond.states.device
    x = initial_noise(geom, 1, 0, dev)
    return geom, cond, x, torch.full((1,), 0.5, device=dev), torch.full((1,), 3.5, device=dev)


# ---- measurements ---------------------------------------------------------------------------------------------
def step_times(backend, model, clock, reps: int) -> dict:
    geom, cond, x, t, g = fixed_inputs(model)
    runs = {k: [] for k in SIZES}
    for _ in range(reps):
        for k in random.sample(SIZES, len(SIZES)):
            runs[k].append(clock(lambda: backend.run(k, x, cond, t, g, geom.grid)))
    return {str(k): {"median_ms": statistics.median(v) * 1e3, "runs_ms": [r * 1e3 for r in v]}
            for k, v in runs.items()}


def switch_cost(backend, model, clock, reps: int, calls: int) -> dict:
    """(alternating - grouped) / extra switches, per size pair, as ms and as a fraction of the fine step."""
    geom, cond, x, t, g = fixed_inputs(model)
    out = {}
    for a, b in ((1, 2), (1, 4), (2, 4)):
        grouped = [a] * calls + [b] * calls
        alternating = [a, b] * calls
        extra = (len(alternating) - 1) - 1
        diffs = []
        for _ in range(reps):
            seqs = [grouped, alternating]
            random.shuffle(seqs)
            times = {}
            for s in seqs:
                times[id(s)] = clock(lambda s=s: [backend.run(k, x, cond, t, g, geom.grid) for k in s])
            diffs.append((times[id(alternating)] - times[id(grouped)]) / extra)
        out[f"{a}<->{b}"] = {"median_ms": statistics.median(diffs) * 1e3, "runs_ms": [d * 1e3 for d in diffs]}
    return out


def generation(model, backend, schedule, clock) -> float:
    from ddit_export.runtime.generate import generate
    from ddit_export.settings import GenerateSettings

    settings = GenerateSettings(prompts=("bench",), steps=len(schedule), static=tuple(schedule))
    return clock(lambda: generate(model, backend, settings, progress=False, decode=False))


def generations(model, backend, schedules, clock, reps: int, deadline: float, log) -> tuple[list, int]:
    lengths = sorted({len(s) for s in schedules})
    jobs = [("fine", n) for n in lengths] + [("ddit", i) for i in range(len(schedules))]
    times = {j: [] for j in jobs}
    done = 0
    for r in range(reps):
        if r and time.monotonic() > deadline:
            log(f"time budget reached after {r} repeat(s) of the generations")
            break
        for job in random.sample(jobs, len(jobs)):
            kind, i = job
            times[job].append(generation(model, backend, [1] * i if kind == "fine" else schedules[i], clock))
        done = r + 1
    rows = []
    for i, s in enumerate(schedules):
        fine, ddit = statistics.median(times[("fine", len(s))]), statistics.median(times[("ddit", i)])
        rows.append({"schedule": s, "steps": len(s), "coarse_steps": sum(k > 1 for k in s),
                     "fine_only_s": fine, "ddit_s": ddit, "speedup": fine / ddit,
                     "fine_only_runs_s": times[("fine", len(s))], "ddit_runs_s": times[("ddit", i)]})
    return rows, done


def replay_phase(args, model, backend, clock, res, log):
    """Phase 4: the Pareto rows' recorded plans (sizes + cache decisions) on this config."""
    from ddit_export.errors import ConfigError
    from ddit_export.pareto_replay import load_plans, replay_rows

    if not args.plans.is_file():
        res["notes"].append(f"replay skipped: {args.plans} not found (write it with ddit-export bench --pareto)")
        return
    try:
        rows, notes = load_plans(args.plans, args.plan_prompts)
    except ConfigError as e:
        fail(str(e))
    log(f"replay: {len(rows)} Pareto rows x {args.plan_prompts} plan(s), budget {args.replay_budget:.0f} s")
    res["replay"] = replay_rows(model, backend, rows, clock, 1 if args.cpu_smoke else 3,
                                deadline=time.monotonic() + args.replay_budget, log=log)
    res["replay_source"], res["replay_not_replayed"] = str(args.plans), notes


# ---- report ---------------------------------------------------------------------------------------------------
def write_results(out: Path, res: dict):
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=1))
    (out / "results.md").write_text(markdown(res))


def markdown(res: dict) -> str:
    lines = [f"# GPU benchmark ({res['mode']})", "", f"- device: {res['device']}", f"- torch {res['torch']}",
             f"- model: {res['model']}", f"- schedules: {res.get('schedules_source')}", ""]
    if "step_ms" in res:
        lines += ["| size | tokens | median step ms | vs fine |", "|---|---|---|---|"]
        fine = res["step_ms"]["1"]["median_ms"]
        for k, v in res["step_ms"].items():
            lines.append(f"| {k} | {res['tokens'][k]} | {v['median_ms']:.2f} | {fine / v['median_ms']:.2f}x |")
        lines.append("")
    if "generations" in res:
        lines += [f"Whole generations, median of {res['generation_repeats']} interleaved repeat(s):", "",
                  "| # | steps | coarse steps | fine-only s | DDiT s | speed-up |", "|---|---|---|---|---|---|"]
        for i, g in enumerate(res["generations"]):
            lines.append(f"| {i} | {g['steps']} | {g['coarse_steps']} | {g['fine_only_s']:.3f} | {g['ddit_s']:.3f} "
                         f"| {g['speedup']:.2f}x |")
        lines.append(f"\nmedian speed-up: {res['median_speedup']:.2f}x\n")
    if "switch" in res:
        lines += ["Per-switch cost (alternating minus grouped calls, per extra switch):", "",
                  "| pair | median ms | % of fine step |", "|---|---|---|"]
        for pair, v in res["switch"].items():
            lines.append(f"| {pair} | {v['median_ms']:.3f} | {100 * v['fraction_of_fine_step']:.2f}% |")
        lines.append(f"\ntarget < {100 * SWITCH_TARGET:.0f}% of a fine step: "
                     f"{'met' if res['switch_ok'] else 'NOT met'}\n")
    if "replay" in res:
        lines += [f"Pareto rows replayed from {res['replay_source']} (sizes + step-cache decisions recorded on "
                  f"flux-mini), whole generations, medians:", "",
                  "| method | family | measured speed-up (min–max) | FLOP-bound | measured / bound |",
                  "|---|---|---|---|---|"]
        from ddit_export.pareto_replay import table_rows

        lines += table_rows(res["replay"]) + [""]
    if res.get("notes"):
        lines += ["Notes:", ""] + [f"- {n}" for n in res["notes"]]
    return "\n".join(lines) + "\n"


# ---- main -----------------------------------------------------------------------------------------------------
def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("out/gpu_bench"))
    p.add_argument("--schedules", type=Path, default=ROOT / "scripts" / "flux_mini_schedules.json")
    p.add_argument("--repeats", type=int, default=5, help="generation repeats (interleaved); medians reported")
    p.add_argument("--max-schedules", type=int, default=8)
    p.add_argument("--time-budget", type=float, default=330.0, help="seconds; stops repeating when exceeded")
    p.add_argument("--plans", type=Path, default=ROOT / "docs" / "results" / "pareto-flux-mini-replay-rows.json",
                   help="Pareto bench report whose rows are replayed (phase 4); skipped if the file is missing")
    p.add_argument("--plan-prompts", type=int, default=1, help="recorded plans (prompts) replayed per row")
    p.add_argument("--replay-budget", type=float, default=120.0, help="seconds for the replay phase")
    p.add_argument("--cpu-smoke", action="store_true", help="tiny config on the CPU, eager torch: a dry run")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    start = time.monotonic()
    deadline = start + args.time_budget
    random.seed(0)
    log = lambda m: print(f"[gpu_bench {time.monotonic() - start:6.1f}s] {m}", flush=True)  # noqa: E731
    cfg = SMOKE if args.cpu_smoke else SPEED
    schedules, source = load_schedules(args.schedules, cfg["steps"], args.max_schedules)  # fail fast, before imports
    try:
        import torch
    except ImportError:
        fail("torch is not importable")
    cuda = torch.cuda.is_available()
    if not args.cpu_smoke and not cuda:
        fail("no CUDA GPU (torch.cuda.is_available() is False); use --cpu-smoke for a dry run on the CPU")
    try:
        import diffusers  # noqa: F401
    except ImportError as e:
        fail(f"diffusers is not importable ({e}); on the GPU machine run scripts/gpu_check.sh, which installs it "
             f"from the wheels in .whl/")
    if args.cpu_smoke:
        torch.set_num_threads(1)  # tiny tensors: threads only add contention
    device, dtype = ("cpu", torch.float32) if args.cpu_smoke else ("cuda", torch.bfloat16)
    res = {"mode": "cpu-smoke" if args.cpu_smoke else "gpu", "torch": torch.__version__,
           "device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "config": cfg,
           "schedules_source": source, "notes": []}
    log(f"building {res['mode']} model on {res['device']}")
    model = build_model(cfg, device, dtype)
    n_params = sum(p.numel() for p in model.transformer.trunk.parameters())
    geom = model.geometry()
    res["model"] = (f"FLUX architecture, random weights, width {cfg['width']}, {cfg['double']} double + "
                    f"{cfg['single']} single blocks, {n_params / 1e9:.3f} B trunk parameters, {dtype}, "
                    f"{geom.tokens(1)} fine tokens + {cfg['text_len']} text tokens")
    res["tokens"] = {str(k): geom.tokens(k) for k in SIZES}
    from ddit_export.flops import step_flops

    res["tflops_per_step"] = {str(k): step_flops(model.transformer_config, geom.tokens(1), cfg["text_len"], k,
                                                 cfg["rank"]) / 1e12 for k in SIZES}
    clock = Clock(device == "cuda")
    with make_backend(model, args.cpu_smoke) as backend:
        if hasattr(backend, "prepare"):
            geom_, cond, x, _, g = fixed_inputs(model)
            log("capturing one CUDA graph per size")
            backend.prepare(x, cond, g, geom_.grid)
        log("step times")
        res["step_ms"] = step_times(backend, model, clock, 3 if args.cpu_smoke else 10)
        fine_ms = res["step_ms"]["1"]["median_ms"]
        if device == "cuda" and fine_ms < 20:
            res["notes"].append(f"fine step {fine_ms:.1f} ms < 20 ms: launch overhead weighs more than intended")
        write_results(args.out, res)
        log("per-switch cost")
        res["switch"] = switch_cost(backend, model, clock, 3 if args.cpu_smoke else 7, 2 if args.cpu_smoke else 10)
        for v in res["switch"].values():
            v["fraction_of_fine_step"] = v["median_ms"] / fine_ms
        res["switch_ok"] = all(v["fraction_of_fine_step"] < SWITCH_TARGET for v in res["switch"].values())
        write_results(args.out, res)
        log(f"generations: {len(schedules)} schedule(s) + fine-only, up to {args.repeats} repeats")
        rows, done = generations(model, backend, schedules, clock, 1 if args.cpu_smoke else args.repeats,
                                 deadline, log)
        res.update(generations=rows, generation_repeats=done,
                   median_speedup=statistics.median(r["speedup"] for r in rows))
        write_results(args.out, res)
        replay_phase(args, model, backend, clock, res, log)
    res["elapsed_s"] = time.monotonic() - start
    write_results(args.out, res)
    log(f"wrote {args.out / 'results.json'} and results.md; median speed-up {res['median_speedup']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
