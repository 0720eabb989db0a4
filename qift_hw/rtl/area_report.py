"""The area sweep behind ``qift-hw rtl area``: PE variants and arrays of several sizes, as a table and a plot."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from qift_hw.core import formats
from qift_hw.core.io import save_figure, write_text
from qift_hw.rtl.area import AreaResult, find_yosys, product_cells, synthesise_cached, yosys_version

PE_KINDS_DEFAULT = ("pot_mnz", "mnz", "std", "int4", "int8")
ARRAY_KINDS_DEFAULT = ("pot_mnz", "int4", "int8")
ARRAY_SIZES_DEFAULT = ((2, 2), (4, 4), (8, 8))
CAVEAT = ("Cell counts from Yosys: generic = technology-independent gates and flip-flops after `synth` "
          "(hierarchy kept); iCE40 = SB_LUT4 / SB_CARRY / SB_DFF* after `synth_ice40 -noflatten`. They rank designs "
          "against each other; they are not ASIC areas (no standard-cell library, no um^2, no timing).")


def area_sweep(pe_kinds=PE_KINDS_DEFAULT, array_kinds=ARRAY_KINDS_DEFAULT, sizes=ARRAY_SIZES_DEFAULT,
               dataflows=("ws",), acc_bits: int = formats.ACC_BITS, pe_acc_bits=(formats.ACC_BITS, 16),
               yosys: str = "auto", hadamard_sizes=(), hadamard_quant: bool = True,
               cache_dir: Path | None = Path("sim_build") / "area_cache",
               progress: Callable[[str], None] | None = None) -> dict:
    """Synthesise every PE variant (at each of ``pe_acc_bits``), every (dataflow, kind, size) array with
    ``acc_bits`` and the Hadamard units of ``hadamard_sizes`` (with the INT4 quantizer too if
    ``hadamard_quant``; slow: minutes per unit); returns the report dict."""
    from qift_hw.rtl.generate import array_top, hadamard_top, pe_top

    cmd = find_yosys(yosys)
    jobs = [("pe", pe_top(k, b)) for b in pe_acc_bits for k in pe_kinds]
    jobs += [("array", array_top(df, r, c, k, acc_bits)) for df in dataflows for k in array_kinds for r, c in sizes]
    jobs += [("hadamard", hadamard_top(n, quantize=q)) for n in hadamard_sizes
             for q in ((False, True) if hadamard_quant else (False,))]
    rows = []
    t0 = time.perf_counter()
    for what, top in jobs:
        if progress:
            progress(top.name)
        res: AreaResult = synthesise_cached(top, cmd, cache_dir)
        row = {"what": what, **res.as_dict()}
        row.pop("generic_by_type")
        if what == "pe":
            row["product_cells"] = product_cells(top, cmd)
        elif what == "array":
            pes = top.params["rows"] * top.params["cols"]
            row["pes"] = pes
            row["generic_cells_per_pe"] = round(res.generic_cells / pes, 1)
            row["ice40_lut4_per_pe"] = round(res.ice40_lut4 / pes, 1)
        rows.append(row)
    return {"yosys": yosys_version(cmd), "acc_bits": acc_bits, "caveat": CAVEAT, "rows": rows,
            "seconds": round(time.perf_counter() - t0, 1)}


def markdown_table(report: dict) -> str:
    """The report as two Markdown tables (PEs, arrays), with ratios against the INT4 x INT4 PE."""
    pes = [r for r in report["rows"] if r["what"] == "pe"]
    base = {r["params"]["acc_bits"]: r for r in pes if r["params"]["kind"] == "int4"}
    out = [f"Yosys: {report['yosys']}; arrays with a {report['acc_bits']}-bit accumulator.", "", report["caveat"],
           "", "| PE | acc bits | generic cells | of which FF | product cells | vs INT4xINT4 | iCE40 LUT4 | CARRY | FF |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in pes:
        b = base.get(r["params"]["acc_bits"])
        ratio = f"{r['generic_cells'] / b['generic_cells']:.2f}x" if b else "-"
        out.append(f"| {r['params']['kind']} | {r['params']['acc_bits']} | {r['generic_cells']} | {r['generic_ff']} | "
                   f"{r['product_cells']} | {ratio} | {r['ice40_lut4']} | {r['ice40_carry']} | {r['ice40_ff']} |")
    arrays = [r for r in report["rows"] if r["what"] == "array"]
    if arrays:
        out += ["", "| array | PEs | generic cells | per PE | iCE40 LUT4 | per PE | CARRY | FF | synth s |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in arrays:
            p = r["params"]
            out.append(f"| {p['dataflow'].upper()} {p['rows']}x{p['cols']} {p['kind']} | {r['pes']} | "
                       f"{r['generic_cells']} | {r['generic_cells_per_pe']} | {r['ice40_lut4']} | "
                       f"{r['ice40_lut4_per_pe']} | {r['ice40_carry']} | {r['ice40_ff']} | {r['synth_s']} |")
    had = [r for r in report["rows"] if r["what"] == "hadamard"]
    if had:
        out += ["", "| Hadamard unit | n | latency | generic cells | of which FF | iCE40 LUT4 | CARRY | FF | synth s |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in had:
            p = r["params"]
            what = "butterfly + K stage + INT4 quantizer" if "y_bits" in p else "butterfly + K stage"
            out.append(f"| {what} | {p['n']} | {p['latency']} | {r['generic_cells']} | {r['generic_ff']} | "
                       f"{r['ice40_lut4']} | {r['ice40_carry']} | {r['ice40_ff']} | {r['synth_s']} |")
    return "\n".join(out) + "\n"


def plot(report: dict, path: Path) -> Path:
    """Bar chart of the PE variants and the growth of array area with the number of PEs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pes = [r for r in report["rows"] if r["what"] == "pe" and r["params"]["acc_bits"] == report["acc_bits"]]
    arrays = [r for r in report["rows"] if r["what"] == "array"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    ax = axes[0]
    names = [r["params"]["kind"] for r in pes]
    x = range(len(pes))
    prod = [r["product_cells"] for r in pes]
    rest = [r["generic_cells"] - r["generic_ff"] - r["product_cells"] for r in pes]
    ff = [r["generic_ff"] for r in pes]
    ax.bar(x, prod, label="product (shift/add or multiplier)", color="#c0392b")
    ax.bar(x, rest, bottom=prod, label="accumulator adder + saturation", color="#2980b9")
    ax.bar(x, ff, bottom=[a + b for a, b in zip(prod, rest)], label="flip-flops", color="#95a5a6")
    for i, r in enumerate(pes):
        ax.text(i, r["generic_cells"] + 8, f"{r['generic_cells']}\n({r['ice40_lut4']} LUT)", ha="center",
                fontsize=8)
    ax.set_xticks(list(x), names)
    ax.set_ylabel("Yosys generic cells")
    ax.set_title(f"One MAC PE ({report['acc_bits']}-bit saturating accumulator)")
    ax.set_ylim(0, max(r["generic_cells"] for r in pes) * 1.25)
    ax.legend(fontsize=8, loc="upper left")
    ax = axes[1]
    series: dict[str, list] = {}
    for r in arrays:
        p = r["params"]
        series.setdefault(f"{p['dataflow'].upper()} {p['kind']}", []).append((r["pes"], r["generic_cells"],
                                                                              r["ice40_lut4"]))
    for label, pts in series.items():
        pts.sort()
        line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"{label} (generic)")
        ax.plot([p[0] for p in pts], [p[2] for p in pts], "s--", color=line.get_color(), alpha=0.6,
                label=f"{label} (iCE40 LUT4)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("PEs in the array (R x C)")
    ax.set_ylabel("cells")
    ax.set_title("Array area vs size")
    ax.legend(fontsize=7)
    fig.text(0.5, 0.005, "Yosys cell counts, not ASIC area (no cell library, no um^2)", ha="center", fontsize=8,
             style="italic")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    save_figure(fig, path, dpi=120)
    plt.close(fig)
    return Path(path)


def write_report(report: dict, out_dir: Path) -> dict[str, Path]:
    """Write rtl_area.json, rtl_area.md and rtl_area.png under ``out_dir`` (atomically)."""
    out_dir = Path(out_dir)
    paths = {"json": out_dir / "rtl_area.json", "md": out_dir / "rtl_area.md", "png": out_dir / "rtl_area.png"}
    write_text(paths["json"], json.dumps(report, indent=1))
    write_text(paths["md"], markdown_table(report))
    plot(report, paths["png"])
    return paths
