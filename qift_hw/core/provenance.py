"""Where a result came from: the record every results file carries, and tables written as CSV beside it.

``provenance()`` is the one place that builds the record (package version, git commit, library versions, machine,
exact command), so every command and script that writes results says the same things in the same keys.
"""

from __future__ import annotations

import csv
import io
import os
import platform
import shlex
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Iterable, Sequence

from qift_hw.core.io import write_text

LIBRARIES = ("torch", "transformers", "numba", "amaranth")
"""Libraries whose versions change results (numerics, kernels, generated Verilog)."""

PACKAGE = "qift-hw"
REPO_ROOT = Path(__file__).resolve().parents[2]


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    if shutil.which("git") is None or not (REPO_ROOT / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_commit() -> dict:
    """The checkout's commit and whether tracked files differ from it ("unknown" outside a checkout)."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": "unknown", "dirty": None}
    return {"commit": commit, "dirty": bool(_git("status", "--porcelain", "--untracked-files=no"))}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpus() -> list[str]:
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available():
                return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        except Exception:  # a broken CUDA install: fall through to nvidia-smi
            pass
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    return [s.strip() for s in out.stdout.splitlines() if s.strip()] if out.returncode == 0 else []


def machine() -> dict:
    """Platform, Python, CPU (name and logical cores) and GPUs (names; empty when there are none)."""
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu": _cpu_name(),
            "cpu_count": os.cpu_count(), "gpus": _gpus()}


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command as typed: ``qift-hw ...`` for the CLI (console script or ``python -m qift_hw``), else
    ``python <script> ...``."""
    argv = list(sys.argv if argv is None else argv)
    if not argv:
        return ""
    prog = Path(argv[0]).name
    if prog == "qift-hw" or Path(argv[0]).parent.name == "qift_hw":
        return shlex.join(["qift-hw", *argv[1:]])
    return shlex.join(["python", *argv])


def provenance(command: str | None = None) -> dict:
    """The record a results file carries: package version, git commit, library versions, machine, command, time."""
    return {"package": PACKAGE, "version": _version(PACKAGE) or "unknown", **git_commit(),
            "libraries": {lib: _version(lib) for lib in LIBRARIES}, "machine": machine(),
            "command": command_line() if command is None else command,
            "utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def provenance_line(record: dict) -> str:
    """The record in one Markdown line, for reports that people read."""
    libs = ", ".join(f"{k} {v}" for k, v in record["libraries"].items() if v)
    dirty = " (modified)" if record.get("dirty") else ""
    m = record["machine"]
    gpus = ", ".join(m["gpus"]) or "no GPU"
    return (f"Provenance: {record['package']} {record['version']}, commit {record['commit'][:12]}{dirty}; {libs}; "
            f"{m['cpu']} ({m['cpu_count']} cores), {gpus}, {m['platform']}; {record['utc']}")


def csv_text(rows: Iterable[dict], columns: Sequence[str] | None = None) -> str:
    """Rows of scalars as CSV text; columns default to the keys in first-seen order (lists joined by spaces)."""
    rows = list(rows)
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: " ".join(map(str, v)) if isinstance(v, (list, tuple)) else v for k, v in r.items()})
    return buf.getvalue()


def write_csv(path: str | os.PathLike, rows: Iterable[dict], columns: Sequence[str] | None = None) -> Path:
    """Write a table as CSV (atomically)."""
    return write_text(path, csv_text(rows, columns))
