"""Small file-system helpers shared by the build, training and adaptation steps."""
from __future__ import annotations

import os
import shutil
from pathlib import Path


def replace_dir(tmp: Path, dest: Path):
    """Put the complete folder ``tmp`` in place of ``dest``: only a moment passes between the two renames, and an
    existing ``dest`` is removed only after ``tmp`` has taken its name."""
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        dest.rename(old)
    tmp.rename(dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
