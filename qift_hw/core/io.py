"""Atomic file writes and folder locks.

Every output goes to a temporary file in the same folder (`.NAME.qift-tmp-PID-XXXX`), then replaces the target
in one step. A temporary left behind by a killed process is recognised by its name and removed by the next
write to the same target. `folder_lock` makes one process at a time the writer of a folder.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from qift_hw.core.errors import QiftError

TMP_MARK = ".qift-tmp-"
LOCK_NAME = ".qift.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of `path` left by processes that no longer run (a SIGKILL during a write)."""
    path = Path(path)
    gone = []
    if not path.parent.is_dir():
        return gone
    for tmp in path.parent.glob(f".{path.name}{TMP_MARK}*"):
        pid = tmp.name[len(f".{path.name}{TMP_MARK}"):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            gone.append(tmp)
    return gone


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` in one step, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TMP_MARK}{os.getpid()}-", suffix=path.suffix or ".tmp",
                               dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write JSON atomically (numpy scalars and arrays converted)."""

    def default(o: Any) -> Any:
        if hasattr(o, "tolist"):
            return o.tolist()
        if hasattr(o, "item"):
            return o.item()
        return str(o)

    return write_text(path, json.dumps(obj, indent=2, default=default) + "\n")


def save_figure(fig: Any, path: str | os.PathLike, **kw: Any) -> Path:
    """Save a matplotlib figure atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", **kw)
    return Path(path)


@contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive lock on `folder` (created if missing) for the block; QiftError at once if another process
    holds it. The lock is released when the block ends or the process dies (even by SIGKILL)."""
    fd = lock_folder(folder)
    try:
        yield Path(folder)
    finally:
        os.close(fd)


def lock_folder(folder: str | os.PathLike) -> int:
    """Take `folder_lock`'s lock and return its file descriptor (the lock lasts until it is closed)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise QiftError(f"{folder} is a file, not a folder; pass a folder path")
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise QiftError(f"{folder} is in use by another running qift-hw process; wait for it to finish or use "
                        "another folder") from None
    return fd
