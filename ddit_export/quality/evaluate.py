"""``ddit-export evaluate``: how much quality DDiT's coarse steps cost, measured on scene captions.

For ``n_prompts`` captions of the held-out split (deterministic; balanced over the complexity buckets simple /
medium / complex, in turn; or, with ``split="graded"``, over the detail grades 1-4 of the graded grammar,
:func:`ddit_export.zoo.scenes.graded_scenes`, restricted to the words and caption length the model reads) x
``seeds``, it runs

- ``fine``: the fine-only baseline (static all-1 schedule), batched;
- ``adapted``: DDiT with the model's trained adapters, at the model's default τ and at every τ asked for;
- ``training-free``: DDiT with freshly initialised coarse stems (the adapters' init mode, no LoRA) at the same τs,

and reports for each: prompt adherence (scene probe, :func:`.metrics.adherence`), overall and per bucket; the
Fréchet distance of probe features to rendered scenes of the same split and bucket mix (and to the fine images);
PSNR/SSIM against the fine image of the same prompt and seed; coarse-step fraction overall and per bucket; FLOPs
ratio; seconds per image; and per detail grade (``Scene.grade``, any split) coarse fraction, FLOPs ratio, PSNR and
adherence. A ``real`` row scores the rendered ground-truth scenes themselves: the metric's ceiling
for adherence and floor for the Fréchet distance at this sample size.

Every (prompt, seed) starts from the same noise in every variant: the seed's noise for the whole prompt list as one
batch (``initial_noise(geom, n_prompts, seed)``), row i for prompt i. DDiT variants run one prompt at a time, since
the rule takes one decision per batch.

A model without adapters: the adapted variant is skipped (noted in the report) unless asked for explicitly
(``adapted=True`` / ``--adapted``), which is then an error.
"""
from __future__ import annotations

import dataclasses
import json
import time
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..settings import AdapterSettings, EvalSettings, parse_policy, policy_spec
from ..shapes import profile_warning
from ..zoo import scenes as S

REFERENCE_N = 1000  # rendered scenes for the Fréchet reference statistics
REFERENCE_SEED_OFFSET = 1_000_003  # reference scenes come from prompt_seed + this: disjoint from the prompts
GRID_PROMPTS = 8  # prompts shown per variant in grid.png


def eval_scenes(n: int, split: str = "heldout", seed: int = 2026, max_words: int | None = None, grades=S.GRADES,
                words=None) -> list[S.Scene]:
    """``n`` scenes of ``split``, complexity buckets in turn (simple, medium, complex, simple, ...); with
    ``max_words``, scenes whose caption is longer are drawn again (small text encoders read few words).
    ``split="graded"``: held-out-triple scenes of the graded grammar, ``grades`` in turn, only captions of
    ``words`` (a model's vocabulary) and ``max_words``; a grade the model cannot read is a ConfigError."""
    if split == "graded":
        try:
            return S.graded_scenes(n, "heldout", seed, tuple(grades), words, max_words)
        except ValueError as e:
            raise ConfigError(f"{e}: this model cannot read every grade of the graded split; continue it on the "
                              f"graded grammar (python -m ddit_export.zoo.train --init MODEL --graded-frac F) or "
                              f"leave the grade out (--grades)") from None
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        for _ in range(1000):
            sc = S.sample_scene(rng, split, complexity=S.COMPLEXITIES[i % len(S.COMPLEXITIES)])
            if max_words is None or len(sc.caption.split()) <= max_words:
                break
        else:
            raise ConfigError(f"no {split} scene caption fits the model's {max_words} words")
        out.append(sc)
    return out


def model_folder(model: str, weights: str | None) -> Path | None:
    """The folder a model loads from (where its own adapters would be), or None for random presets."""
    from ..models.registry import RANDOM_PRESETS, ZOO_MODELS, zoo_folder

    if model == "flux":
        return Path(weights) if weights else None
    if model in RANDOM_PRESETS:
        return Path(weights) if weights else None
    if model in ZOO_MODELS and weights is None:
        return zoo_folder(model)
    return Path(model) if Path(model).is_dir() else None


