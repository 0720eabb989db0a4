"""Shared plumbing of the cocotb benches: reading the stimulus the runner wrote, clocking, writing the summary."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge

from qift_hw.core.io import write_text

PERIOD_NS = 10


def stimulus() -> tuple[Path, dict, dict]:
    """(bench folder, config, arrays) written by qift_hw.verify.simulate.run_bench."""
    folder = Path(os.environ["QIFT_BENCH_DIR"])
    config = json.loads((folder / "config.json").read_text())
    with np.load(folder / "arrays.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return folder, config, arrays


def write_summary(folder: Path, summary: dict) -> None:
    """Write summary.json for the runner (atomically: temp file, then rename)."""
    write_text(folder / "summary.json", json.dumps(summary))


async def start(dut, inputs: list[str]) -> None:
    """Start the clock, hold reset for two cycles with every input at 0, and stop just after a falling edge."""
    Clock(dut.clk, PERIOD_NS, unit="ns").start()
    dut.rst.value = 1
    for name in inputs:
        getattr(dut, name).value = 0
    await FallingEdge(dut.clk)
    await FallingEdge(dut.clk)
    dut.rst.value = 0
