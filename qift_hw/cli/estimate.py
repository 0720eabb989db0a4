"""`qift-hw estimate`: cycles, utilisation and memory traffic of a model on the PE array (W2 vs W4 vs W8)."""

from pathlib import Path
from typing import Optional

import typer

from qift_hw.cli.app import app

FORMAT_BITS = {"w2": 2, "w4": 4, "w8": 8}
PE_OF_FORMAT = {"w2": "pot_mnz", "w4": "int4", "w8": "int8"}
"""The PE each weight format needs: W2 the shift-add PoT-MNZ PE, W4/W8 a multiplier PE (INT4 activations)."""


def pe_areas(path: Path, acc_bits: int) -> dict:
    """Generic-cell and iCE40-LUT counts per PE kind from the RTL area report (qift-hw rtl area JSON)."""
    import json

    from qift_hw.core.errors import QiftError

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


def _parse_array(text: str) -> tuple[int, int]:
    from qift_hw.core.errors import QiftError

    try:
        r, c = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise QiftError(f"--array must look like 32x32 (rows x columns), got {text!r}") from None
    return r, c


def _parse_sram(text: str) -> tuple[float, float, float]:
    from qift_hw.core.errors import QiftError

    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        raise QiftError(f"--sram-kib must be one number or three (act,weight,out), got {text!r}") from None
    if len(vals) == 1:
        vals *= 3
    if len(vals) != 3:
        raise QiftError(f"--sram-kib must be one number or three (act,weight,out), got {text!r}")
    return vals[0], vals[1], vals[2]


def run_estimate(model: str, array: str, dataflow: str, seq: int, context: Optional[int], clock_mhz: float,
                 dram_gbps: float, sram_kib: str, formats: str, lm_head_bits: int, attention: bool,
                 area_json: Optional[Path] = None) -> dict:
    """All reports (every weight format, prefill and decode) as one JSON-ready dict."""
    from qift_hw.core.errors import QiftError
    from qift_hw.sim.cycle_model import HwConfig, model_report
    from qift_hw.core.shapes import load_model_shape

    R, C = _parse_array(array)
    a_kib, w_kib, o_kib = _parse_sram(sram_kib)
    hw = HwConfig(rows=R, cols=C, dataflow=dataflow, clock_mhz=clock_mhz, dram_gbps=dram_gbps,
                  act_sram_kib=a_kib, w_sram_kib=w_kib, out_sram_kib=o_kib)
    shape = load_model_shape(model)
    fmts = [f.strip().lower() for f in formats.split(",") if f.strip()]
    bad = [f for f in fmts if f not in FORMAT_BITS]
    if bad or not fmts:
        raise QiftError(f"--formats takes a comma list of {', '.join(FORMAT_BITS)}, got {formats!r}")
    reports = {}
    for f in fmts:
        for phase in ("prefill", "decode"):
            reports[f"{f}_{phase}"] = model_report(shape, hw, FORMAT_BITS[f], phase, seq, context, lm_head_bits,
                                                   attention)
    result = {"model": shape.name, "array": f"{R}x{C}", "dataflow": dataflow, "seq": seq,
              "context": seq if context is None else context, "reports": reports}
    if area_json is not None:
        areas = pe_areas(area_json, hw.acc_bits)
        result["pe_area"] = {"source": str(area_json), "per_format": {}}
        for f in fmts:
            a = areas.get(PE_OF_FORMAT[f])
            if a is None:
                raise QiftError(f"{area_json} has no {PE_OF_FORMAT[f]} PE at {hw.acc_bits} accumulator bits")
            result["pe_area"]["per_format"][f] = {"pe": PE_OF_FORMAT[f], **a,
                                                  "array_generic_cells": a["generic_cells"] * R * C}
    return result


