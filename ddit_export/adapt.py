"""Self-distillation of the coarse-size adapters (``ddit-export adapt``).

Teacher: the frozen model at the fine size (``size=1``, the untouched trunk). Student: the same
:class:`~ddit_export.models.flux.MultiPatchFlux` at every coarse size k of ``--sizes``; only
``adapter_parameters()`` (stems + LoRA) train, the trunk is shared, frozen and never written. Loss per size:
``MSE(v_student(z_t, k), v_teacher(z_t, 1))``; the sizes' losses are summed, so every step trains every size on
the same batch.

No data set is needed. The training states z_t are the model's own sampling trajectories: the fine-only Euler
sampler runs on prompts (flux-mini and other pixel models: captions of :func:`ddit_export.zoo.scenes.make_batch`;
any model: ``--prompts FILE``, one prompt a line) and every step's latent, timestep and teacher velocity are
cached in ``WORK/trajectories/`` (safetensors). ``--coarse-mix F`` samples a fraction F of the trajectories
with random coarse steps (training-free adapters) after the warm-up, so the student also sees the slightly
off-trajectory states that follow a coarse step; the teacher velocity is always the fine model's at that state.
Because the teacher is cached, one training step is one student forward/backward per coarse size.

Run it (``--minutes`` and ``--steps`` are totals over resumed runs; training time only, sampling excluded)::

    ddit-export adapt --model flux-mini --minutes 20 --lr 5e-3 --threads auto   # writes the model folder's adapters
    ddit-export adapt --model my-pixel-folder --steps 2000 --rank 8 --prompts prompts.txt

FLUX.1-dev on a GPU (bf16 trunk; adapter weights and Adam moments stay fp32 under autocast)::

    ddit-export adapt --model flux --weights /models/FLUX.1-dev --device cuda --dtype bf16 \\
        --prompts prompts.txt --batch 4 --lr 1e-4 --minutes 240 --work runs/adapt-flux --eval-images 4
    ddit-export generate --model flux --weights /models/FLUX.1-dev --adapters runs/adapt-flux/ddit_adapters.safetensors

On flux-mini (width 128) 200-step probes put the useful learning rate at 3e-3..1e-2 (3e-2 diverges; 1e-3 is
3x slower) and found rank 8 and rank 32 equal; the new stems do most of the early work (at k=4 a coarse token
packs 192 values into 128 dims). For a 12B FLUX.1-dev start at lr 1e-4, as the paper's video runs did.

Each cached FLUX state at 1024x1024 is ~1 MB (latent + teacher velocity, 4096 tokens x 64 channels, bf16), so
200 prompts x 50 steps is ~10 GB on disk and in host memory; T5 encodings of the prompts are cached in host
memory (4 MB each). FLUX's default output goes to ``WORK/ddit_adapters.safetensors`` (pass ``--out`` to put it
into ``DIR/transformer/`` where ``load_model`` finds it by itself).

``WORK`` (default ``runs/adapt-<model>``) holds ``trajectories/``, ``loss.csv`` (per-size training loss),
``eval.csv`` (per-size loss on held-out trajectories at every checkpoint), ``quality.csv`` (PSNR of DDiT
generations against fine-only, before and after) and ``ckpt/`` (``adapters.safetensors``, ``optim.safetensors``
with the Adam moments, ``state.json`` with step, time and settings). A checkpoint is written every
``--ckpt-minutes``, at the end and on Ctrl-C/SIGTERM; re-running the same command resumes. Batches are a pure
function of (seed, step), so with a step budget a resumed run ends bit-identical to an uninterrupted one; with a
time budget the learning-rate decay follows wall time and is not reproducible. The final adapters are written
atomically (temp file + rename) only when the budget is complete.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import math
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .errors import ConfigError, VocabularyError, WeightsError
from .fsutil import replace_dir
from .settings import AdapterSettings, AdaptSettings

RUN_FORMAT = "ddit-adapt-run/1"
TRAJ_FORMAT = "ddit-trajectories/1"
CKPT, STATE, TRAJ = "ckpt", "state.json", "trajectories"
CHUNK = 16  # trajectories sampled together (one shard, one noise seed, one schedule)
#: settings that define a run; a resume with different values is refused (budgets and logging may change)
RUN_FIELDS = ("model", "weights", "sizes", "rank", "init", "lr", "lr_warmup", "batch", "seed", "prompts_file",
              "num_prompts", "sample_steps", "height", "width", "guidance", "coarse_mix", "dtype")


# ---- model ---------------------------------------------------------------------------------------------------
def model_folder(s: AdaptSettings) -> Path | None:
    """The weights folder of ``s.model`` (None for the random presets)."""
    from .models.registry import PACKAGE_WEIGHTS, RANDOM_PRESETS

    if s.model == "flux":
        return Path(s.weights) if s.weights else None
    if s.weights:
        return Path(s.weights)
    if s.model == "flux-mini":
        return PACKAGE_WEIGHTS / "flux-mini"
    if s.model in RANDOM_PRESETS:
        return None
    return Path(s.model)


def default_work(s: AdaptSettings) -> Path:
    name = Path(s.model).name if s.model not in ("flux",) else "flux"
    return Path("runs") / f"adapt-{name}"


def default_out(s: AdaptSettings, work: Path) -> Path:
    """Pixel-model folders: the folder's own adapters file (what ``load_model`` picks up); otherwise WORK."""
    from .models.flux import ADAPTER_FILE
    from .models.registry import PIXEL_META

    folder = model_folder(s)
    if s.model != "flux" and folder is not None and (folder / PIXEL_META).is_file():
        return folder / "transformer" / ADAPTER_FILE
    return work / ADAPTER_FILE


