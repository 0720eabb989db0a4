"""Options and helpers that several commands share: one name, one help text and one default per concept.

Defaults that belong to a library dataclass (QuantConfig, the architecture file's Arch) or to `core.formats` are
not repeated here: those options default to None and the command reads the library's default when it builds the config, so
`--help` stays fast (no torch import) and the value is defined once.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional, Sequence

import typer

from qift_hw.core.errors import QiftError

RUNS = Path("runs")
"""Every command's default output lives in a run folder under here (never docs/results or the current folder)."""

LEVELS_HELP = "Level set (weight format) of the PEs: pot_mnz, mnz, pm12, std, int4 or int8."
ARRAY_HELP = "PE array size, rows x columns (e.g. 32x32)."
SEQLEN_HELP = "Sequence length in tokens."
HAD_N_HELP = "Hadamard unit order n = K * 2^k."
ROTATION_SEED_HELP = "Seed of the random Hadamard rotation (QuaRot)."
CALIB_SEED_HELP = "Seed of the calibration window sampling."
STIMULUS_SEED_HELP = "Seed of the random stimulus (activations and codes)."
DEVICE_HELP = "Torch device: cpu, cuda or cuda:N (default: cuda when available)."
ACC_BITS_HELP = "Accumulator width in bits (saturating)."


def out_option(what: str) -> typer.models.OptionInfo:
    """The `--out` option: a run folder (created), default a folder under runs/ named for the settings."""
    return typer.Option(None, "--out", help=f"Run folder for {what} (default: runs/<command>/<settings>).")


def scheduler_option() -> typer.models.OptionInfo:
    return typer.Option(None, "--scheduler", help="Address of a running Dask scheduler (tcp://host:8786); "
                        "default: a local cluster.")


def workers_option() -> typer.models.OptionInfo:
    return typer.Option(None, "--workers", help="Worker processes of the local cluster.", show_default="one per core")


def no_cache_option() -> typer.models.OptionInfo:
    return typer.Option(False, "--no-cache", help="Run every point; neither read nor write the cache.")


def check_cluster(workers: Optional[int], scheduler: Optional[str]) -> None:
    """The Dask options of a grid command: --workers at least 1, and only for the local cluster."""
    if workers is not None and workers < 1:
        raise QiftError(f"--workers must be at least 1, got {workers}")
    if workers is not None and scheduler:
        raise QiftError("--workers sizes the local cluster; with --scheduler the cluster's own workers run the "
                        "points, so leave --workers out")


def interrupted_grid(cache) -> Exception:
    """The exit of a grid command stopped by Ctrl-C: how to resume, and what was kept."""
    from qift_hw.cli.exits import Interrupted

    kept = f"finished points are cached in {cache}" if cache else "nothing is kept (--no-cache)"
    return Interrupted(f"interrupted; rerun the same command to resume ({kept})")


def report_grid(run, failures: Sequence[str], paths: Sequence[Path], rows: Optional[int] = None) -> None:
    """Print a grid run's counts, notes, failures and files on stderr; exit with FAILURE when a point failed."""
    from rich.console import Console

    from qift_hw.cli.exits import FAILURE

    console = Console(stderr=True, soft_wrap=True)
    s = run.summary()
    console.print(f"{s['points']} points: {s['cached']} cached, {s['computed']} run ({s['failed']} failed) in "
                  f"{s['seconds']:.1f} s on {s['workers'] or 'no'} worker(s)" + ("" if rows is None else
                                                                                  f"; {rows} rows"), markup=False)
    for note in run.notes:
        console.print(note, markup=False)
    for line in failures:
        console.print(f"failed {line}", markup=False, highlight=False)
    console.print("wrote " + ", ".join(str(p) for p in paths), markup=False, highlight=False)
    if failures:
        raise typer.Exit(FAILURE)


def run_folder(out: Optional[Path], command: str, **settings) -> Path:
    """``out`` if given, else ``runs/<command>/<k>-<v>_...``: a folder per combination of settings, so a sweep
    never overwrites itself."""
    if out is not None:
        return out
    parts = [f"{k.replace('_', '-')}-{_slug(v)}" for k, v in settings.items() if v is not None]
    return RUNS / command / ("_".join(parts) or "default")