def _print(result: dict, console) -> None:
    from rich.table import Table

    first = next(iter(result["reports"].values()))
    fmt0 = next(iter(result["reports"])).split("_")[0]
    t = Table(title=f"{result['model']} on {result['array']} {result['dataflow'].upper()}: one decoder layer, "
                    f"{fmt0.upper()} (prefill {result['seq']} tokens | decode 1 token)")
    for col in ("layer", "M", "K", "N", "x", "compute cyc", "DRAM cyc", "util", "DRAM KB", "decode cyc",
                "decode DRAM cyc", "decode util"):
        t.add_column(col, justify="left" if col == "layer" else "right")
    dec = result["reports"][f"{fmt0}_decode"]["rows"]
    for r, d in zip(first["rows"], dec):
        t.add_row(r["name"], str(r["M"]), str(r["K"]), str(r["N"]), str(r["count"]), f"{r['compute_cycles']:,}",
                  f"{r['dram_cycles']:,}", f"{r['util']:.1%}",
                  f"{(r['dram_read_bytes'] + r['dram_write_bytes']) / 1e3:,.1f}", f"{d['compute_cycles']:,}",
                  f"{d['dram_cycles']:,}", f"{d['util']:.1%}")
    console.print(t)
    s = Table(title="Totals per pass over the whole model (time = max(compute, DRAM) per row)")
    area = result.get("pe_area", {}).get("per_format", {})
    cols = ["weights", "phase", "tokens", "cycles", "ms", "tokens/s", "PE util", "DRAM MB/token", "memory-bound rows"]
    if area:
        cols += ["array cells (generic)", "tokens/s per M cells"]
    for col in cols:
        s.add_column(col, justify="left" if col in ("weights", "phase") else "right")
    for key, rep in result["reports"].items():
        tot = rep["totals"]
        f, phase = key.split("_")
        cells = [f.upper(), phase, str(tot["tokens"]), f"{tot['cycles']:,}", f"{tot['seconds'] * 1e3:.3f}",
                 f"{tot['tokens_per_s']:,.1f}", f"{tot['pe_util']:.1%}", f"{tot['dram_bytes_per_token'] / 1e6:.3f}",
                 str(tot["memory_bound_rows"])]
        if area:
            ac = area[f]["array_generic_cells"]
            cells += [f"{ac:,}", f"{tot['tokens_per_s'] / (ac / 1e6):,.1f}"]
        s.add_row(*cells)
    console.print(s)


@app.command("estimate")
def estimate_cmd(
    model: str = typer.Option("smollm2", "--model", help="smollm2, llama2-7b, llama3-8b, or a path to a HF config.json."),
    array: str = typer.Option("32x32", "--array", help="PE array size, rows x columns."),
    dataflow: str = typer.Option("ws", "--dataflow", help="ws (weight-stationary) or os (output-stationary)."),
    seq: int = typer.Option(512, "--seq", help="Prefill length S (tokens)."),
    context: Optional[int] = typer.Option(None, "--context", help="Decode: tokens already in the KV cache (default S)."),
    clock_mhz: float = typer.Option(1000.0, "--clock-mhz", help="Array clock in MHz."),
    dram_gbps: float = typer.Option(16.0, "--dram-gbps", help="DRAM bandwidth in GB/s."),
    sram_kib: str = typer.Option("256", "--sram-kib", help="SRAM KiB: one value for all, or act,weight,out."),
    formats: str = typer.Option("w2,w4,w8", "--formats", help="Weight formats to compare (w2 = PoT-MNZ 2-bit)."),
    lm_head_bits: int = typer.Option(8, "--lm-head-bits", help="Weight bits for lm_head (0 leaves it out)."),
    attention: bool = typer.Option(True, "--attention/--no-attention", help="Count attention (INT4 x INT4, KV4)."),
    area_json: Optional[Path] = typer.Option(None, "--area-json", help="PE areas from `qift-hw rtl area` (JSON) to add array cell counts."),
    out: Optional[Path] = typer.Option(None, "--out", help="JSON output (default estimate_<model>_<array>_<dataflow>.json)."),
) -> None:
    """Per-layer cycles, utilisation, SRAM and DRAM traffic, and model totals (tokens/s, bytes/token)."""
    from rich.console import Console

    from qift_hw.core.io import write_json

    result = run_estimate(model, array, dataflow, seq, context, clock_mhz, dram_gbps, sram_kib, formats,
                          lm_head_bits, attention, area_json)
    console = Console(width=max(Console().width, 140))
    _print(result, console)
    path = out or Path(f"estimate_{Path(model).stem if '/' in model else model}_{result['array']}_{dataflow}.json")
    write_json(path, result)
    console.print(f"wrote {path}")
