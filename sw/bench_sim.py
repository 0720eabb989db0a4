"""Benchmark: the bit-accurate W2 x INT4 kernel (qift_hw.sim.matmul) against torch float32 matmul, same shapes.

SmolLM2-135M and LLaMA-2-7B linear shapes, M = 1, 64, 512 tokens, PoT-MNZ codes, in one process. Per shape the
kernels run in alternating rounds (torch, sim, torch, sim, ...); each round times every kernel over enough calls
to last ``--sample-s`` and the paired ratio torch time / sim time is taken within the round, so a load change
hits both sides of a ratio alike. Reported: min / median / max over the rounds of each time and of the ratio.
"sim" is ``matmul`` with weights prepared once (``prepare_weights``, the steady state of a layer, like a loaded
weight buffer); "from codes" (``--from-codes``) is the whole call from uint8 codes, layout included.

Threads are pinned for each setting of ``--threads``: ``torch.set_num_threads(t)`` and ``numba.set_num_threads(t)``.
Recorded: the CPU model and its ISA flags from /proc/cpuinfo (AVX-512 VNNI and VPOPCNTDQ decide which kernel
runs), the kernel ``matmul`` chose, the load average before and after each thread setting, and exactness on every
shape: the sim result must equal torch's float32 product, which is exact here (integer products, every partial
sum below 2^24: K * 32 <= 352,256), and a float64 product on the first row.

    .venv/bin/python sw/bench_sim.py                          # 1 and 2 threads, every shape -> docs/results/bench_sim.json
    .venv/bin/python sw/bench_sim.py --quick --out /tmp/b.json  # SmolLM2 shapes, M <= 64, 1 thread
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

SHAPES = {
    "smollm2": {"q_proj/o_proj": (576, 576), "k_proj/v_proj": (576, 192), "gate/up": (576, 1536),
                "down": (1536, 576)},
    "llama2-7b": {"q/k/v/o": (4096, 4096), "gate/up": (4096, 11008), "down": (11008, 4096)},
}
ISA_FLAGS = ("avx2", "bmi2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_vpopcntdq",
             "avx512_bitalg", "avx512_vbmi", "avx512_bf16")
LEVEL_SET = "pot_mnz"
FLOAT32_EXACT = 2**24


def cpu_info() -> dict:
    """CPU model and the ISA flags that matter to the kernels, from /proc/cpuinfo (Linux; empty elsewhere)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, val = line.partition(":")
        if key.strip() == "model name" and model == (platform.processor() or platform.machine()):
            model = val.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(val.split())
    import llvmlite.binding as llvm

    return {"model": model, "llvm_host_cpu": llvm.get_host_cpu_name(), "logical_cpus": os.cpu_count(),
            "flags": {f: f in flags for f in ISA_FLAGS}}


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def spread(xs: list[float]) -> dict:
    return {"min": min(xs), "median": statistics.median(xs), "max": max(xs)}


def race(fns: dict, rounds: int, sample_s: float) -> dict:
    """Per-call seconds of each function in ``rounds`` alternating rounds (each sample a mean over enough calls to
    last ``sample_s``); returns {name: [seconds per round]}."""
    reps = {}
    for k, fn in fns.items():
        fn()
        t0 = time.perf_counter()
        fn()
        reps[k] = max(1, int(sample_s / max(time.perf_counter() - t0, 1e-7)))
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            n = reps[k]
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            times[k].append((time.perf_counter() - t0) / n)
    return times


def bench_shape(model, name, K, N, Ms, rng, args, np, torch, matmul, prepare_weights, wtab) -> list[dict]:
    codes = rng.integers(0, 4, (N, K)).astype(np.uint8)
    w_t = torch.from_numpy(wtab[codes])
    t0 = time.perf_counter()
    pw = prepare_weights(codes, LEVEL_SET)
    prep_s = time.perf_counter() - t0
    rows = []
    for M in Ms:
        acts = rng.integers(-8, 8, (M, K)).astype(np.int8)
        a_t = torch.from_numpy(acts.astype(np.float32))
        ref = torch.matmul(a_t, w_t.T).numpy().astype(np.int64)
        got = matmul(acts, pw, LEVEL_SET)
        ref64 = acts[:1].astype(np.float64) @ wtab[codes].astype(np.float64).T
        exact = bool(np.array_equal(got, ref) and np.array_equal(got[:1], ref64.astype(np.int64))
                     and K * 32 < FLOAT32_EXACT)
        fns = {"torch": lambda: torch.matmul(a_t, w_t.T), "sim": lambda: matmul(acts, pw, LEVEL_SET)}
        if args.from_codes:
            fns["from_codes"] = lambda: matmul(acts, codes, LEVEL_SET)
        times = race(fns, args.rounds, args.sample_s)
        macs = M * K * N
        row = {"model": model, "layer": name, "M": M, "K": K, "N": N, "exact": exact,
               "kernel": pw.fast_kernel(32), "prepare_s": prep_s,
               "torch_f32_s": spread(times["torch"]), "sim_s": spread(times["sim"]),
               "torch_gmacs_median": macs / statistics.median(times["torch"]) / 1e9,
               "sim_gmacs_median": macs / statistics.median(times["sim"]) / 1e9,
               "ratio": spread([t / s for t, s in zip(times["torch"], times["sim"])])}
        if args.from_codes:
            row["ratio_from_codes"] = spread([t / s for t, s in zip(times["torch"], times["from_codes"])])
        rows.append(row)
        r = row["ratio"]
        print(f"{model:9s} {name:13s} M={M:4d} K={K:5d} N={N:5d} {row['kernel']:8s} exact={exact} "
              f"torch {row['torch_gmacs_median']:6.1f} sim {row['sim_gmacs_median']:6.1f} GMAC/s  "
              f"ratio {r['median']:6.2f} [{r['min']:.2f}, {r['max']:.2f}]", flush=True)
    return rows


