"""GPU benchmark of Wan 2.1-1.3B-shaped video generation with the CUDA-graph backend: fine-only vs the schedules
recorded on wan-mini, replayed.

    python scripts/gpu_wan_bench.py --out $OUT [--schedules scripts/wan_mini_schedules.json] [--time-budget 300]
    python scripts/gpu_wan_bench.py --cpu-smoke --out /tmp/smoke       # dry run on the CPU at tiny sizes

Model: diffusers' WanTransformer3DModel with Wan 2.1 1.3B's layout (30 blocks, width 1536 = 12 heads x 128, FFN
8960, UMT5 text dim 4096, 16 latent channels, patch (1, 2, 2)), random weights in bf16, wrapped in MultiPatchWan
(rank-32 LoRA). Clip: 480x832, 81 frames -> latent 21 x 60 x 104 -> a (21, 30, 52) token grid = 32760 fine tokens
+ 512 text tokens. Only k = 2 divides the 30-row grid, so sizes are (1, 2) at 480p; a recorded step at size 4 is
replayed at size 2 (said in the results). A fine step is ~2 x 1.4 B x 32760 FLOPs + attention (ddit_export.flops).

Measured, interleaved, medians: (1) step time per size (CUDA-graph replays, synchronised); (2) whole generations
(the project's loop, static schedule, no decode, one call per step: classifier-free guidance would double every
step alike): fine-only vs each schedule, with the FLOP-bound speed-up beside the measured one. Writes results.json
and results.md into --out after every phase.
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
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from gpu_bench import Clock  # noqa: E402  (synchronised wall-clock timing, shared with the FLUX benchmark)

WAN_13B = dict(heads=12, head_dim=128, ffn=8960, layers=30, text_dim=4096, freq=256, channels=16, patch=(1, 2, 2),
               frames=81, height=480, width=832, vae_scale=8, vae_temporal=4, text_len=512, rank=32, steps=50)
SMOKE = dict(heads=2, head_dim=12, ffn=48, layers=1, text_dim=16, freq=32, channels=4, patch=(1, 2, 2),
             frames=5, height=64, width=64, vae_scale=8, vae_temporal=4, text_len=8, rank=4, steps=6)
SIZES = (1, 2, 4)


def fail(msg: str, code: int = 2):
    print(f"gpu_wan_bench: error: {msg}", file=sys.stderr)
    sys.exit(code)


def load_schedules(path: Path, steps: int, limit: int) -> tuple[list[list[int]], str]:
    if not path.is_file():
        warm, rest = [1] * 3, steps - 3
        return [warm + [2] * (rest // 2) + [1] * (rest - rest // 2)], f"synthetic ({path} not found)"
    try:
        d = json.loads(path.read_text())
    except ValueError as e:
        fail(f"{path}: not JSON ({e})")
    scheds = d["schedules"] if isinstance(d, dict) else d
    if not scheds or not all(isinstance(s, list) and s and all(k in SIZES for k in s) for s in scheds):
        fail(f"{path}: expected a non-empty list of size lists with sizes in {SIZES}")
    return scheds[:limit], (d.get("source", str(path)) if isinstance(d, dict) else str(path))


def build_model(cfg: dict, device: str, dtype):
    """A LoadedModel around a random Wan-architecture MultiPatchWan with fixed random text states."""
    import torch
    from diffusers import WanTransformer3DModel

    from ddit_export.models.registry import Conditioning, LoadedModel
    from ddit_export.models.wan import MultiPatchWan
    from ddit_export.settings import AdapterSettings
    from ddit_export.shapes import VideoGeometry

    geom = VideoGeometry(cfg["frames"], cfg["height"], cfg["width"], cfg["vae_scale"], cfg["vae_temporal"],
                         cfg["patch"], cfg["channels"])
    sizes = geom.available_sizes(SIZES)
    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # initialise in the benchmark dtype: no fp32 copy of 1.4 B parameters
    try:
        with torch.device(device):
            trunk = WanTransformer3DModel(
                patch_size=cfg["patch"], num_attention_heads=cfg["heads"], attention_head_dim=cfg["head_dim"],
                in_channels=cfg["channels"], out_channels=cfg["channels"], text_dim=cfg["text_dim"],
                freq_dim=cfg["freq"], ffn_dim=cfg["ffn"], num_layers=cfg["layers"])
            mp = MultiPatchWan(trunk.eval(), sizes=sizes, adapter=AdapterSettings(rank=cfg["rank"])).eval()
    finally:
        torch.set_default_dtype(prev)
    g = torch.Generator(device).manual_seed(1)
    cond = Conditioning(torch.randn(1, cfg["text_len"], cfg["text_dim"], generator=g, device=device).to(dtype),
                        None, None)
    model = LoadedModel(name="wan-1.3b-shaped", transformer=mp, encode=lambda prompts: cond,
                        decode=lambda *a: None,
                        scheduler_config={"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0,
                                          "use_dynamic_shifting": False},
                        vae_scale=cfg["vae_scale"], latent_channels=cfg["channels"], default_height=cfg["height"],
                        default_width=cfg["width"], default_steps=cfg["steps"], family="wan",
                        default_frames=cfg["frames"])
    model.geometry = lambda height=None, width=None, frames=None: geom  # the one clip this benchmark runs
    return model, geom


def step_times(backend, model, geom, clock, reps: int) -> dict:
    import torch

    from ddit_export.runtime.generate import initial_noise

    cond = model.encode(["bench"])
    dev = cond.states.device
    x, t = initial_noise(geom, 1, 0, dev), torch.full((1,), 500.0, device=dev)
    sizes = model.transformer.sizes
    runs = {k: [] for k in sizes}
    for _ in range(reps):
        for k in random.sample(sizes, len(sizes)):
            runs[k].append(clock(lambda k=k: backend.run(k, x, cond, t, None, geom.grid)))
    return {str(k): statistics.median(v) * 1e3 for k, v in runs.items()}


def generation(model, backend, schedule, clock) -> float:
    from ddit_export.runtime.generate import generate
    from ddit_export.settings import GenerateSettings

    gs = GenerateSettings(prompts=("bench",), steps=len(schedule), static=tuple(schedule), guidance=1.0)
    return clock(lambda: generate(model, backend, gs, progress=False, decode=False))


def flop_bound(model, geom, schedule) -> float:
    from ddit_export.flops import step_flops

    cfg, rank = dict(model.transformer.config), model.transformer.adapter_settings.rank
    f = {k: step_flops(cfg, geom.tokens(1), 512, k, rank) for k in set(schedule) | {1}}
    return f[1] * len(schedule) / sum(f[k] for k in schedule)


def markdown(res: dict) -> str:
    lines = [f"# Wan 2.1-1.3B-shaped GPU benchmark ({res['mode']})", "", f"- device: {res['device']}",
             f"- torch {res['torch']}", f"- model: {res['model']}", f"- schedules: {res['schedules_source']}", ""]
    if "step_ms" in res:
        fine = res["step_ms"]["1"]
        lines += ["| size | tokens | median step ms | vs fine |", "|---|---|---|---|"]
        lines += [f"| {k} | {res['tokens'][k]} | {v:.2f} | {fine / v:.2f}x |" for k, v in res["step_ms"].items()]
        lines.append("")
    if res.get("generations"):
        lines += ["| # | steps | coarse steps | fine-only s | DDiT s | measured | FLOP-bound |",
                  "|---|---|---|---|---|---|---|"]
        for i, g in enumerate(res["generations"]):
            lines.append(f"| {i} | {g['steps']} | {g['coarse_steps']} | {g['fine_only_s']:.2f} | {g['ddit_s']:.2f} "
                         f"| {g['speedup']:.2f}x | {g['flop_bound']:.2f}x |")
        lines.append("")
    lines += [f"- {n}" for n in res.get("notes", [])]
    return "\n".join(lines) + "\n"


def write_results(out: Path, res: dict):
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=1))
    (out / "results.md").write_text(markdown(res))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("out/gpu_wan_bench"))
    p.add_argument("--schedules", type=Path, default=ROOT / "scripts" / "wan_mini_schedules.json")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-schedules", type=int, default=4)
    p.add_argument("--time-budget", type=float, default=300.0)
    p.add_argument("--cpu-smoke", action="store_true", help="tiny config on the CPU, eager torch: a dry run")
    args = p.parse_args(argv)
    start = time.monotonic()
    random.seed(0)
    log = lambda m: print(f"[gpu_wan_bench {time.monotonic() - start:6.1f}s] {m}", flush=True)  # noqa: E731
    cfg = SMOKE if args.cpu_smoke else WAN_13B
    schedules, source = load_schedules(args.schedules, cfg["steps"], args.max_schedules)
    import torch

    if not args.cpu_smoke and not torch.cuda.is_available():
        fail("no CUDA GPU; use --cpu-smoke for a dry run on the CPU")
    device, dtype = ("cpu", torch.float32) if args.cpu_smoke else ("cuda", torch.bfloat16)
    res = {"mode": "cpu-smoke" if args.cpu_smoke else "gpu", "torch": torch.__version__,
           "device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "config": cfg,
           "schedules_source": source, "notes": []}
    model, geom = build_model(cfg, device, dtype)
    sizes = model.transformer.sizes
    mapped = []
    for s in schedules:
        m = [k if k in sizes else max(j for j in sizes if j <= k) for k in s]
        if m != s:
            res["notes"].append(f"a schedule's size(s) {sorted(set(s) - set(sizes))} do not divide the "
                                f"{geom.grid} grid: replayed at the largest size that does")
        mapped.append(m)
    n_params = sum(p.numel() for p in model.transformer.trunk.parameters())
    res["model"] = (f"Wan 2.1 layout, random weights, {cfg['layers']} blocks, width {cfg['heads'] * cfg['head_dim']},"
                    f" {n_params / 1e9:.3f} B trunk parameters, {dtype}, grid {geom.grid} = {geom.tokens(1)} fine "
                    f"tokens + {cfg['text_len']} text tokens, sizes {list(sizes)}")
    res["tokens"] = {str(k): geom.tokens(k) for k in sizes}
    if args.cpu_smoke:
        from ddit_export.runtime.backends.torch import TorchBackend

        backend = TorchBackend(model.transformer)
    else:
        from ddit_export.runtime.backends.torch_cuda import TorchCudaBackend

        backend = TorchCudaBackend(model.transformer)
    clock = Clock(device == "cuda")
    with backend:
        log("step times per size")
        res["step_ms"] = step_times(backend, model, geom, clock, 3 if args.cpu_smoke else 10)
        write_results(args.out, res)
        log(f"{res['step_ms']}")
        times = {("fine", len(s)): [] for s in mapped} | {("ddit", i): [] for i in range(len(mapped))}
        deadline = start + args.time_budget
        for r in range(args.repeats):
            if r and time.monotonic() > deadline:
                res["notes"].append(f"time budget reached after {r} repeat(s)")
                break
            for job in random.sample(list(times), len(times)):
                kind, i = job
                times[job].append(generation(model, backend, [1] * i if kind == "fine" else mapped[i], clock))
            res["generations"] = []
            for i, s in enumerate(mapped):
                fine, ddit = statistics.median(times[("fine", len(s))]), statistics.median(times[("ddit", i)])
                res["generations"].append({"schedule": s, "steps": len(s), "coarse_steps": sum(k > 1 for k in s),
                                           "fine_only_s": fine, "ddit_s": ddit, "speedup": fine / ddit,
                                           "flop_bound": flop_bound(model, geom, s), "repeats": r + 1})
            write_results(args.out, res)
            log(f"repeat {r + 1}: " + ", ".join(f"{g['speedup']:.2f}x" for g in res["generations"]))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
