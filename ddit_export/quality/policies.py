"""Run schedule policies against fine-only on a prompt set and score them: the measuring side of ``calibrate``,
the oracle and ``evaluate --policy``. Each prompt runs alone (a policy decides per prompt; fine-only runs the same
way, so the wall-clock ratio is fair), from the seed's noise row for that prompt."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..settings import ScheduleSettings
from ..zoo import scenes as S


def default_prompts_path() -> Path:
    """The calibration captions shipped with the package (ddit_export/calibration/prompts-flux-mini.txt): what
    ``calibrate`` reads without ``--prompts``, from any working directory."""
    return Path(__file__).resolve().parents[1] / "calibration" / "prompts-flux-mini.txt"


def read_prompts(path: str | Path) -> list[S.Scene]:
    """A calibration prompt file: one scene caption a line (``#`` comments and blank lines skipped)."""
    from .metrics import parse_caption

    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise ConfigError(f"cannot read prompts {path}: {e}") from None
    scenes_ = [parse_caption(t) for t in (ln.strip() for ln in lines) if t and not t.startswith("#")]
    if not scenes_:
        raise ConfigError(f"{path} has no prompts")
    return scenes_


class PolicyRunner:
    """Generates ``scenes`` with a model + backend under any schedule; scores images against fine-only."""

    def __init__(self, model, backend, scenes_, *, seed: int = 0, steps: int | None = None, cache=None,
                 height: int | None = None, width: int | None = None, frames: int | None = None):
        from ..runtime.generate import initial_noise

        self.model, self.backend, self.scenes, self.seed = model, backend, list(scenes_), seed
        self.steps = steps or model.default_steps
        self.geom = model.geometry(height, width) if frames is None else model.geometry(height, width, frames)
        self.height, self.width, self.frames = height, width, frames
        self.noise = initial_noise(self.geom, len(self.scenes), seed)
        self._detector = None
        self.fine_images = None
        self.cache = cache  # CacheSettings for the schedules measured (None: off); fine-only never uses it

    @property
    def detector(self):
        """The scene probe (loaded on first use: a video runner never needs it)."""
        if self._detector is None:
            from .detector import load_probe

            self._detector = load_probe()
        return self._detector

    def arrays(self, latents):
        """Final latents -> the arrays scored against fine-only: (B, 3, H, W) images in [-1, 1]."""
        from .evaluate import _images

        return _images(self.model, latents, self.geom)

    def generate(self, schedule: ScheduleSettings | None = None, static=None, *, batch: bool = False,
                 cache: bool = True) -> dict:
        """Images, per-prompt FLOP ratio / coarse fraction / sizes and loop seconds of one schedule. ``batch``: all
        prompts in one call (static schedules only; for the oracle's search, where time is not measured)."""
        from ..api import build_settings
        from ..runtime.generate import generate

        caps = [s.caption for s in self.scenes]
        chunks = [range(0, len(caps))] if batch else [range(i, i + 1) for i in range(len(caps))]
        out = dict(images=[], flops=[], coarse=[], sizes=[], seconds=0.0)
        for idx in chunks:
            lo, hi = idx[0], idx[-1] + 1
            gs = build_settings(self.model, prompts=caps[lo:hi], seed=self.seed, steps=self.steps,
                                height=self.height, width=self.width, frames=self.frames, schedule=schedule,
                                static=static,
                                cache=self.cache if cache and self.cache is not None else {"mode": "off"})
            t0 = time.perf_counter()
            r = generate(self.model, self.backend, gs, progress=False, decode=False, latents=self.noise[lo:hi])
            out["seconds"] += time.perf_counter() - t0
            out["images"].append(self.arrays(r.latents))
            out["flops"] += [r.trace.flops_ratio] * (hi - lo)
            out["coarse"] += [r.trace.coarse_fraction] * (hi - lo)
            out["sizes"] += ["".join(map(str, r.trace.sizes))] * (hi - lo)
        out["images"] = np.concatenate(out["images"])
        return out

    def fine(self, *, batch: bool = False) -> dict:
        r = self.generate(static=(1,) * self.steps, batch=batch, cache=False)
        self.fine_images = r["images"]
        return r

    def object_accuracy(self, images) -> np.ndarray:
        """Per image: the fraction of its prompted objects the scene probe finds right (adherence)."""
        from .metrics import adherence

        a = adherence(self.detector.detect(images), self.scenes)
        ok = np.zeros(len(images))
        np.add.at(ok, a.image_of_object, a.object_ok)
        return ok / np.maximum(np.bincount(a.image_of_object, minlength=len(images)), 1)

    def adherence(self, images) -> float:
        """Prompt adherence as ``evaluate`` reports it: the fraction of all prompted objects found right."""
        from .metrics import adherence

        return adherence(self.detector.detect(images), self.scenes).summary()["accuracy"]

    def score(self, images) -> dict:
        """Per-image PSNR, SSIM (vs fine-only) and object accuracy, as arrays."""
        from .metrics import psnr, ssim

        if self.fine_images is None:
            raise RuntimeError("run fine() first")
        return dict(psnr=psnr(images, self.fine_images), ssim=ssim(images, self.fine_images),
                    adherence=self.object_accuracy(images))


def step_costs(model, steps: int | None = None) -> dict:
    """FLOPs of one step at each available size over a fine step's (flops.py), for this model and prompt length."""
    from ..flops import step_flops

    geom = model.geometry()
    text = model.encode([model.default_prompt]).states.shape[1]
    cfg, rank = model.transformer_config, model.lora_rank
    fine = step_flops(cfg, geom.tokens(1), text, 1)
    return {k: step_flops(cfg, geom.tokens(1), text, k, rank) / fine for k in geom.available_sizes((1, 2, 4))}


def search_oracle(runner: PolicyRunner, budget: float, *, progress: bool = True) -> dict:
    """The per-prompt oracle over monotone ladders at ``budget`` (schedule/oracle.py), scored by PSNR vs fine-only;
    each candidate runs batched over all prompts. Returns the oracle's and the best static schedule's numbers."""
    from tqdm.auto import tqdm

    from ..schedule.oracle import ladder_family, oracle_search

    if runner.fine_images is None:
        runner.fine(batch=True)
    cands = ladder_family(runner.steps, step_costs(runner.model), budget)
    if not cands:
        raise ConfigError(f"no ladder schedule spends a FLOP budget of {budget:g}")
    bar = tqdm(total=len(cands), desc="oracle", unit="schedule", disable=not progress)
    per = {}

    def score(sizes):
        r = runner.generate(static=sizes, batch=True)
        per[sizes] = dict(runner.score(r["images"]), flops=float(np.mean(r["flops"])))
        bar.update(1)
        return per[sizes]["psnr"]

    res = oracle_search(cands, score)
    bar.close()
    idx = np.arange(len(runner.scenes))

    def summary(pick):
        return {m: float(np.mean([per[res.candidates[c]][m][i] for i, c in zip(idx, pick)]))
                for m in ("psnr", "ssim", "adherence")} | {
            "flops_ratio": float(np.mean([per[res.candidates[c]]["flops"] for c in pick]))}

    static = res.best_static
    return dict(budget=budget, candidates=len(cands), oracle=summary(res.best),
                best_static=dict(summary([static] * len(idx)), sizes="".join(map(str, res.candidates[static]))),
                per_prompt=["".join(map(str, s)) for s in res.per_prompt])