def _slug(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        value = f"{value:g}"
    text = str(value)
    if "/" in text or "\\" in text:
        text = Path(text).stem or Path(text).parent.name
    return re.sub(r"[^A-Za-z0-9.+:-]+", "-", text).strip("-") or "x"


def parse_list(text: str) -> list[str]:
    """A comma list, blanks dropped (QiftError when nothing is left)."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise QiftError(f"empty list {text!r}; give comma-separated values")
    return items


def parse_arrays(text: str) -> list[tuple[int, int]]:
    """One or more array sizes ``RxC``, comma separated."""
    from qift_hw.rtl.generate import parse_array_size

    return [parse_array_size(s) for s in parse_list(text)]


def parse_array(text: str) -> tuple[int, int]:
    """Exactly one array size ``RxC``."""
    sizes = parse_arrays(text)
    if len(sizes) != 1:
        raise QiftError(f"--array takes one size here (e.g. 32x32), got {text!r}")
    return sizes[0]


def parse_sram_kib(text: str) -> tuple[float, float, float]:
    """``--sram-kib``: one size in KiB for all three buffers, or act,weight,out."""
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        vals = []
    if len(vals) == 1:
        vals *= 3
    if len(vals) != 3:
        raise QiftError(f"--sram-kib must be one number or three (act,weight,out), got {text!r}")
    return vals[0], vals[1], vals[2]


def resolve_device(device: Optional[str]) -> str:
    """``device`` checked, or cuda when available, else cpu: the one `--device` default of every command."""
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise QiftError(f"unknown device {device!r}; use cpu, cuda or cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise QiftError("CUDA is not available on this machine; use --device cpu")
    return device


def acc_bits_or_default(acc_bits: Optional[int]) -> int:
    """``acc_bits`` or the project's accumulator width (`core.formats.ACC_BITS`)."""
    from qift_hw.core import formats

    return formats.ACC_BITS if acc_bits is None else acc_bits


device_option = typer.Option(None, "--device", help=DEVICE_HELP)
rotation_seed_option = typer.Option(None, "--rotation-seed", help=ROTATION_SEED_HELP,
                                    show_default="QuantConfig.rotation_seed")
stimulus_seed_option = typer.Option(0, "--seed", help=STIMULUS_SEED_HELP)
acc_bits_option = typer.Option(None, "--acc-bits", help=ACC_BITS_HELP, show_default="core.formats.ACC_BITS")


def check_at_least(flag: str, value: Optional[float], minimum: float) -> None:
    """QiftError unless ``value`` (None: not given) is at least ``minimum``."""
    if value is not None and value < minimum:
        raise QiftError(f"{flag} must be at least {minimum:g}, got {value:g}")


def _writable_parent(path: Path, flag: str) -> None:
    probe = path.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise QiftError(f"{flag} {path}: {probe} is a file, not a folder; give a path in a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise QiftError(f"{flag} {path}: cannot write in {probe}; give a path in a writable folder")


def check_out_folder(folder: Path, files: Sequence[str] = (), flag: str = "--out") -> None:
    """QiftError unless ``folder`` can take a command's output (checked before the work starts): not an existing
    file, in a writable place, and none of the ``files`` it will hold an existing folder."""
    if folder.exists() and not folder.is_dir():
        raise QiftError(f"{flag} {folder} is an existing file; give a folder (it is created when missing)")
    _writable_parent(folder / "x", flag)
    for name in files:
        if (folder / name).is_dir():
            raise QiftError(f"{flag} {folder}: {folder / name} is a folder, where the run writes a file; move it away")


def check_out_file(path: Path, flag: str) -> None:
    """QiftError unless ``path`` can be written as a file (checked before the work starts)."""
    if path.is_dir():
        raise QiftError(f"{flag} {path} is a folder; give a file name")
    _writable_parent(path, flag)
