"""SCALE-Sim 3.0.0 side by side with the project's cycle models, on the GEMMs of SmolLM2-135M and LLaMA-2-7B.

For every distinct linear shape (lm_head included), M = 1, 64, 512 tokens, arrays 8x8, 32x32, 128x128, dataflows
ws and os, 8-bit words (SCALE-Sim's fixed one-byte word), one row with:

- SCALE-Sim's compute cycles and SRAM counts from its own compute classes (sw/scalesim_probe.py, run in the
  separate venv made by sw/scalesim_env.sh): the whole layer where its demand matrices are small
  (`scalesim_source` = layer), else one run per distinct fold shape summed over the folds (= folds);
- `qift_hw.sim.scalesim_compat.scalesim_compute` (asserted equal to SCALE-Sim on every row);
- the v1 closed forms (`qift_hw.sim.cycle_model`, whole M, no SRAM chunking) and the v2 closed forms
  (`qift_hw.sim.dataflow.gemm_compute`), both with M in one chunk;
- the project's whole-GEMM model (`qift_hw.sim.accelerator` on the `scalesim8` preset with the array, dataflow,
  SRAM sizes and bandwidth set; INT8 weights, one-byte outputs), with the default v2 timing and with
  `timing: scalesim`: total and stall cycles, utilisation, SRAM and DRAM bytes;
- the full SCALE-Sim tool (`python -m scalesim.scale ... -i gemm`, memory simulation, scale.cfg memories) on the
  rows whose compute cycles are at most --full-max-cycles: Total Cycles, stall cycles, overall utilisation,
  SRAM and DRAM words (= bytes). Other rows leave those columns empty.

SCALE-Sim results are cached per case under .cache/scalesim/ (rerun: seconds). Files are written only with --out.

    sw/scalesim_env.sh
    .venv/bin/python sw/scalesim_compare.py [--out docs/results/scalesim_compare] [--full-max-cycles 30000] [--markdown]
    .venv/bin/python sw/scalesim_compare.py --reference tests/data/scalesim_reference.json
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import scalesim_probe as probe

from qift_hw.core.io import write_json
from qift_hw.core.provenance import provenance, write_csv
from qift_hw.core.shapes import load_model_shape
from qift_hw.sim.accelerator import simulate
from qift_hw.sim.arch import load_arch
from qift_hw.sim.cycle_model import os_gemm_cycles, ws_gemm_cycles
from qift_hw.sim.dataflow import gemm_compute
from qift_hw.sim.scalesim_compat import SCALESIM_VERSION, scalesim_compute, scalesim_utilisation
from qift_hw.sim.workload import Op, Workload

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-scalesim"
CACHE = ROOT / ".cache" / "scalesim"
LAYER_MODE_MAX_ELEMS = 20_000_000
LAYER_MODE_MAX_FOLDS = 2000
REPORT_FIELDS = {  # our column: (SCALE-Sim report, its column)
    "full_total_cycles_incl_prefetch": ("COMPUTE", "Total Cycles (incl. prefetch)"),
    "full_total_cycles": ("COMPUTE", "Total Cycles"), "full_stall_cycles": ("COMPUTE", "Stall Cycles"),
    "full_overall_util": ("COMPUTE", "Overall Util %"), "full_mapping_eff": ("COMPUTE", "Mapping Efficiency %"),
    "full_compute_util": ("COMPUTE", "Compute Util %"),
    "full_ifmap_sram_reads": ("DETAILED_ACCESS", "SRAM IFMAP Reads"),
    "full_filter_sram_reads": ("DETAILED_ACCESS", "SRAM Filter Reads"),
    "full_ofmap_sram_writes": ("DETAILED_ACCESS", "SRAM OFMAP Writes"),
    "full_ifmap_dram_reads": ("DETAILED_ACCESS", "DRAM IFMAP Reads"),
    "full_filter_dram_reads": ("DETAILED_ACCESS", "DRAM Filter Reads"),
    "full_ofmap_dram_writes": ("DETAILED_ACCESS", "DRAM OFMAP Writes"),
}
REFERENCE_CASES = [  # (dataflow, M, K, N, R, C): edge folds, M = 1, K < R, N < C, non-square arrays
    ("ws", 1, 8, 8, 8, 8), ("ws", 5, 20, 12, 8, 8), ("ws", 3, 9, 7, 8, 8), ("ws", 16, 64, 64, 8, 8),
    ("ws", 1, 100, 30, 16, 16), ("ws", 33, 40, 50, 8, 4), ("ws", 7, 13, 29, 4, 8), ("ws", 64, 96, 96, 32, 32),
    ("ws", 2, 5, 3, 8, 8), ("ws", 10, 130, 20, 32, 16), ("os", 1, 8, 8, 8, 8), ("os", 5, 20, 12, 8, 8),
    ("os", 3, 9, 7, 8, 8), ("os", 16, 64, 64, 8, 8), ("os", 1, 100, 30, 16, 16), ("os", 33, 40, 50, 8, 4),
    ("os", 7, 13, 29, 4, 8), ("os", 64, 96, 96, 32, 32), ("os", 2, 5, 3, 8, 8), ("os", 40, 20, 20, 16, 32),
]


def gemms(models: list[str]) -> list[tuple[str, str, int, int]]:
    """(model, layer names sharing the shape, K, N) of each distinct linear shape, lm_head included."""
    out = []
    for m in models:
        shape = load_model_shape(m)
        by_shape: dict[tuple[int, int], list[str]] = {}
        for name, K, N, _ in shape.linears():
            by_shape.setdefault((K, N), []).append(name)
        by_shape.setdefault((shape.hidden, shape.vocab), []).append("lm_head")
        out += [(m, "/".join(names), K, N) for (K, N), names in by_shape.items()]
    return out


def _key(kind: str, case: dict) -> Path:
    text = json.dumps({"kind": kind, "scalesim": SCALESIM_VERSION, **case}, sort_keys=True)
    return CACHE / f"{kind}-{hashlib.sha256(text.encode()).hexdigest()[:20]}.json"


def _cached(kind: str, cases: list[dict], run) -> list[dict]:
    """Results of `run(missing cases)` merged with the cache (one JSON file per case)."""
    missing = [c for c in cases if not _key(kind, c).is_file()]
    if missing:
        for case, res in zip(missing, run(missing)):
            write_json(_key(kind, case), res)
    return [json.loads(_key(kind, c).read_text()) for c in cases]


def _python(venv: Path) -> str:
    py = venv / "bin" / "python"
    if not py.is_file():
        sys.exit(f"no SCALE-Sim venv at {venv}: run sw/scalesim_env.sh first")
    return str(py)


def run_probe(cases: list[dict], venv: Path) -> list[dict]:
    """SCALE-Sim's compute classes on each case, in its venv."""
    text = "".join(json.dumps(c) + "\n" for c in cases)
    out = subprocess.run([_python(venv), str(Path(__file__).with_name("scalesim_probe.py"))], input=text,
                         capture_output=True, text=True, check=True)
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def _report(path: Path) -> dict:
    with path.open() as f:
        rows = [[v.strip() for v in r if v.strip() != ""] for r in csv.reader(f)]
    return dict(zip(rows[0], rows[1]))


