"""Time `--backend sim` (every W2 linear in the bit-accurate integer model) against the fake-quant evaluation.

SmolLM2-135M, rotated, W2A4KV4 (RTN codes by default: the codes' values do not change the work, and RTN needs no
calibration), the same evaluation windows for both backends, alternating in rounds (fake-quant, then sim) in one
process, so that both see the same load. Reports per-round seconds, the sim / fake-quant ratio (min, median, max),
the load average before and after each round, threads, CPU model and ISA flags, perplexities, provenance.

    .venv/bin/python sw/bench_backends.py [--threads 2] [--windows 2] [--seqlen 2048] [--rounds 3]
        [--hadamard unit] [--out docs/results/bench_backends.json (the default)]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from bench_sim import cpu_info, loadavg, spread


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--levels", default="pot_mnz")
    ap.add_argument("--method", default="rtn", choices=("rtn", "gptq"))
    ap.add_argument("--windows", type=int, default=2)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--hadamard", default="unit", choices=("unit", "float"))
    ap.add_argument("--out", default="docs/results/bench_backends.json", help="results JSON (written atomically)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from qift_hw.algo.config import QuantConfig
    from qift_hw.algo.data import get_windows
    from qift_hw.algo.evaluate import ppl_from_nlls, window_nlls
    from qift_hw.algo.models import load_model
    from qift_hw.algo.quantize import quantize_model
    from qift_hw.bridge.sim_backend import install_sim_backend, remove_sim_backend
    from qift_hw.core.io import write_json
    from qift_hw.core.provenance import provenance

    model, tok = load_model("smollm2", device="cpu")
    ev = get_windows(tok, "pydoc", "eval", args.seqlen, args.windows)
    cfg = QuantConfig(levels=args.levels, method=args.method, calib_windows=8, device="cpu")
    qm = quantize_model(model, tok, cfg, progress=False)

    def fake() -> torch.Tensor:
        return window_nlls(model, ev, progress=False)

    def sim() -> torch.Tensor:
        install_sim_backend(model, qm.weights, hadamard=args.hadamard)
        try:
            return window_nlls(model, ev, progress=False)
        finally:
            remove_sim_backend(model)

    nlls = {"fake_quant": fake(), "sim": sim()}  # warm-up: JIT compilation, weight preparation, allocator
    rounds = []
    for _ in range(args.rounds):
        row = {"loadavg_before": loadavg()}
        for name, fn in (("fake_quant", fake), ("sim", sim)):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            row[f"{name}_s"], row[f"{name}_cpu_s"] = time.perf_counter() - t0, time.process_time() - c0
        row["ratio"] = row["sim_s"] / row["fake_quant_s"]
        row["loadavg_after"] = loadavg()
        rounds.append(row)
        print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True)

    ratios = [r["ratio"] for r in rounds]
    result = {
        "what": f"evaluation of SmolLM2-135M W2A4KV4 ({args.levels}, {args.method}), {args.windows} x {args.seqlen} "
                f"tokens: --backend sim (Hadamard {args.hadamard}) against fake-quant, alternating rounds",
        "threads": torch.get_num_threads(), "cpu": cpu_info(), "rounds": rounds,
        "ratio_sim_over_fake_quant": spread(ratios),
        "fake_quant_s": spread([r["fake_quant_s"] for r in rounds]), "sim_s": spread([r["sim_s"] for r in rounds]),
        "ppl": {k: ppl_from_nlls(v, args.seqlen) for k, v in nlls.items()},
        "goal": "sim within 1.5x of fake-quant",
        "note": "wall times on a shared machine move with the load average; the ratio of alternating rounds less so",
        "provenance": provenance(),
    }
    print(f"sim / fake-quant: median {statistics.median(ratios):.2f} (min {min(ratios):.2f}, max {max(ratios):.2f}); "
          f"load average {loadavg()}; {os.cpu_count()} CPUs, {torch.get_num_threads()} threads")
    if args.out:
        write_json(Path(args.out), result)


if __name__ == "__main__":
    main()
