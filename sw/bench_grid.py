"""Benchmark: what running run-spec points through the Dask grid runner costs, and what two workers gain.

A small saved LLaMA (random weights, word tokenizer, ``--layers`` decoder layers of width ``--hidden``) and a
text of its words stand in for the model, so one point (GPTQ W2A4KV4 on all layers, ``--calib`` windows of 64
tokens, 8 evaluation windows) takes about a second. Each point is `qift_hw.study.points.run_point` on a resolved
spec point (`qift_hw.study.spec.expand`), one calibration seed per point; every worker runs torch on one thread.

1. Overhead per point: in alternating rounds, ``--points`` points run directly in this process (a loop of
   ``run_point``, model already loaded) and through ``run_grid`` on a warm one-process local cluster (model
   already loaded on the worker) with a new cache folder each round (so every point computes and writes its
   entry). Reported: wall time per point of each, the difference (the runner's overhead per point: pickling,
   scheduling, the result's trip back, the cache write, progress) and its ratio to the direct time; the code key
   (hash of the sources `run_point` imports: once per grid run, not per point) is timed apart.
2. Speed-up: the same grid (``--points`` >= 4) through ``run_grid`` on a 2-worker local cluster against one
   process running the loop, both warm (cluster up, models loaded), alternating rounds; and the cold figure a
   user sees (new cluster: start, worker imports and model loads included) against the direct loop with its own
   model load.

The load average is recorded beside each figure: on a shared machine the ratios within a round are what to read.

    .venv/bin/python sw/bench_grid.py --out /tmp/bench_grid.json
    .venv/bin/python sw/bench_grid.py --save            # -> docs/results/bench_grid.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def make_model(folder: Path, hidden: int, layers: int) -> tuple[str, str]:
    """A saved random LLaMA with a word tokenizer, and a text of its words (paths)."""
    import numpy as np
    from test_stats import _save_word_tokenizer

    from qift_hw.algo.models import tiny_llama

    model = folder / "model"
    net = tiny_llama(seed=0, hidden=hidden, intermediate=2 * hidden, layers=layers, heads=4, kv_heads=2)
    net.save_pretrained(model)
    _save_word_tokenizer(model)
    words = np.random.default_rng(0).integers(0, 100, 40000)
    text = folder / "text.txt"
    text.write_text(" ".join(f"w{i}" for i in words))
    return str(model), str(text)


def grid_points(model: str, text: str, n: int, calib: int) -> list[dict]:
    from qift_hw.study.spec import expand, parse_spec

    spec = parse_spec({"model": model, "text": text, "threads": 1, "run_root": None, "cache": None,
                       "calibration": {"windows": calib, "seqlen": 64, "seeds": list(range(n))},
                       "evaluation": {"windows": 8, "seqlen": 64},
                       "points": [{"levels": "mnz", "methods": "gptq", "w2_layers": "all"}]})
    return expand(spec)


def direct(points: list[dict]) -> float:
    from qift_hw.study.points import run_point

    t0 = time.perf_counter()
    for p in points:
        run_point(p)
    return time.perf_counter() - t0


def through_grid(points: list[dict], client, cache: Path | None, code: str | None = None) -> float:
    from qift_hw.study.grid import run_grid
    from qift_hw.study.points import run_point
    from qift_hw.study.spec import identity

    t0 = time.perf_counter()
    run = run_grid(run_point, points, cache_dir=cache, identity=identity, client=client, chunk_size=1,
                   progress=False, code=code)
    dt = time.perf_counter() - t0
    if run.failed:
        raise SystemExit(f"grid failed: {run.failures[0].error}")
    return dt


def cluster(workers: int):
    """A local cluster as the runner starts one (`start_client`: its worker settings included)."""
    from qift_hw.study.grid import start_client

    return start_client(workers=workers)


def close(client) -> None:
    c = client.cluster
    client.close()
    c.close()


def warm(client, points: list[dict]) -> None:
    """Load the model on every worker (one point each), so the timed rounds compare work, not loads."""
    from qift_hw.study.points import run_point

    workers = list(client.scheduler_info()["workers"])
    client.gather([client.submit(run_point, points[0], workers=[w], pure=False) for w in workers])


def code_key_time() -> tuple[str, float]:
    """The code key of `run_point` (an AST walk and hash of the sources it imports) and its time: a fixed cost of
    each grid run, not of each point."""
    from qift_hw.study.grid import code_key
    from qift_hw.study.points import run_point

    t0 = time.perf_counter()
    key = code_key(run_point)
    return key, time.perf_counter() - t0


def bench_overhead(points: list[dict], rounds: int, tmp: Path) -> dict:
    direct(points[:1])  # this process's model load out of the timing
    code, key_s = code_key_time()
    client = cluster(1)
    try:
        warm(client, points)
        out = []
        for r in range(rounds):
            load = loadavg()
            d = direct(points)
            g = through_grid(points, client, tmp / f"overhead_{r}", code)
            n = len(points)
            out.append({"round": r, "direct_per_point_s": d / n, "grid_per_point_s": g / n,
                        "overhead_per_point_s": (g - d) / n, "grid_over_direct": g / d, "load": load})
    finally:
        close(client)
    med = {k: statistics.median(x[k] for x in out) for k in ("direct_per_point_s", "grid_per_point_s",
                                                             "overhead_per_point_s", "grid_over_direct")}
    return {"rounds": out, "median": med, "code_key_s": key_s, "code_key_load": loadavg()}


def bench_speedup(points: list[dict], rounds: int) -> dict:
    from qift_hw.study import points as pm

    cold: dict = {"load_before": loadavg()}
    pm._MODELS.clear()
    pm._WINDOWS.clear()
    cold["one_process_s"] = direct(points)  # its own model load included
    t0 = time.perf_counter()
    client = cluster(2)
    try:
        through_grid(points, client, None)
        cold["two_workers_s"] = time.perf_counter() - t0  # cluster start, imports, two model loads included
        cold["speedup"] = cold["one_process_s"] / cold["two_workers_s"]
        cold["load_after"] = loadavg()
        warm(client, points)
        out = []
        for r in range(rounds):
            load = loadavg()
            d = direct(points)
            g = through_grid(points, client, None)
            out.append({"round": r, "one_process_s": d, "two_workers_s": g, "speedup": d / g, "load": load})
    finally:
        close(client)
    return {"cold": cold, "warm_rounds": out, "warm_median_speedup": statistics.median(x["speedup"] for x in out)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=6, help="points per grid (>= 4)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--calib", type=int, default=16, help="calibration windows of 64 tokens per point")
    ap.add_argument("--out", type=Path, help="write the JSON here")
    ap.add_argument("--save", action="store_true", help="write docs/results/bench_grid.json")
    args = ap.parse_args()
    if args.points < 4:
        raise SystemExit("--points must be at least 4")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from qift_hw.core.io import write_json
    from qift_hw.core.provenance import provenance

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model, text = make_model(tmp, args.hidden, args.layers)
        points = grid_points(model, text, args.points, args.calib)
        result = {"provenance": provenance(), "settings": {k: v for k, v in vars(args).items() if k != "out"},
                  "cpu_count": os.cpu_count(), "load_start": loadavg(),
                  "point": {k: points[0][k] for k in ("label", "eval_windows", "eval_seqlen")}
                  | {"calib": f"{args.calib} x 64", "hidden": args.hidden, "layers": args.layers}}
        result["overhead"] = bench_overhead(points, args.rounds, tmp)
        print("overhead:", result["overhead"]["median"], flush=True)
        result["speedup"] = bench_speedup(points, args.rounds)
        print("speed-up:", result["speedup"]["cold"], result["speedup"]["warm_median_speedup"], flush=True)
        result["load_end"] = loadavg()
    path = args.out or (ROOT / "docs" / "results" / "bench_grid.json" if args.save else None)
    if path is not None:
        print(f"wrote {write_json(path, result)}")
    else:
        import json

        print(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
