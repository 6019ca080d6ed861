"""The model being adapted: where its weights live, their fingerprint, and the student with fresh adapters."""
from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import torch

from ..settings import AdapterSettings, AdaptSettings


def model_folder(s: AdaptSettings) -> Path | None:
    """The weights folder of ``s.model`` (None for the random presets)."""
    from ..models.registry import RANDOM_PRESETS, ZOO_MODELS, zoo_folder

    if s.model in ("flux", "wan"):
        return Path(s.weights) if s.weights else None
    if s.weights:
        return Path(s.weights)
    if s.model in ZOO_MODELS:
        return zoo_folder(s.model)
    if s.model in RANDOM_PRESETS:
        return None
    return Path(s.model)


def default_work(s: AdaptSettings) -> Path:
    name = Path(s.model).name
    return Path("runs") / f"adapt-{name}"


def default_out(s: AdaptSettings, work: Path) -> Path:
    """Pixel-model folders: the folder's own adapters file (what ``load_model`` picks up); otherwise WORK."""
    from ..models.flux import ADAPTER_FILE
    from ..models.registry import PIXEL_META

    folder = model_folder(s)
    if s.model not in ("flux", "wan") and folder is not None and (folder / PIXEL_META).is_file():
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
    """The model with *fresh* adapters of ``s`` (an adapters file already in the folder is ignored), or those of
    ``s.init_adapters`` (same sizes and rank) to continue from."""
    from ..models.registry import load_model

    device = device or s.device
    adapter = AdapterSettings(rank=s.rank, init=s.init, residual=s.residual)
    loaded = load_model(s.model, s.weights, sizes=s.sizes, adapter=adapter, dtype=s.torch_dtype, device=device)
    old = loaded.transformer
    for hnd in old._hooks:  # detach the loader's adapters (they may come from a previous run's file)
        hnd.remove()
    torch.manual_seed(s.seed)
    mp = type(old)(old.trunk, sizes=s.sizes, adapter=adapter).to(device=device)  # MultiPatchFlux or MultiPatchWan
    if s.init_adapters:
        load_init_adapters(mp, s.init_adapters)
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


def load_init_adapters(mp, path):
    """Load an adapters file into ``mp``'s fresh adapters; its sizes, rank and init must be the run's."""
    from ..errors import WeightsError
    from ..models.flux import read_adapters

    try:
        p, meta, state = read_adapters(path)
    except WeightsError as e:
        raise WeightsError(f"--init-adapters: {e}") from None
    want = mp.adapter_metadata()
    got = {k: meta.get(k) for k in ("sizes", "rank", "init")}
    if got != {k: want[k] for k in got}:
        raise WeightsError(f"--init-adapters: {p} has sizes {got['sizes']}, rank {got['rank']}, init {got['init']}; "
                           f"this run has sizes {want['sizes']}, rank {want['rank']}, init {want['init']}")
    if meta.get("residual", "linear") == "linear" and want.get("residual") == "sigma":
        # a "linear" file continued with the sigma residual: that one starts at zero (as in a fresh run)
        own = mp.adapter_state_dict()
        state = {**{k: v for k, v in own.items() if ".residual_sigma." in k}, **state}
    mp.load_adapter_state_dict(state, source=str(p))


def autocast_for(s: AdaptSettings, device):
    if s.dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=s.torch_dtype)


def velocity(mp, x, cond, t01, ids, guidance, size: int, grid):
    """The multi-patch model's velocity at ``size`` in its own contract: FLUX takes sigma (``t01``) and position
    ids; Wan takes the timestep in 0..1000 and the text states only."""
    if getattr(mp, "family", "flux") == "wan":
        return mp(x, t01 * 1000, cond.states, size=size, grid=grid)
    return mp(x, cond.states, cond.pooled, t01, ids, cond.txt_ids, guidance, size=size, grid=grid)


def position_ids(geom, dtype, device):
    """FLUX's image position ids for the fine grid; None for video (the Wan wrapper makes its own RoPE)."""
    if getattr(geom, "is_video", False):
        return None
    from ..models.patching import image_ids

    return image_ids(geom.grid, dtype=dtype, device=device)