def fingerprint(s: AdaptSettings) -> str:
    """Cheap identity of the trunk weights: size and first/last MiB of every transformer/text-encoder file."""
    folder = model_folder(s)
    if folder is None:
        return f"preset:{s.model}"
    h = hashlib.sha256()
    files = sorted(p for sub in ("transformer", "text_encoder", "text_encoder_2") if (folder / sub).is_dir()
                   for p in (folder / sub).iterdir() if p.is_file() and not p.name.startswith("ddit_adapters"))
    for p in files:
        size = p.stat().st_size
        h.update(f"{p.parent.name}/{p.name}:{size}".encode())
        with open(p, "rb") as f:
            h.update(f.read(1 << 20))
            if size > 2 << 20:
                f.seek(-(1 << 20), 2)
                h.update(f.read())
    return h.hexdigest()[:16]


def load_student(s: AdaptSettings, device=None):
    """The model with *fresh* adapters of ``s`` (an adapters file already in the folder is ignored)."""
    from .models.flux import MultiPatchFlux
    from .models.registry import load_model

    device = device or s.device
    adapter = AdapterSettings(rank=s.rank, init=s.init)
    loaded = load_model(s.model, s.weights, sizes=s.sizes, adapter=adapter, dtype=s.torch_dtype, device=device)
    old = loaded.transformer
    for hnd in old._hooks:  # detach the loader's adapters (they may come from a previous run's file)
        hnd.remove()
    torch.manual_seed(s.seed)
    mp = MultiPatchFlux(old.trunk, sizes=s.sizes, adapter=adapter).to(device=device)
    if s.dtype != "fp32":  # fp32 master weights for what trains; the trunk stays in s.dtype (autocast)
        mp.stems.float()
        mp.loras.float()
    mp.trunk.requires_grad_(False)
    for p in mp.adapter_parameters():
        p.requires_grad_(True)
    loaded.transformer = mp.eval()
    text = loaded.extras.get("text_encoder")
    if text is not None:
        text.requires_grad_(False)
    return loaded


def _no_cudnn_attention(device):
    """Training on CUDA: keep SDPA off the cuDNN backend, whose backward returned NaN gradients for the
    embeddings here (torch 2.11 + CUDA 13 on an H200, bf16, 88 and 40 tokens); flash, mem-efficient and math
    agree with each other and with CPU."""
    if torch.device(device).type != "cuda":
        return contextlib.nullcontext()
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # older torch: no cuDNN attention either
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def _autocast(s: AdaptSettings, device):
    if s.dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=s.torch_dtype)


# ---- prompts -------------------------------------------------------------------------------------------------
def scene_prompts(n: int, seed: int, max_words: int | None = None) -> list[str]:
    """``n`` captions of the procedural scene grammar (train split), at most ``max_words`` words each."""
    from .zoo import scenes

    rng = np.random.default_rng([seed, 0xADA])
    out: list[str] = []
    while len(out) < n:
        _, caps, _ = scenes.make_batch(rng, max(8, n - len(out)), "train", side=8)
        out += [c for c in caps if max_words is None or len(c.split()) <= max_words]
    return out[:n]


def read_prompts(path: str | Path) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"prompts file not found: {p}")
    prompts = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
    prompts = [ln for ln in prompts if ln and not ln.startswith("#")]
    if not prompts:
        raise ConfigError(f"prompts file {p} has no prompts")
    return prompts


def check_vocabulary(loaded, prompts: list[str], source: str):
    """Pixel models: every word must be known; the error names the unknown words and their lines."""
    text = loaded.extras.get("text_encoder")
    if text is None:
        return
    from .models.text import tokenize, words_of

    vocab, max_len = set(text.config.vocab), text.config.max_length
    unknown: dict[str, list[int]] = {}
    for i, prompt in enumerate(prompts):
        try:
            words = words_of(prompt)
        except VocabularyError as e:
            raise VocabularyError(f"{source}, line {i + 1}: {e}") from None
        for w in words:
            if w not in vocab:
                unknown.setdefault(w, []).append(i + 1)
    if unknown:
        lines = sorted({n for v in unknown.values() for n in v})
        shown = ", ".join(map(str, lines[:5])) + (" ..." if len(lines) > 5 else "")
        raise VocabularyError(f"{source}, line(s) {shown}: words not in the model's vocabulary: "
                              f"{', '.join(sorted(unknown)[:20])}")
    for i, prompt in enumerate(prompts):
        try:
            tokenize(text.config.vocab, max_len, [prompt])
        except VocabularyError as e:
            raise VocabularyError(f"{source}, line {i + 1}: {e}") from None