def folder_adapters(model: str, weights: str | None) -> Path | None:
    from ..models.flux import ADAPTER_FILE

    folder = model_folder(model, weights)
    path = folder / "transformer" / ADAPTER_FILE if folder is not None else None
    return path if path is not None and path.is_file() else None


def training_free(loaded):
    """A copy of ``loaded`` whose coarse sizes use the training-free init (no LoRA), sharing the trunk.

    The new wrapper's hooks are none (rank 0), and the original's LoRA hooks stay inactive while it runs."""
    mp = loaded.transformer
    tf = type(mp)(mp.trunk, sizes=mp.sizes, adapter=AdapterSettings(rank=0, init=mp.adapter_settings.init))
    return dataclasses.replace(loaded, transformer=tf.eval())


def prompt_chunks(n: int, batch: int, batched: bool) -> list[tuple[int, int]]:
    """(lo, hi) prompt ranges of one variant's runs: ``batch`` at a time when its decisions do not depend on the
    prompt (fine-only, static ladders), else one prompt at a time (the rule decides once per batch)."""
    if batched:
        return [(i, min(i + batch, n)) for i in range(0, n, batch)]
    return [(i, i + 1) for i in range(n)]


def variant_settings(v: dict, common: dict, kw: dict):
    """GenerateSettings of one evaluation variant (fine-only, a policy spec, or the rule at ``v["tau"]``) for the
    prompts, seed, steps and size in ``common``; ``kw``: the rule's other knobs."""
    from ..api import build_settings

    m, steps = v["model"], common["steps"]
    if v["kind"] == "fine":
        return build_settings(m, **common, static=(1,) * steps)
    if v.get("policy"):
        return build_settings(m, **common, policy=v["policy"])
    return build_settings(m, **common, tau=v["tau"], **kw)


def _images(model, latents, geom) -> np.ndarray:
    """Final latents -> (B, 3, H, W) float32 in [-1, 1]."""
    from ..images import unpack
    from .detector import as_images

    if model.vae_scale == 1 and model.latent_channels == 3:
        return np.clip(unpack(latents.detach().float().cpu().numpy(), geom), -1, 1).astype(np.float32)
    return as_images(model.decode(latents, geom)).numpy()


