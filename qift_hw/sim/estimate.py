"""The accelerator estimate: cycle-model reports of a whole model for several weight formats, prefill and decode.

A weight format is named by its level set (the PE kind that runs it); the table below gives the short label
(W2/W4/W8) the reports are keyed by. Bits come from the level set itself (``core.levels``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from qift_hw.core.errors import QiftError
from qift_hw.core.levels import get_level_set
from qift_hw.core.shapes import ModelShape
from qift_hw.sim.cycle_model import HwConfig, model_report

FORMAT_OF_LEVELS = {"pot_mnz": "w2", "int4": "w4", "int8": "w8"}
"""Weight formats the estimate compares, by level set: W2 the shift-add PoT-MNZ PE, W4/W8 a multiplier PE
(INT4 activations); the value is the label the reports are keyed by."""

DEFAULT_LEVELS = tuple(FORMAT_OF_LEVELS)
PHASES = ("prefill", "decode")


def parse_levels(text: str) -> list[str]:
    """A comma list of level sets from ``FORMAT_OF_LEVELS`` (QiftError naming the choices otherwise)."""
    names = [s.strip().lower() for s in text.split(",") if s.strip()]
    bad = [n for n in names if n not in FORMAT_OF_LEVELS]
    if bad or not names:
        raise QiftError(f"the estimate compares the level sets {', '.join(FORMAT_OF_LEVELS)} (comma separated); "
                        f"got {text!r}")
    return names


def parse_sram_kib(text: str) -> tuple[float, float, float]:
    """SRAM sizes in KiB: one number for all three buffers, or act,weight,out."""
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        vals = []
    if len(vals) == 1:
        vals *= 3
    if len(vals) != 3:
        raise QiftError(f"--sram-kib must be one number or three (act,weight,out), got {text!r}")
    return vals[0], vals[1], vals[2]


LM_HEAD_BITS_MAX = 16
"""Widest lm_head weight the estimate counts (16: float16); 0 leaves lm_head out."""


def check_lengths(seqlen: int, context: int | None, lm_head_bits: int) -> None:
    """QiftError for lengths and widths that would give negative or empty counts: prefill ``seqlen`` >= 1 token,
    decode ``context`` >= 0 tokens, ``lm_head_bits`` 0 (left out) to `LM_HEAD_BITS_MAX`."""
    if seqlen < 1:
        raise QiftError(f"--seqlen must be at least 1 token, got {seqlen}")
    if context is not None and context < 0:
        raise QiftError(f"--context must be at least 0 tokens (the KV cache before the decoded token), got {context}")
    if not 0 <= lm_head_bits <= LM_HEAD_BITS_MAX:
        raise QiftError(f"--lm-head-bits must be 0 (leave lm_head out) to {LM_HEAD_BITS_MAX}, got {lm_head_bits}")


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


def run_estimate(shape: ModelShape, hw: HwConfig, seqlen: int, context: int | None = None,
                 levels: Sequence[str] = DEFAULT_LEVELS, lm_head_bits: int = 8, attention: bool = True,
                 area_json: str | Path | None = None) -> dict:
    """Reports of every weight format in ``levels`` at prefill (``seqlen`` tokens) and decode (one token after
    ``context``, default ``seqlen``), keyed ``<format>_<phase>``; with ``area_json``, the array's cell count per
    format. (The reports keep the cycle model's key ``seq`` for the prefill length.)"""
    for name in levels:
        if name not in FORMAT_OF_LEVELS:
            raise QiftError(f"no estimate for level set {name!r}; use {', '.join(FORMAT_OF_LEVELS)}")
    check_lengths(seqlen, context, lm_head_bits)
    reports = {}
    for name in levels:
        bits = get_level_set(name).bits
        for phase in PHASES:
            reports[f"{FORMAT_OF_LEVELS[name]}_{phase}"] = model_report(shape, hw, bits, phase, seqlen, context,
                                                                        lm_head_bits, attention)
    result = {"model": shape.name, "array": f"{hw.rows}x{hw.cols}", "dataflow": hw.dataflow, "seq": seqlen,
              "context": seqlen if context is None else context, "reports": reports}
    if area_json is not None:
        areas = pe_areas(area_json, hw.acc_bits)
        result["pe_area"] = {"source": str(area_json), "per_format": {}}
        for name in levels:
            a = areas.get(name)
            if a is None:
                raise QiftError(f"{area_json} has no {name} PE at {hw.acc_bits} accumulator bits")
            result["pe_area"]["per_format"][FORMAT_OF_LEVELS[name]] = {
                "pe": name, **a, "array_generic_cells": a["generic_cells"] * hw.rows * hw.cols}
    return result


def totals_rows(result: dict) -> list[dict]:
    """One flat row per (format, phase): the model totals, plus the array cell count when known."""
    area = result.get("pe_area", {}).get("per_format", {})
    rows = []
    for key, rep in result["reports"].items():
        fmt, phase = key.split("_")
        row = {"model": result["model"], "array": result["array"], "dataflow": result["dataflow"], "weights": fmt,
               "phase": phase, **rep["totals"]}
        if fmt in area:
            row["array_generic_cells"] = area[fmt]["array_generic_cells"]
        rows.append(row)
    return rows


def layer_rows(result: dict) -> list[dict]:
    """One flat row per (format, phase, layer row of the report)."""
    return [{"weights": key.split("_")[0], "phase": key.split("_")[1], **r}
            for key, rep in result["reports"].items() for r in rep["rows"]]
