"""Small file-system helpers shared by the build, training and adaptation steps.

Two promises: nothing the user made is ever deleted or moved (a folder is replaced only when ``owned`` says it is
ours), and a step killed half way leaves no clutter a later run cannot clean (temporary names carry the pid).
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path

from .errors import DDiTError


class OutputError(DDiTError):
    """An output cannot be written: the folder is read-only, the disk is full, the path is taken."""


def write_failure(path, e: OSError) -> OutputError:
    """A one-line OutputError for an OSError met while writing ``path``."""
    reason = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
              errno.EACCES: "permission denied", errno.EPERM: "permission denied",
              errno.EROFS: "read-only file system"}.get(e.errno, e.strerror or str(e))
    return OutputError(f"cannot write {path}: {reason}")


def check_writable(path, *, overwrite: bool = True, make_folders: bool = True, flag: str = "--overwrite") -> Path:
    """Before any work, refuse (OutputError, one line) an output file that cannot be written: ``path`` is a folder,
    exists while ``overwrite`` is false (``flag`` names the option that allows it), or lies in a folder that is
    missing (with ``make_folders`` false) or cannot be made or written. Creates nothing; returns ``path``."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a folder")
    if not overwrite and (path.exists() or path.is_symlink()):
        raise OutputError(f"{path} exists; it is left untouched: choose another path, or give {flag} to replace it")
    folder = path.parent
    if not folder.is_dir():
        if not make_folders:
            raise OutputError(f"cannot write {path}: folder {folder} does not exist")
        while not folder.exists() and not folder.is_symlink() and folder != folder.parent:
            folder = folder.parent  # the nearest existing ancestor: the missing folders are made inside it
        if not folder.is_dir():
            raise OutputError(f"cannot write {path}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {path}: permission denied")
    return path


def is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def check_replaceable(dest: Path, owned, what: str):
    """Refuse (OutputError) a ``dest`` that is a file, or a folder that is neither empty nor ``owned(dest)``."""
    dest = Path(dest)
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        raise OutputError(f"{dest} exists and is not a folder; choose another output path for the {what}")
    if dest.is_dir() and not is_empty_dir(dest) and not owned(dest):
        raise OutputError(f"{dest} is a folder that is not a {what}; it is left untouched: choose another output "
                          f"path, or move it away yourself")


def replace_dir(tmp: Path, dest: Path, owned):
    """Put the complete folder ``tmp`` in place of ``dest``: only a moment passes between the two renames, and an
    existing ``dest`` is removed only after ``tmp`` has taken its name. ``dest`` must be absent, an empty folder,
    or a folder ``owned(dest)`` recognises as one this package wrote; anything else raises OutputError."""
    check_replaceable(dest, owned, "folder this step writes")
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        dest.rename(old)
    try:
        tmp.rename(dest)
    except BaseException:  # a signal or an error between the two renames: put the old folder back
        if old is not None and not dest.exists():
            old.rename(dest)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def temp_dir_for(dest: Path) -> Path:
    """A new private temporary sibling of ``dest`` whose name carries this process's pid (see remove_stale)."""
    return Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-{os.getpid()}-", dir=dest.parent))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _pid_of(name: str, marker: str) -> int | None:
    rest = name.split(marker, 1)[1] if marker in name else ""
    head = rest.split("-", 1)[0]
    return int(head) if head.isdigit() else None


def remove_stale(dest: Path, owned) -> list[Path]:
    """Clean up after killed runs that wrote ``dest``: remove ``.NAME.tmp-PID-*`` folders of dead pids, and put a
    ``.NAME.old-PID`` folder (a run killed between its two renames) back in place when ``dest`` is missing.
    Returns the removed folders."""
    dest = Path(dest)
    removed = []
    if not dest.parent.is_dir():
        return removed
    for p in sorted(dest.parent.glob(f".{dest.name}.tmp-*")):
        pid = _pid_of(p.name, ".tmp-")
        if p.is_dir() and pid is not None and pid != os.getpid() and not pid_alive(pid):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    for p in sorted(dest.parent.glob(f".{dest.name}.old-*")):
        pid = _pid_of(p.name, ".old-")
        if not p.is_dir() or pid is None or pid == os.getpid() or pid_alive(pid) or not owned(p):
            continue
        if not dest.exists():
            p.rename(dest)
        else:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


@contextlib.contextmanager
def sigterm_as_exit():
    """Within the block SIGTERM raises SystemExit(143), so ``finally``/``except BaseException`` clean-ups run as
    they do for Ctrl-C. Only the main thread can set signal handlers; elsewhere the block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def write_file_atomic(path: Path, write):
    """Call ``write(tmp_path)`` on a temporary sibling of ``path`` and rename it into place; on any failure the
    temporary file is removed and ``path`` is untouched (no 0-byte file on a full disk). OSError -> OutputError."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise write_failure(path, e) from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_files_atomic(writes) -> list[Path]:
    """All or nothing: ``writes`` is a sequence of ``(path, write)``; each ``write(tmp_path)`` fills a temporary
    sibling of its ``path`` first, and only when every one succeeded are they renamed into place. A failed write
    removes every temporary file and touches no ``path``; a failed rename (rare: same folder) removes the paths
    this call had already put in place. OSError -> OutputError. Returns the paths."""
    staged = []  # (tmp, path)
    try:
        for path, write in writes:
            path = Path(path)
            tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}-{len(staged)}{path.suffix}")
            staged.append((tmp, path))
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                write(tmp)
            except OSError as e:
                raise write_failure(path, e) from None
    except BaseException:
        for tmp, _ in staged:
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise
    done = []
    try:
        for tmp, path in staged:
            try:
                os.replace(tmp, path)
            except OSError as e:
                raise write_failure(path, e) from None
            done.append(path)
    except BaseException:
        for p in done + [tmp for tmp, _ in staged]:
            with contextlib.suppress(OSError):
                p.unlink()
        raise
    return [path for _, path in staged]
