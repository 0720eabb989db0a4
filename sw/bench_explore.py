"""Benchmark: the accelerator model's unit of work and a design-space sweep through Dask.

Measured, each with the load average beside it (a shared machine makes absolute times move; the ratios within a
round are what to compare):

1. one LLaMA-2-7B estimate: ``estimate_point`` for one decode and one prefill point, and ``estimate`` of the whole
   W2/W4/W8 x prefill/decode comparison, median of ``--repeats`` calls in this process;
2. a 1,000-point sweep (LLaMA-2-7B: 5 array heights x 5 widths x 5 DRAM bandwidths x 4 formats x 2 phases) through
   ``qift_hw.study.explore.run_explore`` on a new local cluster of ``--workers`` processes with an empty cache:
   what a user waits for, cluster start and worker imports included (target < 60 s on two cores); then the same
   sweep again from the cache (target < 5 s), then the outputs (table, plots), then the whole command
   `qift-hw explore` on the cached grid in a new process (imports and outputs included), and how much of that
   a new process spends importing `qift_hw.sim.arch` (the `qift_hw.sim` package imports torch and numba);
3. Dask's cost per point: over ``--overhead-points`` points, in alternating rounds on one warm cluster, a plain
   loop of ``estimate_point`` in this process, the same points through Dask with one point per task, and with the
   runner's automatic chunks (wall time per point, and its ratio to the loop's within each round); and a function
   that does nothing, one point per task (Dask's own cost per task).

    .venv/bin/python sw/bench_explore.py                      # -> docs/results/bench_explore.json
    .venv/bin/python sw/bench_explore.py --out /tmp/bench_explore.json --overhead-points 100
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SWEEP = {
    "name": "bench_1000",
    "arch": "edge",
    "array.rows": [8, 16, 32, 64, 128],
    "array.cols": [8, 16, 32, 64, 128],
    "dram.gbps": [4, 8, 16, 32, 64],
    "levels": ["pot_mnz", "mnz", "int4", "int8"],
    "model": "llama2-7b",
    "phase": ["prefill", "decode"],
    "seqlen": 512,
}


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def noop(point) -> list[dict]:
    """A point function that does nothing: what remains of a task's time is Dask's."""
    return [{}]


def time_calls(fn, arg, repeats: int) -> dict:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(arg)
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "calls": repeats}


def bench_estimate(repeats: int) -> dict:
    from qift_hw.core.shapes import load_model_shape
    from qift_hw.sim.accelerator import estimate, estimate_point
    from qift_hw.sim.arch import load_arch

    point = {"arch": "edge", "set": {}, "model": "llama2-7b", "levels": "pot_mnz", "seqlen": 512, "context": None,
             "batch": 1}
    estimate_point({**point, "phase": "decode"})  # imports and first-call caches out of the timing
    arch, shape = load_arch("edge"), load_model_shape("llama2-7b")
    out = {"load_before": loadavg()}
    out["estimate_point_decode"] = time_calls(estimate_point, {**point, "phase": "decode"}, repeats)
    out["estimate_point_prefill"] = time_calls(estimate_point, {**point, "phase": "prefill"}, repeats)
    out["estimate_w2_w4_w8_both_phases"] = time_calls(lambda _: estimate(arch, shape), None, max(3, repeats // 4))
    out["load_after"] = loadavg()
    return out


def bench_sweep(workers: int, cache: Path, out_dir: Path) -> dict:
    from qift_hw.study.explore import grid_params, parse_grid, run_explore, write_outputs

    grid = parse_grid({**SWEEP, "cache": str(cache)}, "bench sweep")
    n = len(grid_params(grid))
    res = {"points": n, "workers": workers, "load_before": loadavg()}
    t0 = time.perf_counter()
    df, run, ppl = run_explore(grid, workers=workers, progress=False)
    res["cold_s"] = time.perf_counter() - t0
    res["cold_run"] = run.summary()
    res["load_after_cold"] = loadavg()
    t0 = time.perf_counter()
    df2, run2, _ = run_explore(grid, workers=workers, progress=False)
    res["cached_s"] = time.perf_counter() - t0
    res["cached_run"] = run2.summary()
    res["cached_rows_identical"] = bool(df.drop(columns=["cached"]).equals(df2.drop(columns=["cached"])))
    t0 = time.perf_counter()
    write_outputs(out_dir, df, run, grid, ppl)
    res["outputs_s"] = time.perf_counter() - t0
    grid_file = out_dir / "bench_1000.yaml"
    grid_file.write_text(yaml.safe_dump({**SWEEP, "cache": str(cache)}, sort_keys=False))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "qift_hw", "explore", str(grid_file), "--out", str(out_dir / "cli"),
                           "--workers", str(workers), "--no-progress"], capture_output=True, text=True, timeout=600)
    res["cli_cached_s"] = time.perf_counter() - t0
    res["cli_cached_said"] = proc.stderr.splitlines()[:1]
    res["cli_cached_exit"] = proc.returncode
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import qift_hw.sim.arch"], check=True, timeout=600)
    res["new_process_import_sim_arch_s"] = time.perf_counter() - t0  # qift_hw.sim's package import (torch, numba)
    res["rows"] = len(df)
    res["load_after"] = loadavg()
    return res


def bench_overhead(workers: int, n_points: int, rounds: int) -> dict:
    from qift_hw.sim.accelerator import estimate_point
    from qift_hw.study.explore import check_points, grid_params, parse_grid
    from qift_hw.study.grid import run_grid, start_client

    points = check_points(grid_params(parse_grid(SWEEP, "bench sweep")))[:n_points]
    t0 = time.perf_counter()
    client = start_client(workers=workers)
    start_s = time.perf_counter() - t0
    try:
        run_grid(estimate_point, points[:workers * 2], client=client, chunk_size=1, progress=False)  # warm workers
        def dask(fn, chunk):
            return lambda: run_grid(fn, points, client=client, chunk_size=chunk, code="bench", progress=False)

        ways = {"direct_loop": lambda: [estimate_point(p) for p in points],
                "dask_chunk_1": dask(estimate_point, 1), "dask_auto_chunks": dask(estimate_point, None),
                "dask_noop_chunk_1": dask(noop, 1)}
        samples: dict[str, list[float]] = {k: [] for k in ways}
        loads = []
        for _ in range(rounds):
            loads.append(loadavg())
            for name, way in ways.items():
                t0 = time.perf_counter()
                way()
                samples[name].append((time.perf_counter() - t0) / len(points))
        loads.append(loadavg())
    finally:
        cluster = client.cluster
        client.close()
        cluster.close()
    per = {k: {"median_ms": 1e3 * statistics.median(v), "min_ms": 1e3 * min(v), "max_ms": 1e3 * max(v),
               "rounds_ms": [round(1e3 * x, 3) for x in v]} for k, v in samples.items()}
    ratio = {k: statistics.median(s / d for d, s in zip(samples["direct_loop"], v)) for k, v in samples.items()
             if k != "direct_loop"}
    return {"points": len(points), "workers": workers, "rounds": rounds, "cluster_start_s": start_s,
            "wall_per_point": per, "dask_over_direct_wall_ratio": ratio,
            "dask_wall_per_task_ms": per["dask_noop_chunk_1"]["median_ms"], "load": loads,
            "note": "wall time per point as the client sees it (submit to last result), median over alternating "
                    "rounds; ratio < 1: Dask faster than the loop in this process (its workers run in parallel), "
                    "> 1: its per-task cost outweighs the parallelism. dask_noop_chunk_1 is Dask's own cost per "
                    "task (a function that does nothing)"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2, help="worker processes of the local cluster")
    ap.add_argument("--repeats", type=int, default=40, help="calls per single-estimate timing")
    ap.add_argument("--overhead-points", type=int, default=200, help="points per overhead round")
    ap.add_argument("--rounds", type=int, default=3, help="alternating overhead rounds")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "bench_explore.json")
    args = ap.parse_args()

    from qift_hw.core.io import write_json
    from qift_hw.core.provenance import provenance

    result = {"what": "accelerator estimate and Dask design-space sweep speed", "cpu_count": os.cpu_count()}
    result["single_estimate"] = bench_estimate(args.repeats)
    print("single estimate:", {k: v for k, v in result["single_estimate"].items()})
    with tempfile.TemporaryDirectory(prefix="bench_explore_") as tmp:
        result["sweep"] = bench_sweep(args.workers, Path(tmp) / "cache", Path(tmp) / "out")
    s = result["sweep"]
    print(f"sweep: {s['points']} points cold {s['cold_s']:.1f} s, cached {s['cached_s']:.2f} s, outputs "
          f"{s['outputs_s']:.1f} s, whole command cached {s['cli_cached_s']:.1f} s (of which importing qift_hw.sim "
          f"{s['new_process_import_sim_arch_s']:.1f} s), load {s['load_after']}")
    result["overhead"] = bench_overhead(args.workers, args.overhead_points, args.rounds)
    o = result["overhead"]
    print("wall per point (ms):", {k: round(v["median_ms"], 3) for k, v in o["wall_per_point"].items()},
          "Dask / direct:", {k: round(v, 2) for k, v in o["dask_over_direct_wall_ratio"].items()},
          f"load {o['load'][-1]}")
    result["targets"] = {"llama2_7b_estimate_under_0_5_s": result["single_estimate"][
        "estimate_w2_w4_w8_both_phases"]["median_s"] < 0.5, "sweep_1000_under_60_s": s["cold_s"] < 60,
        "cached_rerun_under_5_s": s["cached_s"] < 5}
    result["provenance"] = provenance()
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