def run_full(case: dict, venv: Path, sram_kb: int, bandwidth: int) -> dict:
    """The whole SCALE-Sim tool on one GEMM; its per-cycle traces (always written) are deleted afterwards."""
    with tempfile.TemporaryDirectory(prefix="scalesim-full-") as tmp:
        t = Path(tmp)
        (t / "c.cfg").write_text(probe.config_text(case["dataflow"], case["R"], case["C"], sram_kb, bandwidth, "run"))
        (t / "t.csv").write_text(probe.topology_text([("L0", case["M"], case["N"], case["K"])]))
        (t / "l.csv").write_text(probe.layout_text(["L0"]))
        t0 = time.perf_counter()
        subprocess.run([_python(venv), "-m", "scalesim.scale", "-c", "c.cfg", "-t", "t.csv", "-l", "l.csv",
                        "-p", "out", "-i", "gemm"], cwd=t, capture_output=True, text=True, check=True)
        wall = time.perf_counter() - t0
        reports = {name: _report(t / f"out/run/{name}_REPORT.csv") for name in ("COMPUTE", "DETAILED_ACCESS")}
    out = {**case, "sram_kb": sram_kb, "bandwidth": bandwidth, "wall_s": round(wall, 2)}
    for col, (name, field) in REPORT_FIELDS.items():
        value = float(reports[name][field])
        out[col] = value if field.endswith("%") else int(value)
    return out


