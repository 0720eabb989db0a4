"""Simulated cycles per second of the PE array on Icarus Verilog and Verilator (cocotb-driven), two array sizes.

Each run replays the same model trace (a WS GEMM, every output compared every cycle) through the cocotb bench;
the rate is clock cycles replayed per second of the bench's own loop (simulator start-up and build excluded,
reported apart). Amaranth's Python simulator replays the same trace in this process as the baseline.
Writes docs/results/rtl_sim_speed.json.

    .venv/bin/python sw/bench_rtl.py [--array 4x4,8x8] [--cycles 12000] [--out docs/results/rtl_sim_speed.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from qift_hw.core.io import write_text
from qift_hw.core.provenance import provenance
from qift_hw.rtl.generate import array_top, write_top
from qift_hw.verify.replay import port_plan, replay_amaranth
from qift_hw.verify.simulate import run_bench, simulator_available
from qift_hw.verify.stimulus import gemm_trace

ROOT = Path(__file__).resolve().parents[1]


def _gemm_for(rows: int, cols: int, target_cycles: int, seed: int = 0):
    """A GEMM whose WS schedule lasts about ``target_cycles`` (M = 64 activation rows)."""
    rng = np.random.default_rng(seed)
    M = 64
    per_pass = rows + M + rows + cols - 1
    passes = max(1, target_cycles // per_pass)
    k_tiles = max(1, int(np.sqrt(passes)))
    n_tiles = max(1, passes // k_tiles)
    K, N = k_tiles * rows, n_tiles * cols
    return rng.integers(-8, 8, (M, K)), rng.integers(0, 4, (N, K))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--array", default="4x4,8x8", help="comma-separated array sizes RxC")
    ap.add_argument("--cycles", type=int, default=12000, help="target trace length in clock cycles")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "rtl_sim_speed.json")
    args = ap.parse_args()
    build = ROOT / "sim_build"
    rows_out = []
    for size in args.array.split(","):
        R, C = (int(v) for v in size.split("x"))
        top = array_top("ws", R, C, "pot_mnz", 32)
        a, w = _gemm_for(R, C, args.cycles)
        gt = gemm_trace("ws", a, w, R, C, stall_prob=0.0)
        lanes, inputs, outputs = port_plan(top.component)
        cycles = len(gt.trace["en"])
        t0 = time.perf_counter()
        _, errors = replay_amaranth(top.component, gt.trace)
        amaranth_s = time.perf_counter() - t0
        entry = {"array": f"{R}x{C}", "dataflow": "ws", "gemm": list(a.shape) + [w.shape[0]], "cycles": cycles,
                 "amaranth": {"cycles_per_s": round(cycles / amaranth_s, 1), "seconds": round(amaranth_s, 2),
                              "ok": not errors}}
        verilog = write_top(top, build / "verilog")
        stim = {**gt.trace, "lanes": lanes, "inputs": inputs, "outputs": outputs, "compare_when": {},
                "reset_at": None}
        for sim in ("icarus", "verilator"):
            reason = simulator_available(sim)
            if reason:
                entry[sim] = {"skipped": reason}
                continue
            run = run_bench(sim, verilog, top.name, "bench_replay", stim, build_root=build, tag="speed")
            loop_s = float(run.summary.get("loop_s", float("nan")))
            entry[sim] = {"ok": run.passed, "cycles_per_s": round(cycles / loop_s, 1), "loop_s": round(loop_s, 2),
                          "startup_s": round(run.run_s - loop_s, 2), "build_s": round(run.build_s, 1)}
            print(f"{size} {sim}: {entry[sim]}")
        am = entry["amaranth"]["cycles_per_s"]
        entry["ratios_vs_amaranth"] = {s: round(entry[s]["cycles_per_s"] / am, 2) for s in ("icarus", "verilator")
                                       if "cycles_per_s" in entry.get(s, {})}
        print(f"{size} amaranth: {entry['amaranth']}")
        rows_out.append(entry)
    result = {"what": "cocotb-driven replay of a WS GEMM trace, outputs compared every cycle",
              "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "results": rows_out,
              "note": "rates include cocotb's per-cycle Python work (drive, read, compare); the machine is shared, "
                      "so absolute rates vary with load", "provenance": provenance()}
    write_text(args.out, json.dumps(result, indent=1))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
