"""Benchmark: the bit-accurate W2 x INT4 kernel (qift_hw.sim.matmul) against torch float32 matmul, same shapes.

SmolLM2-135M and LLaMA-2-7B linear shapes, M = 1, 64, 512 tokens, in one process. For each shape: the kernel with
weights prepared once (the steady state of a layer, like a loaded weight buffer), the full call from uint8 codes
(layout included), and torch.matmul in float32 on the same integer values. Exactness is checked on every shape
against the torch result, which is exact here (integer partial sums stay below 2^24). Timings are the best of
several repeats; the machine may be shared, so compare the ratios, which are taken in the same process.

    .venv/bin/python sw/bench_sim.py [--quick] [--threads 2] [--out docs/results/bench_sim.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

SHAPES = {
    "smollm2": {"q_proj/o_proj": (576, 576), "k_proj/v_proj": (576, 192), "gate/up": (576, 1536),
                "down": (1536, 576)},
    "llama2-7b": {"q/k/v/o": (4096, 4096), "gate/up": (4096, 11008), "down": (11008, 4096)},
}


def race(fns: dict, min_s: float = 0.4, min_rounds: int = 3, warm_s: float = 0.2) -> dict:
    """Best time of each function, measured in alternating rounds after a warm-up (fair on a shared machine)."""
    for fn in fns.values():
        t_end = time.perf_counter() + warm_s
        while time.perf_counter() < t_end:
            fn()
    best = {k: float("inf") for k in fns}
    rounds, t_end = 0, time.perf_counter() + min_s
    while rounds < min_rounds or (time.perf_counter() < t_end and rounds < 200):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
        rounds += 1
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="threads for torch and Numba")
    ap.add_argument("--quick", action="store_true", help="SmolLM2 shapes and M <= 64 only")
    ap.add_argument("--out", type=Path, default=Path("docs/results/bench_sim.json"))
    args = ap.parse_args()
    os.environ.setdefault("NUMBA_NUM_THREADS", str(args.threads))

    import numba
    import numpy as np
    import torch

    from qift_hw.core.formats import weight_int_values
    from qift_hw.core.io import write_json
    from qift_hw.core.provenance import provenance
    from qift_hw.sim import matmul, prepare_weights

    torch.set_num_threads(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    rng = np.random.default_rng(0)
    level_set = "pot_mnz"
    wtab = weight_int_values(level_set).astype(np.float32)
    rows = []
    models = {"smollm2": SHAPES["smollm2"]} if args.quick else SHAPES
    for model, shapes in models.items():
        for name, (K, N) in shapes.items():
            codes = rng.integers(0, 4, (N, K)).astype(np.uint8)
            w_t = torch.from_numpy(wtab[codes])
            t0 = time.perf_counter()
            pw = prepare_weights(codes, level_set)
            prep_s = time.perf_counter() - t0
            for M in (1, 64) if args.quick else (1, 64, 512):
                acts = rng.integers(-8, 8, (M, K)).astype(np.int8)
                a_t = torch.from_numpy(acts.astype(np.float32))
                ref = torch.matmul(a_t, w_t.T)
                got = matmul(acts, pw, level_set)
                exact = bool(np.array_equal(got, ref.numpy().astype(np.int64)))
                best = race({"torch": lambda: torch.matmul(a_t, w_t.T), "sim": lambda: matmul(acts, pw, level_set),
                             "full": lambda: matmul(acts, codes, level_set)})
                t_torch, t_sim, t_full = best["torch"], best["sim"], best["full"]
                macs = M * K * N
                row = {"model": model, "layer": name, "M": M, "K": K, "N": N, "exact": exact,
                       "torch_f32_s": t_torch, "sim_prepared_s": t_sim, "sim_from_codes_s": t_full,
                       "prepare_s": prep_s, "torch_gmacs": macs / t_torch / 1e9, "sim_gmacs": macs / t_sim / 1e9,
                       "ratio_vs_torch": t_torch / t_sim, "ratio_from_codes_vs_torch": t_torch / t_full}
                rows.append(row)
                print(f"{model:10s} {name:14s} M={M:4d} K={K:5d} N={N:5d} exact={exact} torch {row['torch_gmacs']:7.2f} "
                      f"GMAC/s  sim {row['sim_gmacs']:7.2f} GMAC/s  ratio {row['ratio_vs_torch']:.2f} "
                      f"(from codes {row['ratio_from_codes_vs_torch']:.2f})", flush=True)

    def gmean(xs):
        return float(np.exp(np.mean(np.log(xs))))

    summary = {f"M={M}": {"geomean_ratio": gmean([r["ratio_vs_torch"] for r in rows if r["M"] == M]),
                          "geomean_ratio_from_codes": gmean([r["ratio_from_codes_vs_torch"] for r in rows
                                                             if r["M"] == M])}
               for M in sorted({r["M"] for r in rows})}
    summary["all"] = {"geomean_ratio": gmean([r["ratio_vs_torch"] for r in rows]),
                      "all_exact": all(r["exact"] for r in rows)}
    print(summary)
    write_json(args.out, {"level_set": level_set, "threads": args.threads, "numba_threading_layer":
                          numba.threading_layer(), "machine": platform.processor() or platform.machine(),
                          "cpu_count": os.cpu_count(), "torch": torch.__version__, "numba": numba.__version__,
                          "rows": rows, "summary": summary, "provenance": provenance()})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