def summarize(rows: list[dict], np) -> dict:
    def gmean(xs):
        return float(np.exp(np.mean(np.log(xs))))

    out = {}
    for M in sorted({r["M"] for r in rows}):
        med = [r["ratio"]["median"] for r in rows if r["M"] == M]
        out[f"M={M}"] = {"geomean_median_ratio": gmean(med), "worst_shape_median_ratio": min(med),
                         "worst_shape_min_ratio": min(r["ratio"]["min"] for r in rows if r["M"] == M)}
    out["all"] = {"geomean_median_ratio": gmean([r["ratio"]["median"] for r in rows]),
                  "worst_shape_median_ratio": min(r["ratio"]["median"] for r in rows),
                  "every_shape_median_at_least_2x": all(r["ratio"]["median"] >= 2 for r in rows),
                  "all_exact": all(r["exact"] for r in rows)}
    return out


def markdown(run: dict) -> str:
    """The run as the table docs/sim.md quotes: ratio median [min, max] per shape and M, with the load average."""
    Ms = sorted({r["M"] for r in run["rows"]})
    head = "| model | layer | K x N | " + " | ".join(f"M = {M}" for M in Ms) + " |"
    lines = [f"threads {run['threads']}, load average {run['loadavg_before']} before, {run['loadavg_after']} after; "
             "torch f32 time / sim time, median [min, max] over the rounds", "", head,
             "|---|---|---|" + "---:|" * len(Ms)]
    for model, layer, K, N in dict.fromkeys((r["model"], r["layer"], r["K"], r["N"]) for r in run["rows"]):
        cells = []
        for M in Ms:
            r = next(x for x in run["rows"] if (x["model"], x["layer"], x["M"]) == (model, layer, M))["ratio"]
            cells.append(f"{r['median']:.2f} [{r['min']:.2f}, {r['max']:.2f}]")
        lines.append(f"| {model} | {layer} | {K} x {N} | " + " | ".join(cells) + " |")
    geo = [f"{run['summary'][f'M={M}']['geomean_median_ratio']:.2f}" for M in Ms]
    lines.append("| geometric mean of the medians | | | " + " | ".join(geo) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default=None, help="comma-separated thread counts (default 1,2; --quick: 1)")
    ap.add_argument("--quick", action="store_true", help="SmolLM2 shapes, M <= 64, fewer rounds")
    ap.add_argument("--rounds", type=int, default=None, help="alternating rounds per shape (default 9; --quick 5)")
    ap.add_argument("--sample-s", type=float, default=0.02, help="seconds of calls per timed sample")
    ap.add_argument("--from-codes", action="store_true", help="also time the whole call from uint8 codes")
    ap.add_argument("--out", type=Path, default=Path("docs/results/bench_sim.json"))
    args = ap.parse_args()
    threads = [int(t) for t in (args.threads or ("1" if args.quick else "1,2")).split(",")]
    args.rounds = args.rounds or (5 if args.quick else 9)
    os.environ.setdefault("NUMBA_NUM_THREADS", str(max(threads)))

    import numba
    import numpy as np
    import torch

    from qift_hw.core.formats import weight_int_values
    from qift_hw.core.io import write_json
    from qift_hw.core.provenance import provenance
    from qift_hw.sim import bytedot, matmul, prepare_weights

    cpu = cpu_info()
    print(f"CPU {cpu['model']} (LLVM: {cpu['llvm_host_cpu']}), {cpu['logical_cpus']} logical CPUs; "
          + ", ".join(f"{f}={'yes' if v else 'no'}" for f, v in cpu["flags"].items()))
    print(f"byte-dot kernel on AVX-512 VNNI: {bytedot.VNNI}; load average at start {loadavg()}", flush=True)
    wtab = weight_int_values(LEVEL_SET).astype(np.float32)
    models = {"smollm2": SHAPES["smollm2"]} if args.quick else SHAPES
    Ms = (1, 64) if args.quick else (1, 64, 512)
    runs = []
    for t in threads:
        torch.set_num_threads(t)
        numba.set_num_threads(min(t, numba.config.NUMBA_NUM_THREADS))
        pinned = {"torch": torch.get_num_threads(), "numba": numba.get_num_threads()}
        before = loadavg()
        print(f"== threads pinned: torch.set_num_threads({pinned['torch']}), numba.set_num_threads({pinned['numba']});"
              f" load average {before}", flush=True)
        rng = np.random.default_rng(0)
        rows = []
        for model, shapes in models.items():
            for name, (K, N) in shapes.items():
                rows += bench_shape(model, name, K, N, Ms, rng, args, np, torch, matmul, prepare_weights, wtab)
        after = loadavg()
        summary = summarize(rows, np)
        for key, s in summary.items():
            print(f"   {key}: " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                            for k, v in s.items()))
        print(f"   load average after {after}", flush=True)
        runs.append({"threads": t, "pinned": pinned, "loadavg_before": before, "loadavg_after": after,
                     "rows": rows, "summary": summary})
        print(markdown(runs[-1]), flush=True)
    try:
        layer = numba.threading_layer()
    except ValueError:
        layer = "none used (every call ran single-threaded)"
    write_json(args.out, {"level_set": LEVEL_SET, "cpu": cpu, "byte_dot_vnni": bytedot.VNNI,
                          "numba_threading_layer": layer, "torch": torch.__version__, "numba": numba.__version__,
                          "numpy": np.__version__, "rounds": args.rounds, "sample_s": args.sample_s,
                          "quick": args.quick, "runs": runs, "provenance": provenance()})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