def probe_mode(df: str, M: int, K: int, N: int, R: int, C: int) -> str:
    c = scalesim_compute(df, M, K, N, R, C)
    small = c.tiles <= LAYER_MODE_MAX_FOLDS and (c.cycles + 1) * (R + 2 * C) <= LAYER_MODE_MAX_ELEMS
    return "layer" if small else "folds"


def engine(df: str, M: int, K: int, N: int, R: int, C: int, timing: str, sram_kb: int, bandwidth: int) -> dict:
    """The project's whole-GEMM model (`qift_hw.sim.accelerator`) on the SCALE-Sim-like preset `scalesim8`: INT8
    weights and activations, one-byte outputs, SCALE-Sim's SRAM sizes and DRAM words/cycle (1 GHz: GB/s = bytes
    per cycle), buffer ports wide enough to feed the array (SCALE-Sim has no SRAM port limit)."""
    over = {"array.rows": R, "array.cols": C, "dataflow": df, "decode_dataflow": df, "timing": timing,
            "out_bytes": 1, "dram.gbps": bandwidth}
    for b in ("weight", "act", "out"):
        over |= {f"buffers.{b}.kib": sram_kb, f"buffers.{b}.banks": max(R, C)}
    row = simulate(load_arch("scalesim8", over),
                   Workload("gemm", "gemm", "int8", M, (Op("gemm", "linear", M, K, N, 1, "int8"),)))["layers"][0]
    return {"total_cycles": row["total_cycles"], "stall_cycles": row["stall_cycles"],
            "util_pct": round(row["overall_util_pct"], 4),
            "sram_read_bytes": row["sram_act_read_bytes"] + row["sram_weight_read_bytes"] + row["sram_out_read_bytes"],
            "sram_write_bytes": row["sram_out_write_bytes"],
            "dram_read_bytes": row["dram_act_read_bytes"] + row["dram_weight_read_bytes"],
            "dram_write_bytes": row["dram_out_write_bytes"]}


def v1_cycles(df: str, M: int, K: int, N: int, R: int, C: int) -> int:
    return ws_gemm_cycles(M, K, N, R, C) if df == "ws" else os_gemm_cycles(M, K, N, R, C)


def compare(models: list[str], ms: list[int], arrays: list[tuple[int, int]], dataflows: list[str], venv: Path,
            full_max_cycles: int, sram_kb: int, bandwidth: int) -> list[dict]:
    """One row per (model shape, M, array, dataflow); asserts scalesim_compute == SCALE-Sim's counts."""
    plan = [(m, layer, K, N, M, R, C, df) for m, layer, K, N in gemms(models) for M in ms for R, C in arrays
            for df in dataflows]
    cases = [{"dataflow": df, "M": M, "K": K, "N": N, "R": R, "C": C, "mode": probe_mode(df, M, K, N, R, C)}
             for _, _, K, N, M, R, C, df in plan]
    sims = _cached("compute", cases, lambda todo: run_probe(todo, venv))
    cross = [{**c, "mode": "folds"} for c in cases if c["mode"] == "layer"]
    for whole, summed in zip([s for s in sims if s["mode"] == "layer"], _cached("compute", cross,
                                                                               lambda todo: run_probe(todo, venv))):
        assert all(whole[k] == summed[k] for k in probe.SUMS if "sum" not in k), (whole, summed)
    full_cases = [{k: c[k] for k in ("dataflow", "M", "K", "N", "R", "C")} for c in cases
                  if scalesim_compute(c["dataflow"], c["M"], c["K"], c["N"], c["R"], c["C"]).cycles <= full_max_cycles]
    full_cases = list({json.dumps(c, sort_keys=True): c for c in full_cases}.values())
    fulls = _cached("full", [{**c, "sram_kb": sram_kb, "bandwidth": bandwidth} for c in full_cases],
                    lambda todo: [run_full({k: c[k] for k in probe.SHAPE_KEYS}, venv, sram_kb, bandwidth)
                                  for c in todo])
    full_by = {tuple(f[k] for k in probe.SHAPE_KEYS): f for f in fulls}
    rows = []
    for (m, layer, K, N, M, R, C, df), sim in zip(plan, sims):
        c = scalesim_compute(df, M, K, N, R, C)
        util = scalesim_utilisation(df, M, K, N, R, C)
        ss_cycles = sim["demand_rows"] - 1
        assert (ss_cycles, sim["folds"], sim["filter_reads"], sim["ifmap_reads"], sim["ofmap_writes"]) == \
               (c.cycles, c.tiles, c.weight_words, c.act_words, c.out_words), (sim, c)
        row = {"model": m, "layer": layer, "M": M, "K": K, "N": N, "array": f"{R}x{C}", "dataflow": df,
               "macs": M * K * N, "v1_cycles": v1_cycles(df, M, K, N, R, C)}
        v2 = gemm_compute(df, M, K, N, R, C)
        row |= {"v2_cycles": v2.cycles, "v2_tiles": v2.tiles}
        row |= {"scalesim_cycles": ss_cycles, "scalesim_source": sim["mode"], "compat_cycles": c.cycles,
                "compat_match": ss_cycles == c.cycles, "folds": c.tiles, "fold_cycles": c.ii,
                "scalesim_util_pct": round(util.overall, 4),
                "v1_util_pct": round(100 * M * K * N / (row["v1_cycles"] * R * C), 4),
                "ifmap_sram_reads": sim["ifmap_reads"], "filter_sram_reads": sim["filter_reads"],
                "ofmap_sram_writes": sim["ofmap_writes"],
                "v2_util_pct": round(100 * M * K * N / (v2.cycles * R * C), 4), "v2_act_words": v2.act_words,
                "v2_weight_words": v2.weight_words, "v2_out_words": v2.out_words, "v2_psum_in_words": v2.psum_in_words}
        row |= {f"engine_{k}": v for k, v in engine(df, M, K, N, R, C, "v2", sram_kb, bandwidth).items()}
        ss_t = engine(df, M, K, N, R, C, "scalesim", sram_kb, bandwidth)
        row |= {"engine_ss_total_cycles": ss_t["total_cycles"], "engine_ss_stall_cycles": ss_t["stall_cycles"]}
        full = full_by.get((df, M, K, N, R, C))
        if full:
            row |= {k: full[k] for k in REPORT_FIELDS}
            row["full_compute_match"] = full["full_total_cycles"] - full["full_stall_cycles"] == c.cycles
        rows.append(row)
    return rows


