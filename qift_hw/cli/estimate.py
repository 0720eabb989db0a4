"""`qift-hw estimate`: cycles, utilisation and memory traffic of a model on the PE array (W2 vs W4 vs W8)."""

from pathlib import Path
from typing import Optional

import typer

from qift_hw.cli.app import app
from qift_hw.cli.options import ARRAY_HELP, SEQLEN_HELP, check_out_folder, out_option, parse_array, run_folder


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
    model: str = typer.Option("smollm2", "--model", help="smollm2, llama2-7b, llama3-8b (or a shape name such as "
                              "smollm2-135m), or a path to a HF config.json."),
    array: str = typer.Option("32x32", "--array", help=ARRAY_HELP),
    dataflow: str = typer.Option("ws", "--dataflow", help="ws (weight-stationary) or os (output-stationary)."),
    seqlen: int = typer.Option(512, "--seqlen", help=f"{SEQLEN_HELP} Prefill length."),
    context: Optional[int] = typer.Option(None, "--context", help="Decode: tokens already in the KV cache (default: "
                                          "--seqlen)."),
    clock_mhz: Optional[float] = typer.Option(None, "--clock-mhz", help="Array clock in MHz.",
                                              show_default="HwConfig.clock_mhz"),
    dram_gbps: Optional[float] = typer.Option(None, "--dram-gbps", help="DRAM bandwidth in GB/s.",
                                              show_default="HwConfig.dram_gbps"),
    sram_kib: Optional[str] = typer.Option(None, "--sram-kib", help="SRAM KiB: one value for all, or act,weight,out.",
                                           show_default="HwConfig's"),
    levels: str = typer.Option("pot_mnz,int4,int8", "--levels", help="Level sets (weight formats) to compare: "
                               "pot_mnz (W2, shift-add PE), int4 (W4), int8 (W8)."),
    lm_head_bits: int = typer.Option(8, "--lm-head-bits", help="Weight bits for lm_head (0 leaves it out)."),
    attention: bool = typer.Option(True, "--attention/--no-attention", help="Count attention (INT4 x INT4, KV4)."),
    area_json: Optional[Path] = typer.Option(None, "--area-json", help="PE areas from `qift-hw rtl area` (rtl_area.json) "
                                             "to add array cell counts."),
    out: Optional[Path] = out_option("estimate_<model>_<array>_<dataflow>.json/.csv"),
) -> None:
    """Per-layer cycles, utilisation, SRAM and DRAM traffic, and model totals (tokens/s, bytes/token)."""
    from rich.console import Console

    from qift_hw.core.io import write_json
    from qift_hw.core.provenance import provenance, write_csv
    from qift_hw.core.shapes import load_model_shape
    from qift_hw.sim.cycle_model import HwConfig
    from qift_hw.sim.estimate import (check_lengths, layer_rows, parse_levels, parse_sram_kib, run_estimate,
                                      totals_rows)

    rows, cols = parse_array(array)
    given = {"clock_mhz": clock_mhz, "dram_gbps": dram_gbps}
    if sram_kib is not None:
        given.update(zip(("act_sram_kib", "w_sram_kib", "out_sram_kib"), parse_sram_kib(sram_kib)))
    hw = HwConfig(rows=rows, cols=cols, dataflow=dataflow, **{k: v for k, v in given.items() if v is not None})
    shape = load_model_shape(model)
    names = parse_levels(levels)
    check_lengths(seqlen, context, lm_head_bits)
    folder = run_folder(out, "estimate", model=model, array=f"{rows}x{cols}", dataflow=dataflow, seqlen=seqlen,
                        context=seqlen if context is None else context, clock_mhz=hw.clock_mhz,
                        dram_gbps=hw.dram_gbps, sram_kib=f"{hw.act_sram_kib:g},{hw.w_sram_kib:g},{hw.out_sram_kib:g}",
                        levels="+".join(names), lm_head_bits=lm_head_bits, attention=attention)
    stem = f"estimate_{Path(model).stem if '/' in model else model}_{rows}x{cols}_{dataflow}"
    files = (f"{stem}.json", f"{stem}.csv", f"{stem}_layers.csv")
    check_out_folder(folder, files)
    result = run_estimate(shape, hw, seqlen, context, names, lm_head_bits, attention, area_json)
    result["provenance"] = provenance()
    console = Console(width=max(Console().width, 140))
    _print(result, console)
    paths = [write_json(folder / files[0], result), write_csv(folder / files[1], totals_rows(result)),
             write_csv(folder / files[2], layer_rows(result))]
    console.print("wrote " + ", ".join(str(p) for p in paths))