def training_prompts(s: AdaptSettings, loaded) -> tuple[list[str], list[str]]:
    """(train prompts, eval prompts). Eval: fresh scene captions, or the file's first prompts with other seeds."""
    if s.prompts_file:
        prompts = read_prompts(s.prompts_file)
        check_vocabulary(loaded, prompts, str(s.prompts_file))
        if s.num_prompts:
            prompts = prompts[: s.num_prompts]
        return prompts, prompts[: max(1, min(16, len(prompts)))]
    text = loaded.extras.get("text_encoder")
    if text is None:
        raise ConfigError(f"--model {s.model} needs --prompts FILE (one prompt a line): the scene captions are "
                          f"for the pixel models")
    max_words = text.config.max_length
    train = scene_prompts(s.num_prompts or 512, s.seed, max_words)
    evals = scene_prompts(16, s.seed + 7919, max_words)
    try:
        check_vocabulary(loaded, train[:64] + evals, "scene captions")
    except VocabularyError as e:
        raise ConfigError(f"{e}; give --prompts FILE with words this model knows") from None
    return train, evals


@dataclass
class PromptBank:
    """Every prompt's conditioning, encoded once (host memory), gathered per batch."""

    states: torch.Tensor  # (P, L, D)
    pooled: torch.Tensor  # (P, D')
    txt_ids: torch.Tensor  # (L, 3)

    @classmethod
    def encode(cls, loaded, prompts: list[str], chunk: int = 64) -> "PromptBank":
        states, pooled, ids = [], [], None
        for i in range(0, len(prompts), chunk):
            c = loaded.encode(prompts[i:i + chunk])
            states.append(c.states.detach().cpu())
            pooled.append(c.pooled.detach().cpu())
            ids = c.txt_ids.detach().cpu()
        return cls(torch.cat(states), torch.cat(pooled), ids)

    def take(self, idx: torch.Tensor, device):
        from .models.registry import Conditioning

        return Conditioning(self.states[idx].to(device), self.pooled[idx].to(device), self.txt_ids.to(device))


# ---- trajectories --------------------------------------------------------------------------------------------
@dataclass
class Trajectories:
    """Cached training states: latent z_t, timestep t, prompt index, teacher velocity v(z_t, 1)."""

    latents: torch.Tensor  # (S, N, C)
    velocity: torch.Tensor  # (S, N, C)
    timestep: torch.Tensor  # (S,) float32, in [0, 1] (what the transformer takes)
    prompt: torch.Tensor  # (S,) int64
    step: torch.Tensor  # (S,) int64, step of the sampler
    coarse: torch.Tensor  # (S,) bool: state of a trajectory that took coarse steps

    def __len__(self):
        return self.latents.shape[0]

    @classmethod
    def cat(cls, parts: list[dict]) -> "Trajectories":
        return cls(*(torch.cat([p[k] for p in parts]) for k in ("latents", "velocity", "timestep", "prompt",
                                                                   "step", "coarse")))


def mixed_schedule(steps: int, coarse_sizes: list[int], rng: np.random.Generator, warmup: int = 3) -> list[int]:
    """A random schedule: fine for ``warmup`` steps and the last one, else coarse (random size) with p = 1/2."""
    return [int(rng.choice(coarse_sizes)) if warmup <= i < steps - 1 and rng.random() < 0.5 else 1
            for i in range(steps)]


@torch.no_grad()
def sample_chunk(loaded, bank: PromptBank, prompt_idx: list[int], noise_seed: int, steps: int, geom, guidance,
                 schedule: list[int], amp) -> dict:
    """Run the sampler on ``prompt_idx`` (fine-only, or ``schedule``); every step's state and teacher velocity."""
    from .models.patching import image_ids
    from .runtime.generate import flux_timesteps, initial_noise

    mp = loaded.transformer
    device = mp.device
    b = len(prompt_idx)
    cond = bank.take(torch.tensor(prompt_idx), device)
    x = initial_noise(geom, b, noise_seed, device).to(mp.dtype)
    g = None if guidance is None else torch.full((b,), guidance, device=device, dtype=mp.dtype)
    ids = image_ids(geom.grid, dtype=mp.dtype, device=device)
    sched = flux_timesteps(loaded.scheduler_config, steps, geom.tokens(1))
    lat, vel, ts = [], [], []
    for i, t in enumerate(sched.timesteps):
        tt = (t / 1000).expand(b).to(device=device, dtype=mp.dtype)

        def run(k):
            with amp:
                return mp(x, cond.states, cond.pooled, tt, ids, cond.txt_ids, g, size=k, grid=geom.grid)

        v_teacher = run(1)
        v = v_teacher if schedule[i] == 1 else run(schedule[i])
        lat.append(x.cpu())
        vel.append(v_teacher.to(x.dtype).cpu())
        ts.append(float(t / 1000))
        x = sched.step(v.to(x.dtype), t, x, return_dict=False)[0]
    n = len(ts)
    return {"latents": torch.stack(lat).flatten(0, 1).contiguous(),
            "velocity": torch.stack(vel).flatten(0, 1).contiguous(),
            "timestep": torch.tensor(ts, dtype=torch.float32).repeat_interleave(b),
            "prompt": torch.tensor(prompt_idx, dtype=torch.int64).repeat(n),
            "step": torch.arange(n, dtype=torch.int64).repeat_interleave(b),
            "coarse": torch.full((n * b,), any(k > 1 for k in schedule), dtype=torch.bool)}