def _layer_totals(rows: list[dict]) -> list[dict]:
    """Cycles of one decoder layer (its seven linears, shared shapes counted once per name) per configuration."""
    out: dict[tuple, dict] = {}
    for r in rows:
        n = len([x for x in r["layer"].split("/") if x != "lm_head"])
        if not n:
            continue
        t = out.setdefault((r["model"], r["M"], r["array"], r["dataflow"]), dict.fromkeys(
            ("v1_cycles", "v2_cycles", "scalesim_cycles", "compat_cycles", "macs", "exact"), 0))
        for k in ("v1_cycles", "v2_cycles", "scalesim_cycles", "compat_cycles", "macs"):
            t[k] += n * r[k]
        t["exact"] += n * r["compat_match"]
    return [{"model": m, "M": M, "array": a, "dataflow": df, **t} for (m, M, a, df), t in out.items()]


def markdown(rows: list[dict]) -> str:
    """The two tables of docs/scalesim.md: one decoder layer per configuration, and the full SCALE-Sim runs."""
    lines = ["| model | M | array | df | v1 | v2 | SCALE-Sim | compat | exact | v1 / SCALE-Sim | v2 / SCALE-Sim |",
             "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for t in _layer_totals(rows):
        lines.append(f"| {t['model']} | {t['M']} | {t['array']} | {t['dataflow']} | {t['v1_cycles']:,} | "
                     f"{t['v2_cycles']:,} | {t['scalesim_cycles']:,} | {t['compat_cycles']:,} | {t['exact']}/7 | "
                     f"{t['v1_cycles'] / t['scalesim_cycles']:.3f} | {t['v2_cycles'] / t['scalesim_cycles']:.3f} |")
    lines += ["", "| layer | M | K \u00d7 N | array | df | SCALE-Sim total / stall | engine v2 total / stall | "
              "engine (scalesim timing) total / stall | SCALE-Sim DRAM rd / wr | engine DRAM rd / wr | "
              "SCALE-Sim / engine util % |", "|---|---:|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "full_total_cycles" in r:
            lines.append(
                f"| {r['model']} {r['layer']} | {r['M']} | {r['K']} \u00d7 {r['N']} | {r['array']} | {r['dataflow']} | "
                f"{r['full_total_cycles']:,} / {r['full_stall_cycles']:,} | "
                f"{r['engine_total_cycles']:,} / {r['engine_stall_cycles']:,} | "
                f"{r['engine_ss_total_cycles']:,} / {r['engine_ss_stall_cycles']:,} | "
                f"{r['full_ifmap_dram_reads'] + r['full_filter_dram_reads']:,} / {r['full_ofmap_dram_writes']:,} | "
                f"{r['engine_dram_read_bytes']:,.0f} / {r['engine_dram_write_bytes']:,.0f} | "
                f"{r['full_overall_util']:.2f} / {r['engine_util_pct']:.2f} |")
    return "\n".join(lines) + "\n"


def reference(venv: Path, bandwidth: int = 1000, sram_kb: int = 4096) -> dict:
    """SCALE-Sim's own COMPUTE and DETAILED_ACCESS figures on the small REFERENCE_CASES (tests/data)."""
    cases = [dict(zip(probe.SHAPE_KEYS, c)) for c in REFERENCE_CASES]
    return {"scalesim": SCALESIM_VERSION, "config": "sw/scalesim_probe.py CONFIG (configs/scale.cfg) with "
            f"{sram_kb} kB SRAMs and {bandwidth} words/cycle USER bandwidth, so that no case stalls",
            "command": f"{os.path.relpath(_python(venv), ROOT)} -m scalesim.scale -c c.cfg -t t.csv -l l.csv "
                       "-p out -i gemm",
            "made_by": "python sw/scalesim_compare.py --reference tests/data/scalesim_reference.json",
            "cases": [run_full(c, venv, sram_kb, bandwidth) for c in cases]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="smollm2,llama2-7b")
    ap.add_argument("--ms", default="1,64,512")
    ap.add_argument("--arrays", default="8x8,32x32,128x128")
    ap.add_argument("--dataflows", default="ws,os")
    ap.add_argument("--venv", type=Path, default=VENV)
    ap.add_argument("--full-max-cycles", type=int, default=30000,
                    help="run the whole SCALE-Sim tool on rows with at most this many compute cycles (0: none)")
    ap.add_argument("--sram-kb", type=int, default=64, help="SCALE-Sim SRAM sizes for full runs (scale.cfg: 64)")
    ap.add_argument("--bandwidth", type=int, default=10, help="DRAM words/cycle for full runs (scale.cfg: 10)")
    ap.add_argument("--out", type=Path, help="write OUT.csv and OUT.json (with provenance)")
    ap.add_argument("--markdown", action="store_true", help="print the tables of docs/scalesim.md")
    ap.add_argument("--reference", type=Path, help="write SCALE-Sim's figures on the small test cases here, then stop")
    a = ap.parse_args()
    if a.reference:
        write_json(a.reference, {"provenance": provenance(), **reference(a.venv)})
        print(f"wrote {a.reference}")
        return
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    rows = compare(a.models.split(","), [int(x) for x in a.ms.split(",")],
                   [tuple(int(v) for v in s.split("x")) for s in a.arrays.split(",")], a.dataflows.split(","),
                   a.venv, a.full_max_cycles, a.sram_kb, a.bandwidth)
    matched = sum(r["compat_match"] for r in rows)
    n_full = sum("full_total_cycles" in r for r in rows)
    print(f"{len(rows)} rows: scalesim_compute == SCALE-Sim on {matched}; full SCALE-Sim runs on {n_full} rows; "
          f"{time.perf_counter() - t0:.1f} s, load {load0:.1f}")
    if a.markdown:
        print(markdown(rows))
    if a.out:
        columns = list(dict.fromkeys(k for r in rows for k in r))
        write_csv(a.out.with_suffix(".csv"), rows, columns)
        write_json(a.out.with_suffix(".json"), {
            "provenance": provenance(), "scalesim": SCALESIM_VERSION, "full_runs": {
                "config": "configs/scale.cfg with the array and dataflow set", "sram_kb": a.sram_kb,
                "bandwidth_words_per_cycle": a.bandwidth, "max_compute_cycles": a.full_max_cycles},
            "rows_matched": matched, "rows_full_runs": n_full,
            "scalesim_source_counts": dict(Counter(r["scalesim_source"] for r in rows)), "rows": rows})
        print(f"wrote {a.out.with_suffix('.csv')} and .json")


if __name__ == "__main__":
    main()
