"""Verilator lint of generated Verilog."""

from __future__ import annotations

import subprocess
from pathlib import Path

from qift_hw.verify.simulate import use_simulator


def lint(path: Path, top: str) -> list[str]:
    """Verilator ``--lint-only -Wno-WIDTH`` on one generated file: the warning/error lines (empty = clean).

    WIDTH warnings are Amaranth's implicit sign extensions, expected in its output.
    """
    use_simulator("verilator")
    proc = subprocess.run(["verilator", "--lint-only", "-Wno-WIDTH", "--top-module", top, str(path)],
                          capture_output=True, text=True, timeout=600)
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("%")]
    if proc.returncode != 0 and not lines:
        lines = [f"verilator exited with {proc.returncode}"]
    return lines