def build_trajectories(loaded, s: AdaptSettings, bank: PromptBank, n_prompts: int, folder: Path, key: dict,
                       tag: str, mix: float, log, stop: dict, progress: bool) -> Trajectories | None:
    """Sample (or reuse from ``folder``) the trajectories of prompts 0..n_prompts-1 of ``bank``.

    Returns None when stopped by a signal (finished shards stay cached)."""
    from safetensors.torch import load_file, save_file
    from tqdm import tqdm

    folder.mkdir(parents=True, exist_ok=True)
    geom = loaded.geometry(s.height, s.width)
    steps = s.sample_steps or loaded.default_steps
    guidance = s.guidance if loaded.guidance_embeds else None
    coarse_sizes = [k for k in s.sizes if k > 1 and geom.available(k)]
    meta = json.dumps(key, sort_keys=True)
    rng = np.random.default_rng([s.seed, 0x7A, len(tag)])
    chunks = [list(range(i, min(i + CHUNK, n_prompts))) for i in range(0, n_prompts, CHUNK)]
    plans = [mixed_schedule(steps, coarse_sizes, rng) if rng.random() < mix else [1] * steps for _ in chunks]
    parts, todo = [], 0
    amp = _autocast(s, loaded.transformer.device)
    bar = tqdm(total=len(chunks), desc=f"sampling {tag} trajectories", disable=not progress, leave=False,
               file=sys.stderr, mininterval=5.0)
    try:
        for c, (idx, plan) in enumerate(zip(chunks, plans)):
            path = folder / f"{tag}_{c:05d}.safetensors"
            part = None
            if path.is_file():
                try:
                    from safetensors import safe_open

                    with safe_open(str(path), "pt") as f:
                        ok = (f.metadata() or {}).get("key") == meta
                    part = load_file(str(path)) if ok else None
                except Exception:  # a damaged cache shard is re-sampled
                    part = None
            if part is None:
                if stop["flag"]:
                    return None
                todo += 1
                part = sample_chunk(loaded, bank, idx, s.seed * 1_000_003 + c + (0 if tag == "train" else 1 << 20),
                                    steps, geom, guidance, plan, amp)
                tmp = path.with_suffix(".tmp")
                save_file(part, str(tmp), metadata={"format": TRAJ_FORMAT, "key": meta,
                                                    "schedule": ",".join(map(str, plan))})
                tmp.replace(path)
            parts.append(part)
            bar.update(1)
    finally:
        bar.close()
    if todo:
        log(f"sampled {todo} of {len(chunks)} {tag} chunks ({n_prompts} prompts x {steps} steps)")
    return Trajectories.cat(parts)


# ---- training ------------------------------------------------------------------------------------------------
def lr_at(s: AdaptSettings, step: int, progress: float, decay_frac: float = 0.3, min_frac: float = 0.05) -> float:
    """Linear warm-up, constant, cosine decay over the last ``decay_frac`` of the budget (step or time)."""
    warm = min(1.0, (step + 1) / max(1, s.lr_warmup))
    start = 1 - decay_frac
    if progress <= start:
        return s.lr * warm
    t = min(1.0, (progress - start) / decay_frac)
    return s.lr * warm * (min_frac + (1 - min_frac) * 0.5 * (1 + math.cos(math.pi * t)))


def batch_indices(s: AdaptSettings, step: int, n: int) -> torch.Tensor:
    """The states of ``step``'s batch: a function of (seed, step) only, so resumes replay exactly."""
    g = torch.Generator().manual_seed(s.seed * 1_000_003 + step)
    return torch.randint(n, (s.batch,), generator=g)


def distill_losses(loaded, data: Trajectories, bank: PromptBank, idx: torch.Tensor, sizes, grid, guidance,
                   amp) -> dict[int, torch.Tensor]:
    """MSE(v_student(z_t, k), v_teacher(z_t, 1)) for every coarse size k, on the states ``idx``."""
    from .models.patching import image_ids

    mp = loaded.transformer
    device = mp.device
    x = data.latents[idx].to(device=device, dtype=mp.dtype)
    target = data.velocity[idx].to(device=device, dtype=torch.float32)
    t = data.timestep[idx].to(device=device, dtype=mp.dtype)
    cond = bank.take(data.prompt[idx], device)
    g = None if guidance is None else torch.full((len(idx),), guidance, device=device, dtype=mp.dtype)
    ids = image_ids(grid, dtype=mp.dtype, device=device)
    out = {}
    for k in sizes:
        with amp, _no_cudnn_attention(device):
            v = mp(x, cond.states, cond.pooled, t, ids, cond.txt_ids, g, size=k, grid=grid)
        out[k] = torch.mean((v.float() - target) ** 2)
    return out