def evaluate(settings: EvalSettings = EvalSettings(), *, progress: bool = True, log=print,
             reference_n: int | None = None) -> dict:
    """Run the evaluation; write ``eval.json``, ``eval.md`` and ``grid.png`` to ``settings.out``; return the report.
    ``reference_n``: rendered scenes behind the Fréchet reference statistics (default :data:`REFERENCE_N`)."""
    reference_n = reference_n or REFERENCE_N
    from tqdm.auto import tqdm

    from ..api import build_settings
    from ..models.registry import load_model
    from ..runtime.backends.torch import TorchBackend
    from ..runtime.generate import generate, initial_noise
    from .detector import load_probe
    from .metrics import adherence, frechet_distance, psnr, ssim

    t_start = time.perf_counter()
    detector = load_probe()  # fail early if the probe is missing
    own = folder_adapters(settings.model, settings.weights)
    have_adapters = settings.adapters is not None or own is not None
    run_adapted = have_adapters if settings.adapted is None else settings.adapted
    notes = []
    if run_adapted and not have_adapters:
        where = model_folder(settings.model, settings.weights)
        raise ConfigError(f"model {settings.model!r} has no trained adapters"
                          f"{f' (no {where}/transformer/ddit_adapters.safetensors)' if where else ''}: train them "
                          f"with `ddit-export adapt`, pass --adapters FILE, or drop --adapted to evaluate the "
                          f"fine-only baseline and the training-free init")
    if not have_adapters and settings.adapted is None:
        notes.append("model has no trained adapters: adapted variant skipped")
    loaded = load_model(settings.model, settings.weights, adapters=settings.adapters, sizes=settings.sizes)
    adapters_src = str(settings.adapters or own) if have_adapters else None

    geom = loaded.geometry(settings.side, settings.side)  # a bad side is an error before any work
    line = profile_warning(loaded.name, policy_spec(loaded.schedule_defaults),
                           getattr(loaded, "schedule_resolution", None), geom.height, geom.width)
    if line:  # the default profile's row is then measured where it was not calibrated
        log(line)
        notes.append(line[len("warning: "):])
    hw = dict(height=geom.height, width=geom.width)
    steps = settings.steps or loaded.default_steps
    default_tau = loaded.schedule_defaults.tau  # the rule's calibrated τ (whatever policy the profile names)
    taus = (default_tau,) + tuple(t for t in settings.taus if t != default_tau)
    variants = [dict(key="fine", kind="fine", tau=None, default_tau=False, model=loaded)]
    if run_adapted:
        variants += [dict(key=f"adapted@{t:g}", kind="adapted", tau=t, default_tau=t == default_tau, model=loaded)
                     for t in taus]
    profile = loaded.schedule_defaults
    specs = ((policy_spec(profile),) if profile.policy != "ddit" else ()) + settings.policies
    pol_kind, pol_model = ("adapted", loaded) if run_adapted else ("training-free", None)
    specs = tuple(dict.fromkeys(policy_spec(parse_policy(p, profile)) for p in specs))
    if settings.training_free or not run_adapted:
        tf = training_free(loaded)
        pol_model = pol_model or tf
    variants += [dict(key=f"{pol_kind}@{p}", kind=pol_kind, tau=None, policy=p, model=pol_model,
                      default_tau=profile.policy != "ddit" and p == policy_spec(profile)) for p in specs]
    if settings.training_free:
        variants += [dict(key=f"training-free@{t:g}", kind="training-free", tau=t, default_tau=t == default_tau,
                          model=tf) for t in taus]

    enc = loaded.extras.get("text_encoder")
    max_words = getattr(getattr(enc, "config", None), "max_length", None)
    vocab = getattr(getattr(enc, "config", None), "vocab", None)
    vocab = None if vocab is None else tuple(vocab)
    scenes_ = eval_scenes(settings.n_prompts, settings.split, settings.prompt_seed, max_words, settings.grades, vocab)
    if settings.split == "graded" and ((max_words or S.GRADED_MAX_WORDS) < S.GRADED_MAX_WORDS
                                       or not S.caption_words(True) <= set(vocab or S.GRADED_VOCAB)):
        notes.append(f"graded captions restricted to the model's vocabulary and {max_words} words (a model continued "
                     f"on the graded grammar reads all of them)")
    captions = [s.caption for s in scenes_]
    n, seeds = len(scenes_), settings.seeds
    all_scenes = scenes_ * len(seeds)  # image index = seed_index * n + prompt_index
    buckets = np.array([s.complexity for s in all_scenes])
    grades = np.array([s.grade for s in all_scenes])
    kw = dict(eps=settings.eps, warmup=settings.warmup)
    build_settings(loaded, prompts=captions[:1], steps=steps, **hw, **kw)  # validate steps/eps/warmup first

    total = len(seeds) * n * len(variants)
    bar = tqdm(total=total, desc="evaluate", unit="img", disable=not progress)
    for v in variants:
        v.update(images=[], coarse=[], flops=[], sizes=[], seconds=0.0)
    for seed in seeds:
        noise = initial_noise(geom, n, seed)
        for v in variants:
            m = v["model"]
            t0 = time.perf_counter()
            with TorchBackend(m.transformer) as backend:
                for lo, hi in prompt_chunks(n, settings.batch, batched=v["kind"] == "fine"):
                    gs = variant_settings(v, dict(prompts=captions[lo:hi], seed=seed, steps=steps, **hw), kw)
                    r = generate(m, backend, gs, progress=False, decode=False, latents=noise[lo:hi])
                    v["images"].append(_images(m, r.latents, geom))
                    v["coarse"] += [r.trace.coarse_fraction] * (hi - lo)
                    v["flops"] += [r.trace.flops_ratio] * (hi - lo)
                    v["sizes"] += ["".join(map(str, r.trace.sizes))] * (hi - lo)
                    bar.update(hi - lo)
            v["seconds"] += time.perf_counter() - t0
    bar.close()

    # ---- metrics ----
    side = geom.height
    ref_seed = settings.prompt_seed + REFERENCE_SEED_OFFSET
    ref_stats = reference_stats(reference_n, settings.split, ref_seed, max_words, side, settings.grades, vocab)
    real = np.stack([s.render(side) for s in all_scenes])

    def fd(feats, other=ref_stats):
        return frechet_distance(feats, other) if len(feats) >= 2 else None

    def bucket_means(values):
        values = np.asarray(values, float)
        return {b: float(values[buckets == b].mean()) for b in S.COMPLEXITIES if (buckets == b).any()}

    def by_grade(adh, coarse=None, flops=None, p=None):
        return grade_means(grades, adh, coarse_fraction=coarse, flops_ratio=flops, psnr=p)

    rows = []
    real_det = detector.detect(real)
    real_adh = adherence(real_det, all_scenes)
    rows.append(dict(key="real", kind="real", tau=None, default_tau=False, adherence=real_adh.summary(),
                     adherence_by_complexity=_by_bucket(real_adh, buckets), fd=fd(real_det.features),
                     fd_vs_fine=None, psnr=None, ssim=None, coarse_fraction=None, coarse_by_complexity=None,
                     flops_ratio=None, seconds_per_image=None, by_grade=by_grade(real_adh)))
    fine_imgs = fine_feats = None
    per_image = {}
    for v in variants:
        imgs = np.concatenate(v["images"])
        det = detector.detect(imgs)
        adh = adherence(det, all_scenes)
        if v["kind"] == "fine":
            fine_imgs, fine_feats = imgs, det.features
        p = psnr(imgs, fine_imgs) if v["kind"] != "fine" else None
        q = ssim(imgs, fine_imgs) if v["kind"] != "fine" else None
        rows.append(dict(key=v["key"], kind=v["kind"], tau=v["tau"], default_tau=v["default_tau"],
                         adherence=adh.summary(), adherence_by_complexity=_by_bucket(adh, buckets),
                         fd=fd(det.features), fd_vs_fine=fd(det.features, fine_feats) if v["kind"] != "fine" else None,
                         psnr=None if p is None else float(p.mean()), ssim=None if q is None else float(q.mean()),
                         psnr_by_complexity=None if p is None else bucket_means(p),
                         coarse_fraction=float(np.mean(v["coarse"])), coarse_by_complexity=bucket_means(v["coarse"]),
                         size_fractions=_size_fractions(v["sizes"]),
                         flops_ratio=float(np.mean(v["flops"])), seconds_per_image=v["seconds"] / len(imgs),
                         by_grade=by_grade(adh, v["coarse"], v["flops"], p)))
        obj = np.zeros(len(imgs))
        np.add.at(obj, adh.image_of_object, adh.object_ok)
        counts = np.bincount(adh.image_of_object, minlength=len(imgs))
        per_image[v["key"]] = [dict(object_accuracy=float(obj[i] / max(counts[i], 1)), sizes=v["sizes"][i],
                                    **({} if p is None else {"psnr": float(p[i]), "ssim": float(q[i])}))
                               for i in range(len(imgs))]

    fine_acc = rows[1]["adherence"]["accuracy"]
    meets = bool(fine_acc >= settings.min_base_adherence)
    if not meets:
        notes.append(f"fine-only adherence {fine_acc:.1%} is below the target {settings.min_base_adherence:.0%}")
    report = {
        "format": "ddit-eval/1", "model": loaded.name, "adapters": adapters_src, "steps": steps,
        "height": geom.height, "width": geom.width,
        "default_tau": default_tau, "taus": list(taus), "seeds": list(seeds), "n_prompts": n,
        "split": settings.split, "images_per_variant": n * len(seeds),
        "complexity_counts": {b: int((buckets == b).sum()) for b in S.COMPLEXITIES},
        "grade_counts": {str(g): int((grades == g).sum()) for g in S.GRADES if (grades == g).any()},
        "reference": {"scenes": reference_n, "seed": ref_seed},
        "base_adherence": fine_acc, "base_meets_target": meets, "notes": notes,
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(settings).items()},
        "variants": rows,
        "prompts": [{"caption": s.caption, "complexity": s.complexity, "grade": s.grade} for s in scenes_],
        "per_image": per_image,
        "seconds": time.perf_counter() - t_start,
    }
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(report, indent=1, default=_json_default))
    (out / "eval.md").write_text(markdown(report))
    _grid([real] + [np.concatenate(v["images"]) for v in variants], ["real"] + [v["key"] for v in variants],
          out / "grid.png")
    report["files"] = [str(out / "eval.json"), str(out / "eval.md"), str(out / "grid.png")]
    return report


