"""PE areas from the RTL flow's results (`qift-hw rtl area` writes rtl_area.json): what the accelerator model's
array area reads. The simulator does not import the RTL; it reads the numbers the RTL flow wrote."""

from __future__ import annotations

import json
from pathlib import Path

from qift_hw.core.errors import QiftError


def pe_areas(path: str | Path, acc_bits: int) -> dict:
    """Generic-cell and iCE40-LUT counts per PE kind at ``acc_bits`` from an RTL area report (rtl_area.json)."""
    try:
        rows = json.loads(Path(path).read_text())["rows"]
    except (OSError, ValueError, KeyError) as exc:
        raise QiftError(f"cannot read PE areas from {path}: {exc}; run `qift-hw rtl area` first") from None
    out = {}
    for r in rows:
        prm = r.get("params", {})
        if r.get("what") == "pe" and prm.get("acc_bits") == acc_bits:
            out[prm["kind"]] = {"generic_cells": r["generic_cells"], "ice40_lut4": r["ice40_lut4"]}
    return out
