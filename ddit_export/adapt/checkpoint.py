"""Resumable runs: ``WORK/ckpt/`` (adapters, Adam moments, state.json) and the final adapters file."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import torch

from ..errors import WeightsError
from ..fsutil import replace_dir
from ..settings import AdaptSettings

RUN_FORMAT = "ddit-adapt-run/1"
CKPT, STATE = "ckpt", "state.json"
#: settings that define a run; a resume with different values is refused (budgets and logging may change)
RUN_FIELDS = ("model", "weights", "sizes", "rank", "init", "lr", "lr_warmup", "batch", "seed", "prompts_file",
              "num_prompts", "sample_steps", "height", "width", "guidance", "coarse_mix", "dtype", "schedules",
              "init_adapters", "joint", "residual", "objective")
#: what a run field added later meant in runs whose checkpoint predates it
LEGACY_FIELDS = {"schedules": "random", "init_adapters": None, "joint": [], "residual": "linear",
                 "objective": "full"}


def named_adapter_params(mp) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in mp.named_parameters() if n.startswith(("stems.", "loras."))]


def changed_run_fields(saved: dict, s: AdaptSettings) -> list[str]:
    """The run fields of ``s`` that differ from a checkpoint's ``saved`` settings."""
    now = run_settings(s)
    return [k for k in RUN_FIELDS if saved.get(k, LEGACY_FIELDS.get(k)) != now[k]]


def run_settings(s: AdaptSettings) -> dict:
    d = dataclasses.asdict(s)
    d["joint"] = [list(r) for r in s.joint]  # as JSON reads it back
    return {k: (list(d[k]) if isinstance(d[k], tuple) else d[k]) for k in RUN_FIELDS}


def save_checkpoint(work: Path, mp, opt: torch.optim.Optimizer, state: dict):
    from safetensors.torch import save_file

    tmp = work / (CKPT + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(mp.adapter_state_dict(), str(tmp / "adapters.safetensors"), metadata=mp.adapter_metadata())
    moments = {}
    for name, p in named_adapter_params(mp):
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
        for name, p in named_adapter_params(mp):
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