def _size_fractions(schedules) -> dict:
    """Fraction of all steps run at each patch size, from per-image schedule strings like "1114111..."."""
    steps = "".join(schedules)
    return {k: steps.count(k) / len(steps) for k in sorted(set(steps), key=int)} if steps else {}


@lru_cache(maxsize=8)
def reference_stats(n: int, split: str, seed: int, max_words: int | None, side: int, grades=S.GRADES, words=None):
    """(mean, cov) of probe features of ``n`` rendered scenes drawn like the prompts (cached per process)."""
    from .detector import load_probe
    from .metrics import feature_stats

    scenes_ = eval_scenes(n, split, seed, max_words, grades, words)
    return feature_stats(load_probe().features(np.stack([s.render(side) for s in scenes_])))


def _by_bucket(adh, buckets) -> dict:
    return {b: adh.summary(np.flatnonzero(buckets == b))["accuracy"] for b in S.COMPLEXITIES if (buckets == b).any()}


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.bool_):
        return bool(o)
    raise TypeError(type(o))


def _f(v, fmt):
    return "–" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, fmt)


def markdown(report: dict) -> str:
    """The report's variants as a markdown table, with a header line and notes."""
    lines = [f"# ddit-export evaluate: {report['model']}",
             "",
             f"{report['n_prompts']} {report['split']} captions x {len(report['seeds'])} seed(s) = "
             f"{report['images_per_variant']} images per variant, {report['steps']} steps"
             + (f", {report['height']}x{report['width']}" if "height" in report else "") + "; complexity "
             + ", ".join(f"{k} {v}" for k, v in report["complexity_counts"].items())
             + f"; adapters: {report['adapters'] or 'none'}; default τ {report['default_tau']:g}.",
             "",
             "Adherence = prompted objects whose shape, colour and position the scene probe finds (per-attribute "
             "columns: found at the cell / right shape / right colour / right size there; bg = background). FD = "
             f"Fréchet distance of probe features to {report['reference']['scenes']} rendered scenes (the `real` row "
             "is the floor at this sample size). PSNR/SSIM against the fine-only image of the same prompt and seed. "
             "Coarse = fraction of steps at a coarse size (simple/medium/complex). FLOPs relative to fine-only. "
             "s/img = wall time per image (fine-only runs batched, DDiT one prompt at a time).",
             "",
             "| variant | adherence | pos | shape | colour | size | bg | adh. s/m/c | FD | FD vs fine | PSNR dB | "
             "SSIM | coarse | k=2/k=4 | coarse s/m/c | FLOPs | s/img |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["variants"]:
        a = r["adherence"]
        name = r["key"] + ((" (default)" if "@" in r["key"] and ":" in r["key"] else " (default τ)")
                           if r.get("default_tau") else "")
        abc = "/".join(_f(x, ".0%") for x in r["adherence_by_complexity"].values())
        cbc = "–" if r["coarse_by_complexity"] is None else "/".join(
            _f(x, ".0%") for x in r["coarse_by_complexity"].values())
        sf = r.get("size_fractions")
        k24 = "–" if not sf else f"{sf.get('2', 0):.0%}/{sf.get('4', 0):.0%}"
        lines.append(f"| {name} | {_f(a['accuracy'], '.1%')} | {_f(a['position'], '.0%')} | {_f(a['shape'], '.0%')} "
                     f"| {_f(a['colour'], '.0%')} | {_f(a['size'], '.0%')} | {_f(a['background'], '.0%')} | {abc} | "
                     f"{_f(r['fd'], '.2f')} | {_f(r['fd_vs_fine'], '.2f')} | {_f(r['psnr'], '.1f')} | "
                     f"{_f(r['ssim'], '.3f')} | {_f(r['coarse_fraction'], '.0%')} | {k24} | {cbc} | "
                     f"{_f(r['flops_ratio'], '.3f')} | {_f(r['seconds_per_image'], '.2f')} |")
    lines += grade_table(report)
    if report["notes"]:
        lines += [""] + [f"- {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


def grade_means(grades: np.ndarray, adh, **columns) -> dict:
    """Per detail grade present in ``grades`` (one per image, zoo/scenes.py ``Scene.grade``): the adherence of its
    images and the mean of each per-image column given (``None``: left out), as ``{column: {"1": ..., ...}}``."""
    gs = [g for g in S.GRADES if (grades == g).any()]
    out = {"adherence": {str(g): adh.summary(np.flatnonzero(grades == g))["accuracy"] for g in gs}}
    for k, vals in columns.items():
        if vals is not None:
            vals = np.asarray(vals, float)
            out[k] = {str(g): float(vals[grades == g].mean()) for g in gs}
    return out


def grade_lines(counts: dict, rows, name: str, columns) -> list[str]:
    """Markdown lines: per detail grade (``counts``: images per grade), one line per ``(label, by_grade)`` of
    ``rows``, one cell per ``(header, key, format)`` of ``columns`` holding the grades' values joined by "/"."""
    if not counts:
        return []
    gs = list(counts)

    def cells(d, fmt):
        return "/".join(_f((d or {}).get(g), fmt) for g in gs)

    lines = ["", f"Per detail grade {'/'.join(gs)} ({'/'.join(str(counts[g]) for g in gs)} images; grade 1 = one "
             "large shape on a flat background ... 4 = 6-8 small shapes or a fine texture):", "",
             "| " + " | ".join([name, *(c[0] for c in columns)]) + " |", "|---" * (len(columns) + 1) + "|"]
    for label, b in rows:
        lines.append("| " + " | ".join([label, *(cells((b or {}).get(k), fmt) for _, k, fmt in columns)]) + " |")
    return lines


def grade_table(report: dict) -> list[str]:
    """Markdown lines: per detail grade adherence, coarse fraction, FLOPs, PSNR of each variant."""
    return grade_lines(report.get("grade_counts") or {}, [(r["key"], r.get("by_grade")) for r in report["variants"]],
                       "variant", (("adherence", "adherence", ".0%"), ("coarse", "coarse_fraction", ".0%"),
                                   ("FLOPs", "flops_ratio", ".2f"), ("PSNR dB", "psnr", ".1f")))


def _grid(image_sets, labels, path, n=GRID_PROMPTS, scale=3):
    """One row per variant (first ``n`` images), upscaled, label-free (row order = ``labels``, saved beside)."""
    from PIL import Image

    rows = []
    for imgs in image_sets:
        x = imgs[:n]
        x = ((np.clip(x, -1, 1) + 1) * 127.5).round().astype(np.uint8).transpose(0, 2, 3, 1)
        x = np.pad(x, ((0, n - len(x)), (1, 1), (1, 1), (0, 0)), constant_values=255)
        rows.append(np.concatenate(list(x), axis=1))
    grid = np.concatenate(rows, axis=0)
    Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST).save(path)
    Path(path).with_suffix(".txt").write_text("\n".join(labels) + "\n")
