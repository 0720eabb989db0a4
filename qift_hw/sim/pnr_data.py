"""Place-and-route figures for the accelerator model: Fmax and LUTs per PE kind and per array, read from
``rtl_pnr.json`` (written by ``sw/rtl_pnr.py``; ECP5 FPGA figures, not ASIC).

The model layer cannot import ``qift_hw.rtl``, so this reads the JSON file only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from qift_hw.core.errors import QiftError


@dataclass(frozen=True)
class PnrFigure:
    """One placed-and-routed design: median Fmax over the placer seeds (min/max beside it), LUTs, FFs, DSPs."""

    kind: str
    acc_bits: int
    size: str
    dsp: bool
    fmax_mhz: float | None
    fmax_min: float | None
    fmax_max: float | None
    luts: int
    ffs: int
    dsps: int
    fits: bool


def _rows(path: str | Path) -> list[dict]:
    try:
        return json.loads(Path(path).read_text())["rows"]
    except (OSError, ValueError, KeyError) as exc:
        raise QiftError(f"cannot read place-and-route figures from {path}: {exc}; run "
                        "`python sw/rtl_pnr.py` first") from None


def _figure(r: dict) -> PnrFigure:
    return PnrFigure(kind=r["kind"], acc_bits=r["acc_bits"], size=r.get("size", ""), dsp=r["dsp"],
                     fmax_mhz=r.get("fmax_median"), fmax_min=r.get("fmax_min"), fmax_max=r.get("fmax_max"),
                     luts=r["dut_luts"], ffs=r["dut_ff"], dsps=r["dut_mult18"], fits=r["fits"])


def pe_figures(path: str | Path, acc_bits: int, dsp: bool = False) -> dict[str, PnrFigure]:
    """Stand-alone PE figures by kind at ``acc_bits``; for the multiplier kinds, the run with the multiplier in
    DSP blocks if ``dsp`` else in LUTs (the 2-bit kinds have no multiplier, so both mean the same run)."""
    out = {}
    for r in _rows(path):
        if r.get("what") == "pe" and r["acc_bits"] == acc_bits and (r["dsp"] == dsp or r["dut_mult18"] == 0):
            out.setdefault(r["kind"], _figure(r))
    return out


def array_figure(path: str | Path, kind: str, rows: int, cols: int, acc_bits: int, dsp: bool = False,
                 protocol: str = "v1") -> PnrFigure:
    """The WS array of ``kind`` and size rows x cols (protocol ``v1`` or ``v2``), QiftError if it was not placed."""
    what = "array" if protocol == "v1" else "array2"
    for r in _rows(path):
        if (r.get("what") == what and r["kind"] == kind and r.get("size") == f"{rows}x{cols}"
                and r["acc_bits"] == acc_bits and (r["dsp"] == dsp or r["dut_mult18"] == 0)):
            return _figure(r)
    raise QiftError(f"no place-and-route figure for a {protocol} WS {rows}x{cols} {kind} array at {acc_bits} bits "
                    f"in {path}; add it to sw/rtl_pnr.py's table")


def clock_mhz(path: str | Path, kind: str, rows: int, cols: int, acc_bits: int, dsp: bool = False,
              protocol: str = "v1") -> float:
    """The array's median post-route Fmax in MHz (what an arch file's ``clock_mhz: pnr`` would mean)."""
    fig = array_figure(path, kind, rows, cols, acc_bits, dsp, protocol)
    if not fig.fits or not fig.fmax_mhz:
        raise QiftError(f"the {rows}x{cols} {kind} array does not fit the FPGA with dsp={dsp}; use dsp=False")
    return fig.fmax_mhz
