"""Shared pieces of the adapt tests: quiet logging, a copy of the tiny model folder, short-run settings."""
import hashlib
import shutil
from pathlib import Path

from ddit_export.models.flux import ADAPTER_FILE
from ddit_export.settings import AdaptSettings


def quiet(_msg):
    pass


def copy_model(src: Path, dest: Path) -> Path:
    out = Path(shutil.copytree(src, dest))
    (out / "transformer" / ADAPTER_FILE).unlink(missing_ok=True)
    return out


def settings(model_dir, work, **kw):
    base = dict(model=str(model_dir), work=str(work), num_prompts=8, batch=8, lr=3e-3, lr_warmup=5, eval_images=0,
                steps=12, seed=0, ckpt_minutes=60, threads=1)
    base.update(kw)
    return AdaptSettings(**base)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
