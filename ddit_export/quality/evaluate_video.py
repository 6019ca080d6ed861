"""``ddit-export evaluate`` for a video model (wan-mini): how much quality DDiT's coarse steps cost on clips.

For ``n_prompts`` held-out clip captions (zoo/clips.py; only clips whose rendered ground truth the motion probe
reads right, so that a miss is the model's, not the probe's) x ``seeds`` it runs the fine-only baseline (static
all-1 schedule, batched) and every variant from the same noise: the model's default profile and the rule at the
model's τ (and every τ / policy asked for) with the trained adapters, and the rule with the training-free init.
Per variant: PSNR and SSIM of every frame against the fine-only clip of the same prompt and seed (means over frames
and clips), temporal consistency (frame-to-frame change relative to the fine-only clip's, and the mean absolute
difference of the two frame-difference signals), prompt adherence read by the motion probe (colour present, motion
right, both), the Fréchet distance of frames to rendered clips (scene-probe features), coarse fraction, FLOP ratio
and seconds per clip. A ``real`` row scores rendered clips: the probe's ceiling and the Fréchet floor.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..settings import EvalSettings, parse_policy, policy_spec

REFERENCE_N = 200  # rendered clips behind the Fréchet reference
REFERENCE_SEED_OFFSET = 1_000_003


def eval_clips(n: int, split: str = "heldout", seed: int = 2026, max_words: int | None = None, frames: int = 8,
               side: int = 32) -> list:
    """``n`` clips of ``split`` whose caption fits ``max_words`` and whose rendered truth the probe reads right."""
    from ..zoo import clips as C
    from .motion import adherence

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n * 50):
        c = C.sample_clip(rng, split)
        if max_words is not None and len(c.caption.split()) > max_words:
            continue
        if adherence(C.render(c, frames, side), c)["all"]:
            out.append(c)
            if len(out) == n:
                return out
    raise ConfigError(f"could not draw {n} probe-readable {split} clips")


def _variants(settings: EvalSettings, loaded, tf, run_adapted: bool) -> list[dict]:
    profile = loaded.schedule_defaults
    default_tau = profile.tau
    taus = (default_tau,) + tuple(t for t in settings.taus if t != default_tau)
    out = [dict(key="fine", kind="fine", model=loaded)]
    specs = ((policy_spec(profile),) if profile.policy != "ddit" else ()) + tuple(settings.policies)
    specs = tuple(dict.fromkeys(policy_spec(parse_policy(p, profile)) for p in specs))
    base = loaded if run_adapted else tf
    kind = "adapted" if run_adapted else "training-free"
    out += [dict(key=f"{kind}@{p}", kind=kind, policy=p, model=base) for p in specs]
    if run_adapted:
        out += [dict(key=f"adapted@{t:g}", kind="adapted", tau=t, model=loaded) for t in taus]
    if settings.training_free:
        out += [dict(key=f"training-free@{t:g}", kind="training-free", tau=t, model=tf) for t in taus]
    return out


def evaluate_video(settings: EvalSettings = EvalSettings(), *, progress: bool = True, log=print,
                   reference_n: int = REFERENCE_N) -> dict:
    """Run the video evaluation; write ``eval.json``, ``eval.md`` and ``grid.png`` into ``settings.out``."""
    from tqdm.auto import tqdm

    from ..api import build_settings
    from ..models.registry import load_model
    from ..runtime.backends.torch import TorchBackend
    from ..runtime.generate import generate, initial_noise
    from ..zoo import clips as C
    from .detector import load_probe
    from .evaluate import folder_adapters, prompt_chunks, training_free, variant_settings
    from .metrics import frechet_distance
    from .motion import adherence, aggregate
    from .video import clip_array, frame_features, frame_psnr, frame_ssim, temporal_consistency

    t_start = time.perf_counter()
    detector = load_probe()
    own = folder_adapters(settings.model, settings.weights)
    have = settings.adapters is not None or own is not None
    run_adapted = have if settings.adapted is None else settings.adapted
    if run_adapted and not have:
        raise ConfigError(f"model {settings.model!r} has no trained adapters: train them with `ddit-export adapt`, "
                          f"pass --adapters FILE, or drop --adapted")
    loaded = load_model(settings.model, settings.weights, adapters=settings.adapters, sizes=settings.sizes)
    if getattr(loaded, "family", "flux") != "wan":
        raise ConfigError(f"{settings.model} is not a video model")
    tf = training_free(loaded)
    geom = loaded.geometry(settings.side, settings.side)
    hw = dict(height=geom.height, width=geom.width)
    steps = settings.steps or loaded.default_steps
    variants = _variants(settings, loaded, tf, run_adapted)
    enc = loaded.extras.get("text_encoder")
    max_words = getattr(getattr(enc, "config", None), "max_length", None)
    clips = eval_clips(settings.n_prompts, settings.split, settings.prompt_seed, max_words, geom.frames, geom.height)
    captions = [c.caption for c in clips]
    n, seeds = len(clips), settings.seeds
    kw = dict(eps=settings.eps, warmup=settings.warmup)
    build_settings(loaded, prompts=captions[:1], steps=steps, **hw, **kw)  # validate first

    bar = tqdm(total=len(seeds) * n * len(variants), desc="evaluate", unit="clip", disable=not progress)
    for v in variants:
        v.update(clips=[], coarse=[], flops=[], sizes=[], seconds=0.0)
    for seed in seeds:
        noise = initial_noise(geom, n, seed)
        for v in variants:
            m = v["model"]
            t0 = time.perf_counter()
            batched = v["kind"] == "fine" or v.get("policy", "").startswith("ladder")
            with TorchBackend(m.transformer) as backend:
                for lo, hi in prompt_chunks(n, settings.batch, batched):
                    gs = variant_settings(v, dict(prompts=captions[lo:hi], seed=seed, steps=steps, **hw), kw)
                    r = generate(m, backend, gs, progress=False, latents=noise[lo:hi])
                    v["clips"] += [clip_array(c) for c in r.images]
                    v["coarse"] += [r.trace.coarse_fraction] * (hi - lo)
                    v["flops"] += [r.trace.flops_ratio] * (hi - lo)
                    v["sizes"] += ["".join(map(str, r.trace.sizes))] * (hi - lo)
                    bar.update(hi - lo)
            v["seconds"] += time.perf_counter() - t0
    bar.close()

    # ---- metrics ----
    all_clips = clips * len(seeds)
    real = [C.render(c, geom.frames, geom.height) for c in all_clips]
    ref_rng = np.random.default_rng(settings.prompt_seed + REFERENCE_SEED_OFFSET)
    reference = [C.render(C.sample_clip(ref_rng, settings.split), geom.frames, geom.height)
                 for _ in range(reference_n)]
    ref_feats = frame_features(reference, detector)
    fine = variants[0]["clips"]
    rows = {"real": {"kind": "real", "adherence": aggregate([adherence(c, t) for c, t in zip(real, all_clips)]),
                     "fd_frames": frechet_distance(frame_features(real, detector), ref_feats)}}
    for v in variants:
        cl = v["clips"]
        tc = [temporal_consistency(c, f) for c, f in zip(cl, fine)]
        rows[v["key"]] = {
            "kind": v["kind"], "policy": v.get("policy"), "tau": v.get("tau"),
            "psnr": float(np.mean([frame_psnr(c, f).mean() for c, f in zip(cl, fine)])),
            "psnr_min_frame": float(np.mean([frame_psnr(c, f).min() for c, f in zip(cl, fine)])),
            "ssim": float(np.mean([frame_ssim(c, f).mean() for c, f in zip(cl, fine)])),
            "change_ratio": float(np.mean([t["change_ratio"] for t in tc])),
            "diff_error": float(np.mean([t["diff_error"] for t in tc])),
            "adherence": aggregate([adherence(c, t) for c, t in zip(cl, all_clips)]),
            "fd_frames": frechet_distance(frame_features(cl, detector), ref_feats),
            "coarse_fraction": float(np.mean(v["coarse"])), "flops_ratio": float(np.mean(v["flops"])),
            "seconds_per_clip": v["seconds"] / len(cl), "schedules": v["sizes"]}
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"model": loaded.name, "n_prompts": n, "seeds": list(seeds), "steps": steps, "split": settings.split,
              "frames": geom.frames, "resolution": [geom.height, geom.width],
              "default_profile": policy_spec(loaded.schedule_defaults), "variants": rows,
              "seconds": time.perf_counter() - t_start}
    (out / "eval.json").write_text(json.dumps(report, indent=1))
    (out / "eval.md").write_text(markdown(report))
    _grid(real, variants, out / "grid.png")
    report["files"] = [str(out / "eval.json"), str(out / "eval.md"), str(out / "grid.png")]
    return report


def markdown(report: dict) -> str:
    lines = [f"# ddit-export evaluate (video): {report['model']}", "",
             f"{report['n_prompts']} {report['split']} clips x seeds {report['seeds']}, {report['steps']} steps, "
             f"{report['frames']} frames at {report['resolution'][0]}x{report['resolution'][1]}; default profile "
             f"`{report['default_profile']}`. PSNR/SSIM per frame vs the fine-only clip (means); change ratio = "
             f"frame-to-frame change / the fine-only clip's; diff err = mean |Δframe − Δframe_fine|; adherence by "
             f"the motion probe (colour / motion / both); FD = Fréchet distance of frames to rendered clips.", "",
             "| variant | coarse | FLOPs | PSNR dB | min-frame PSNR | SSIM | change ratio | diff err | colour | "
             "motion | both | FD | s/clip |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, r in report["variants"].items():
        a = r["adherence"]
        if r["kind"] == "real":
            lines.append(f"| real (rendered) | – | – | – | – | – | – | – | {a['colour']:.1%} | {a['motion']:.1%} | "
                         f"{a['all']:.1%} | {r['fd_frames']:.1f} | – |")
            continue
        lines.append(f"| {key} | {r['coarse_fraction']:.0%} | {r['flops_ratio']:.3f} | {r['psnr']:.2f} | "
                     f"{r['psnr_min_frame']:.2f} | {r['ssim']:.3f} | {r['change_ratio']:.3f} | {r['diff_error']:.4f} | "
                     f"{a['colour']:.1%} | {a['motion']:.1%} | {a['all']:.1%} | {r['fd_frames']:.1f} | "
                     f"{r['seconds_per_clip']:.2f} |")
    return "\n".join(lines) + "\n"


def _grid(real, variants, path, n: int = 4):
    """Rows: for each of the first ``n`` clips, the rendered truth then every variant (frames left to right)."""
    from ..video_io import frames_grid

    rows = []
    for i in range(min(n, len(real))):
        rows.append(_to_uint8(real[i]))
        rows += [_to_uint8(v["clips"][i]) for v in variants]
    frames_grid(rows, scale=2).save(path)


def _to_uint8(clip) -> np.ndarray:
    return ((np.clip(clip, -1, 1) + 1) * 127.5).round().astype(np.uint8).transpose(0, 2, 3, 1)