@torch.no_grad()
def eval_losses(loaded, data: Trajectories, bank: PromptBank, sizes, grid, guidance, amp, batch: int = 64,
                limit: int = 512) -> dict[int, float]:
    """Mean distillation loss per size over (a fixed subset of) ``data``."""
    n = len(data)
    sel = torch.arange(n) if n <= limit else torch.linspace(0, n - 1, limit).round().long()
    tot = {k: 0.0 for k in sizes}
    for i in range(0, len(sel), batch):
        idx = sel[i:i + batch]
        for k, v in distill_losses(loaded, data, bank, idx, sizes, grid, guidance, amp).items():
            tot[k] += float(v) * len(idx)
    return {k: v / len(sel) for k, v in tot.items()}


def _named_adapter_params(mp) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in mp.named_parameters() if n.startswith(("stems.", "loras."))]


def _run_settings(s: AdaptSettings) -> dict:
    d = dataclasses.asdict(s)
    return {k: (list(d[k]) if isinstance(d[k], tuple) else d[k]) for k in RUN_FIELDS}


def save_checkpoint(work: Path, mp, opt: torch.optim.Optimizer, state: dict):
    from safetensors.torch import save_file

    tmp = work / (CKPT + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(mp.adapter_state_dict(), str(tmp / "adapters.safetensors"), metadata=mp.adapter_metadata())
    moments = {}
    for name, p in _named_adapter_params(mp):
        st = opt.state.get(p, {})
        if st:
            moments[f"exp_avg.{name}"] = st["exp_avg"].detach().contiguous().cpu()
            moments[f"exp_avg_sq.{name}"] = st["exp_avg_sq"].detach().contiguous().cpu()
    save_file(moments, str(tmp / "optim.safetensors"))
    (tmp / STATE).write_text(json.dumps(state, indent=2))
    replace_dir(tmp, work / CKPT, owned=lambda d: (d / STATE).is_file())


def read_checkpoint_state(work: Path) -> dict | None:
    """``ckpt/state.json`` of ``work``, None if there is no checkpoint; WeightsError if it is unreadable."""
    ck = work / CKPT
    if not ck.exists():
        return None
    try:
        state = json.loads((ck / STATE).read_text())
        if state.get("format") != RUN_FORMAT or not isinstance(state.get("step"), int):
            raise ValueError(f"not a {RUN_FORMAT} state")
        return state
    except (OSError, ValueError) as e:
        raise WeightsError(f"checkpoint {ck} is corrupt ({_one_line(e)}); delete {ck} to start over") from None


def load_checkpoint(work: Path, mp, opt: torch.optim.Optimizer, state: dict):
    from safetensors.torch import load_file

    ck = work / CKPT
    try:
        mp.load_adapter_state_dict(load_file(str(ck / "adapters.safetensors")), source=str(ck))
        moments = load_file(str(ck / "optim.safetensors"))
        for name, p in _named_adapter_params(mp):
            if f"exp_avg.{name}" in moments:
                opt.state[p] = {"step": torch.tensor(float(state["step"])),
                                "exp_avg": moments[f"exp_avg.{name}"].to(p.device, p.dtype),
                                "exp_avg_sq": moments[f"exp_avg_sq.{name}"].to(p.device, p.dtype)}
    except Exception as e:  # safetensors / shape errors: one line, with what to do
        raise WeightsError(f"checkpoint {ck} is corrupt ({_one_line(e)}); delete {ck} to start over") from None


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


def write_adapters(mp, path: Path, extra: dict) -> Path:
    """The final adapters, atomically: temp file in the same folder, then rename."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    meta = dict(mp.adapter_metadata())
    meta["adapt"] = json.dumps(extra, sort_keys=True)
    save_file(mp.adapter_state_dict(), str(tmp), metadata=meta)
    tmp.replace(path)
    return path


# ---- quality: DDiT against fine-only -------------------------------------------------------------------------
def quality_schedules(steps: int, sizes, windows=("any",)) -> dict[str, dict]:
    """Schedules the run reports: static alternation (~45% coarse) per coarse size, and the rule at 2 taus."""
    out = {}
    for k in sizes:
        if k > 1:
            out[f"static-alt-k{k}"] = {"static": tuple(k if i >= 3 and i % 2 and i < steps - 1 else 1
                                                       for i in range(steps))}
    for window in windows:
        for tau in (0.005, 0.01):
            out[f"rule-tau{tau:g}" + ("" if window == "any" else f"-{window}")] = {"tau": tau, "window": window}
    return out


@torch.no_grad()
def compare_to_fine(loaded, prompts: list[str], steps: int, sizes, seed: int = 0, height=None, width=None,
                    guidance: float = 3.5, amp=None) -> dict[str, dict]:
    """Mean PSNR (dB, 8-bit images) of DDiT generations against fine-only from the same noise (prompt i: seed
    + i), and the coarse fraction. Static schedules run batched; the rule runs one prompt at a time (its
    decisions are per prompt)."""
    from .runtime.backends.torch import TorchBackend
    from .runtime.generate import generate
    from .settings import GenerateSettings

    base = loaded.schedule_defaults
    windows = ("any", "same-size") if hasattr(base, "window") else ("any",)
    scheds = quality_schedules(steps, sizes, windows)
    res = {name: {"psnr": [], "coarse": []} for name in scheds}
    from .runtime.generate import initial_noise

    geom = loaded.geometry(height, width)
    noise = torch.cat([initial_noise(geom, 1, seed + i) for i in range(len(prompts))])
    common = dict(prompts=tuple(prompts), seed=seed, steps=steps, height=height, width=width, guidance=guidance)

    def psnr(ref, img):
        mse = ((np.asarray(ref, np.float64) - np.asarray(img, np.float64)) ** 2).mean()
        return 99.0 if mse == 0 else 10 * math.log10(255**2 / mse)

    with TorchBackend(loaded.transformer) as backend, (amp or contextlib.nullcontext()):
        # fine-only and the static schedules: the whole batch at once (one decision per step anyway)
        ref = generate(loaded, backend, GenerateSettings(**common, static=(1,) * steps), progress=False,
                       latents=noise).images
        for name, sc in scheds.items():
            if "static" in sc:
                r = generate(loaded, backend, GenerateSettings(**common, static=sc["static"]), progress=False,
                             latents=noise)
                res[name] = {"psnr": [psnr(a, b) for a, b in zip(ref, r.images)], "coarse": [r.trace.coarse_fraction]}
        # the rule decides per prompt: one prompt at a time, from the same noise
        for i, p in enumerate(prompts):
            one = dict(common, prompts=(p,), seed=seed + i)
            for name, sc in scheds.items():
                if "static" in sc:
                    continue
                extra = {"window": sc["window"]} if hasattr(base, "window") else {}
                gs = GenerateSettings(**one, schedule=dataclasses.replace(base, policy="ddit", tau=sc["tau"],
                                                                          **extra))
                r = generate(loaded, backend, gs, progress=False, latents=noise[i:i + 1])
                res[name]["psnr"].append(psnr(ref[i], r.images[0]))
                res[name]["coarse"].append(r.trace.coarse_fraction)
    return {n: {"psnr": float(np.mean(v["psnr"])), "coarse": float(np.mean(v["coarse"]))} for n, v in res.items()}


def _log_quality(work: Path, step: int, label: str, q: dict, log):
    new = not (work / "quality.csv").exists()
    with open(work / "quality.csv", "a") as f:
        if new:
            f.write("step,adapters,schedule,psnr_db,coarse_fraction\n")
        for name, v in q.items():
            f.write(f"{step},{label},{name},{v['psnr']:.2f},{v['coarse']:.3f}\n")
    log(f"PSNR vs fine-only ({label} adapters, step {step}): " +
        ", ".join(f"{n} {v['psnr']:.2f} dB @ {v['coarse']:.0%} coarse" for n, v in q.items()))


# ---- the run -------------------------------------------------------------------------------------------------
@dataclass
class AdaptResult:
    state: dict  # step, elapsed_s, losses, stopped_by_signal, out (None unless the budget completed)
    loaded: object = field(repr=False, default=None)  # the LoadedModel with the trained adapters


def _stderr(msg: str):
    print(msg, file=sys.stderr, flush=True)


def adapt(s: AdaptSettings, *, progress: bool = True, log: Callable[[str], None] = _stderr,
          callback: Callable[[int, dict], bool | None] | None = None, auto_threads: bool = False) -> AdaptResult:
    """Train (or resume) the coarse-size adapters of ``s.model``; ``callback(step, losses)`` returning True
    stops the run as a signal would (checkpoint, no final output). ``auto_threads``: pick 1 or 2 intra-op
    threads by timing, as the base training does (:class:`ddit_export.zoo.train.ThreadTuner`)."""
    from tqdm import tqdm

    work = Path(s.work) if s.work else default_work(s)
    prev_threads = torch.get_num_threads()
    if s.threads:
        torch.set_num_threads(s.threads)
    tuner = None
    if auto_threads:  # sampling and evaluation run on 1 thread: 2 threads stall badly on a shared CPU
        from .zoo.train import ThreadTuner

        tuner = ThreadTuner()
        torch.set_num_threads(1)
    stop = {"flag": False}

    def on_signal(signum, frame):
        if stop["flag"]:  # a second Ctrl-C during trajectory sampling: give up at once
            raise KeyboardInterrupt
        stop["flag"] = True
        log(f"\n{signal.Signals(signum).name}: stopping after this step and writing a checkpoint")

    handlers = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            handlers[sig] = signal.signal(sig, on_signal)
    except ValueError:  # not the main thread: no signal handling, KeyboardInterrupt still checkpoints
        pass
    try:
        return _adapt(s, work, progress, log, callback, stop, tqdm, tuner)
    finally:
        for sig, h in handlers.items():
            signal.signal(sig, h)
        torch.set_num_threads(prev_threads)


def _adapt(s, work, progress, log, callback, stop, tqdm, tuner=None) -> AdaptResult:
    # ---- validate everything before the expensive parts
    from .models.registry import PRESETS

    if s.model not in PRESETS and not Path(s.model).is_dir():
        raise WeightsError(f"model folder not found: {s.model} (or a preset: {', '.join(PRESETS)})")
    prior = read_checkpoint_state(work)
    fp = fingerprint(s)
    if prior is not None:
        saved = prior.get("settings", {})
        diff = [k for k in RUN_FIELDS if saved.get(k) != _run_settings(s)[k]]
        if diff:
            shown = ", ".join(f"{k} {saved.get(k)!r} -> {_run_settings(s)[k]!r}" for k in diff[:4])
            raise ConfigError(f"{work} holds a run with other settings ({shown}); use another --work or the "
                              f"same settings to resume")
        if prior.get("fingerprint") != fp:
            raise ConfigError(f"the weights of {s.model} changed since {work} was started; use a fresh --work")
    loaded = load_student(s)
    mp = loaded.transformer
    geom = loaded.geometry(s.height, s.width)
    coarse = [k for k in s.sizes if k > 1 and geom.available(k)]
    if not coarse:
        raise ConfigError(f"none of the coarse sizes {[k for k in s.sizes if k > 1]} divides the token grid "
                          f"{geom.grid}")
    train_prompts, eval_prompts = training_prompts(s, loaded)
    out = Path(s.out) if s.out else default_out(s, work)
    work.mkdir(parents=True, exist_ok=True)
    if prior is None:  # logs of a run stopped before its first checkpoint would repeat its first rows
        for name in ("loss.csv", "eval.csv", "quality.csv"):
            (work / name).unlink(missing_ok=True)
    steps_per_traj = s.sample_steps or loaded.default_steps
    guidance = s.guidance if loaded.guidance_embeds else None
    amp = _autocast(s, mp.device)
    log(f"adapt {loaded.name}: sizes {list(s.sizes)} (training {coarse}), rank {s.rank}, init {s.init}, "
        f"{sum(p.numel() for p in mp.adapter_parameters()) / 1e6:.2f} M adapter parameters, "
        f"{len(train_prompts)} prompts x {steps_per_traj} steps, work {work}, out {out}")

    # ---- data
    t_data = time.time()
    bank = PromptBank.encode(loaded, train_prompts + eval_prompts)
    key = {"fingerprint": fp, "steps": steps_per_traj, "grid": list(geom.grid), "seed": s.seed,
           "guidance": guidance, "prompts": hashlib.sha256("\n".join(train_prompts + eval_prompts).encode())
           .hexdigest()[:16], "mix": s.coarse_mix}
    if s.coarse_mix > 0:  # mixed trajectories take coarse steps with the fresh adapters
        key.update(sizes=list(s.sizes), init=s.init, rank=s.rank)
    folder = work / TRAJ
    held = None
    try:
        data = build_trajectories(loaded, s, bank, len(train_prompts), folder, key, "train", s.coarse_mix, log,
                                  stop, progress)
        if data is not None:
            held = _held_out(loaded, s, bank, train_prompts, eval_prompts, folder, key, log, stop, progress)
    except KeyboardInterrupt:
        data = None
    if data is None or held is None:
        log(f"stopped while sampling trajectories; finished chunks are cached in {folder}")
        return AdaptResult({"step": 0, "stopped_by_signal": True, "out": None}, loaded)
    log(f"{len(data)} training states ({int(data.coarse.sum())} from coarse-step trajectories), "
        f"{len(held)} held-out states, {time.time() - t_data:.0f} s")

    # ---- optimiser, resume
    named = _named_adapter_params(mp)
    params = [p for _, p in named]
    opt = torch.optim.AdamW(params, lr=s.lr, betas=(0.9, 0.99), weight_decay=0.0)
    clip_groups = [[p for n, p in named if n.split(".")[1] == str(k)] for k in coarse]
    state = {"step": 0, "elapsed_s": 0.0}
    if prior is not None:
        load_checkpoint(work, mp, opt, prior)
        state = prior
        log(f"resuming from {work / CKPT} at step {state['step']}")
    step, t_prev = int(state["step"]), float(state["elapsed_s"])
    if prior is None and s.eval_images:
        q = compare_to_fine(loaded, eval_prompts[: s.eval_images], steps_per_traj, s.sizes, 10_000,
                            s.height, s.width, s.guidance, amp)
        _log_quality(work, 0, "init", q, log)
    if prior is None:
        _log_eval(work, 0, 0.0, eval_losses(loaded, held, bank, coarse, geom.grid, guidance, amp), log)

    loss_path = work / "loss.csv"
    _truncate_log(loss_path, step)
    _truncate_log(work / "eval.csv", step)
    loss_log = open(loss_path, "a")
    if loss_log.tell() == 0:
        loss_log.write("step," + ",".join(f"loss_{k}" for k in coarse) + ",lr,elapsed_s,s_per_step,threads\n")
    budget = None if s.minutes is None else s.minutes * 60
    t0 = time.time()
    last_ckpt = t0
    last = {}

    def elapsed():
        return t_prev + time.time() - t0

    def frac():
        p = 0.0 if s.steps is None else step / s.steps
        return max(p, 0.0 if budget is None else elapsed() / budget)

    def checkpoint():
        st = {"format": RUN_FORMAT, "step": step, "elapsed_s": elapsed(), "settings": _run_settings(s),
              "fingerprint": fp, "losses": {str(k): v for k, v in last.items()},
              "rng": {"batches": "torch.Generator().manual_seed(seed * 1000003 + step)", "seed": s.seed}}
        save_checkpoint(work, mp, opt, st)
        return st

    def done():
        return (s.steps is not None and step >= s.steps) or (budget is not None and elapsed() >= budget)

    mp.train()
    bar = tqdm(total=s.steps, initial=step, disable=not progress, mininterval=5.0, dynamic_ncols=True,
               file=sys.stderr, desc="adapt")
    try:
        try:
            while not stop["flag"] and not done():
                if tuner is not None:
                    tuner.before_step()
                ts = time.time()
                lr = lr_at(s, step, frac())
                for g in opt.param_groups:
                    g["lr"] = lr
                idx = batch_indices(s, step, len(data))
                losses = distill_losses(loaded, data, bank, idx, coarse, geom.grid, guidance, amp)
                loss = sum(losses.values())
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss is {loss.item()} at step {step}; try a lower --lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                for group in clip_groups:  # per size: one size's spike does not shrink the other's step
                    torch.nn.utils.clip_grad_norm_(group, s.grad_clip)
                opt.step()
                step += 1
                last = {k: float(v.detach()) for k, v in losses.items()}
                dt = time.time() - ts
                if tuner is not None:
                    tuner.after_step(dt)
                loss_log.write(f"{step}," + ",".join(f"{last[k]:.6f}" for k in coarse) +
                               f",{lr:.3e},{elapsed():.1f},{dt:.3f},{torch.get_num_threads()}\n")
                bar.update(1)
                bar.set_postfix({f"k{k}": f"{v:.4f}" for k, v in last.items()} | {"lr": f"{lr:.1e}"},
                                refresh=False)
                if step % 20 == 0:
                    loss_log.flush()
                if callback is not None and callback(step, last):
                    stop["flag"] = True
                if time.time() - last_ckpt > s.ckpt_minutes * 60 and not stop["flag"] and not done():
                    loss_log.flush()
                    st = checkpoint()
                    mp.eval()
                    _log_eval(work, step, st["elapsed_s"],
                              eval_losses(loaded, held, bank, coarse, geom.grid, guidance, amp), log, quiet=True)
                    mp.train()
                    last_ckpt = time.time()
        except KeyboardInterrupt:  # only when no signal handler could be installed
            stop["flag"] = True
        loss_log.flush()
        state = checkpoint()
    finally:
        bar.close()
        loss_log.close()
        mp.eval()
    if tuner is not None:
        torch.set_num_threads(1)
    state["stopped_by_signal"] = stop["flag"]
    state["out"] = None
    if stop["flag"]:
        log(f"stopped at step {step}; checkpoint in {work / CKPT} - run the same command again to resume")
        return AdaptResult(state, loaded)
    ev = eval_losses(loaded, held, bank, coarse, geom.grid, guidance, amp)
    _log_eval(work, step, state["elapsed_s"], ev, log)
    if s.eval_images:
        q = compare_to_fine(loaded, eval_prompts[: s.eval_images], steps_per_traj, s.sizes, 10_000,
                            s.height, s.width, s.guidance, amp)
        _log_quality(work, step, "adapted", q, log)
        state["quality"] = q
    extra = {"steps": step, "elapsed_s": round(state["elapsed_s"], 1), "fingerprint": fp,
             "eval_loss": {str(k): round(v, 6) for k, v in ev.items()}, "prompts": len(train_prompts),
             "coarse_mix": s.coarse_mix, "lr": s.lr, "batch": s.batch}
    state["out"] = str(write_adapters(mp, out, extra))
    state["eval_loss"] = {str(k): v for k, v in ev.items()}
    log(f"wrote {out} after {step} steps ({state['elapsed_s'] / 60:.1f} min)")
    return AdaptResult(state, loaded)


def _held_out(loaded, s, bank, train_prompts, eval_prompts, folder, key, log, stop, progress):
    """Trajectories of the eval prompts (bank rows after the training prompts), fine-only."""
    n0 = len(train_prompts)
    sub = PromptBank(bank.states[n0:], bank.pooled[n0:], bank.txt_ids)
    data = build_trajectories(loaded, s, sub, len(eval_prompts), folder, key, "eval", 0.0, log, stop, progress)
    return data if data is None else dataclasses.replace(data, prompt=data.prompt + n0)


def _log_eval(work: Path, step: int, elapsed: float, ev: dict, log, quiet: bool = False):
    new = not (work / "eval.csv").exists()
    with open(work / "eval.csv", "a") as f:
        if new:
            f.write("step,elapsed_s," + ",".join(f"eval_loss_{k}" for k in ev) + "\n")
        f.write(f"{step},{elapsed:.1f}," + ",".join(f"{v:.6f}" for v in ev.values()) + "\n")
    if not quiet:
        log(f"held-out distillation loss at step {step}: " + ", ".join(f"k={k} {v:.5f}" for k, v in ev.items()))


def _truncate_log(path: Path, step: int):
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


__all__ = ["adapt", "AdaptResult", "AdaptSettings", "compare_to_fine", "scene_prompts"]
