"""Simulated cycles per second of the accelerator tile on Icarus and Verilator, and the wall time of the layer bench.

Runs one tile case (default: the SmolLM2 q_proj slice, 16 tokens x 576 x 64 channels on the 4x4 tile, 36,875
compute cycles) through ``sim/bench_tile.py`` on both simulators, alternating in rounds (Icarus, Verilator, then the
other order) so both see the same load. Per run: build seconds (0 = cached), wall seconds of the bench, the cycles
the simulator ran on its own (the compute of a job, no Python per cycle) per second, and all simulated cycles
(loads and drain stepped by the bench) per second; the Verilator / Icarus ratio of each round; the load average
before and after each run; provenance.

    .venv/bin/python sw/bench_tile.py [--case tile_smollm2_qproj_slice] [--rounds 2] [--out docs/results/bench_tile.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", default="tile_smollm2_qproj_slice")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--build-dir", default="sim_build")
    ap.add_argument("--out", default=None, help="write the results as JSON here (atomically)")
    args = ap.parse_args()

    from qift_hw.core.errors import QiftError
    from qift_hw.core.io import write_json
    from qift_hw.core.provenance import provenance
    from qift_hw.verify.simulate import simulator_available
    from qift_hw.verify.tile_cases import run_tile_case, tile_cases

    cases = {c.name: c for c in tile_cases()}
    if args.case not in cases:
        raise QiftError(f"unknown tile case {args.case!r}; known: {', '.join(cases)}")
    case = cases[args.case]
    sims = [s for s in ("icarus", "verilator") if simulator_available(s) is None]
    if not sims:
        raise QiftError("neither Icarus nor Verilator is installed")
    runs = []
    for rnd in range(args.rounds):
        order = sims if rnd % 2 == 0 else sims[::-1]
        for sim in order:
            before = loadavg()
            r = run_tile_case(case, sim, Path(args.build_dir))
            if not r.passed:
                raise QiftError(f"{case.name} failed on {sim}: {r.problems}")
            row = {"round": rnd, "sim": sim, "build_s": r.build_s, "wall_s": r.run_s, "loop_s": r.loop_s,
                   "sim_cycles": r.sim_cycles, "free_cycles": r.free_cycles, "free_s": r.free_s,
                   "free_cycles_per_s": round(r.free_cycles / r.free_s) if r.free_s else None,
                   "all_cycles_per_s": round(r.sim_cycles / r.loop_s) if r.loop_s else None,
                   "loadavg_before": before, "loadavg_after": loadavg()}
            runs.append(row)
            print(row)
    ratios = {}
    if len(sims) == 2:
        for key in ("free_cycles_per_s", "wall_s"):
            vals = []
            for rnd in range(args.rounds):
                by = {x["sim"]: x for x in runs if x["round"] == rnd}
                if by["icarus"][key] and by["verilator"][key]:
                    vals.append(by["verilator"][key] / by["icarus"][key])
            if vals:
                ratios[f"verilator_over_icarus_{key}"] = {"min": min(vals), "median": statistics.median(vals),
                                                          "max": max(vals)}
    result = {"case": case.name, "note": case.note, "tile": case.tile, "rounds": args.rounds, "runs": runs,
              "ratios": ratios, "provenance": provenance()}
    print(ratios)
    if args.out:
        write_json(args.out, result)
        print(f"saved {args.out}")


if __name__ == "__main__":
    main()
