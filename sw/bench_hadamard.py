"""Time the fast Hadamard transform against the dense product x @ H^T and plot which orders are buildable.

Usage: .venv/bin/python sw/bench_hadamard.py [--batch 512] [--threads 2] [--repeats 20] [--device cpu|cuda]
Writes docs/results/bench_hadamard.json (or --out) and docs/results/hadamard_orders.png (unless --no-plot).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from qift_hw.core import hadamard as hd
from qift_hw.core.io import save_figure, write_text
from qift_hw.core.provenance import provenance

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
SIZES = (576, 1536, 4096, 11008, 14336)


def _median_seconds(fn, repeats: int, device: torch.device) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(batch: int, repeats: int, device: torch.device) -> list[dict]:
    """Median wall time of the fast transform and of the dense product for each size, same process."""
    rows = []
    gen = torch.Generator().manual_seed(0)
    for n in SIZES:
        k, m = hd.split_order(n)
        x = torch.randn(batch, n, generator=gen).to(device)
        h = hd.hadamard_matrix_float(n, dtype=torch.float32, normalize=True).to(device)
        reps = repeats if n <= 4096 else max(3, repeats // 5)
        dense = _median_seconds(lambda: x @ h.T, reps, device)
        fast = _median_seconds(lambda: hd.hadamard_transform(x), reps, device)
        xi = torch.randint(-8, 8, (batch, n), generator=gen, dtype=torch.int32).to(device)
        fast_int = _median_seconds(lambda: hd.hadamard_transform(xi, normalize=False), reps, device)
        err = (hd.hadamard_transform(x) - x @ h.T).abs().max().item()
        rows.append({
            "n": n, "K": k, "pow2": m, "batch": batch, "repeats": reps,
            "dense_ms": dense * 1e3, "fast_ms": fast * 1e3, "fast_int32_ms": fast_int * 1e3,
            "speedup_fast_vs_dense": dense / fast,
            "adds_per_row_fast": n * (int(math.log2(m)) + k), "macs_per_row_dense": n * n,
            "max_abs_diff_float32": err,
        })
        print(f"n={n:6d} K={k:3d} dense {dense * 1e3:8.2f} ms  fast {fast * 1e3:8.2f} ms  "
              f"(x{dense / fast:.2f})  int32 {fast_int * 1e3:8.2f} ms")
        del h
    return rows


def plot_orders(path: Path) -> None:
    """Every multiple of 4 up to MAX_K, coloured by the construction of its smallest-K split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = {"Sylvester": "tab:gray", "Paley I": "tab:blue", "Paley II": "tab:green", "Kronecker": "tab:purple",
             "Williamson": "tab:orange", "K x 2^k (k >= 1)": "tab:olive", "unsupported": "tab:red"}
    fig, ax = plt.subplots(figsize=(11, 2.6))
    seen = set()
    for n in range(4, hd.MAX_K + 1, 4):
        if not hd.is_supported(n):
            kind = "unsupported"
        else:
            k, m = hd.split_order(n)
            kind = "Sylvester" if k == 1 else "K x 2^k (k >= 1)" if m > 1 else hd.construction(k).split(",")[0]
            kind = "Kronecker" if kind.startswith("Kronecker") else kind
        ax.bar(n, 1, width=3.4, color=kinds[kind], label=None if kind in seen else kind)
        if kind in ("unsupported", "Williamson"):
            ax.text(n, 1.03, str(n), ha="center", fontsize=7, rotation=90)
        seen.add(kind)
    ax.set_yticks([])
    ax.set_ylim(0, 1.35)
    ax.set_xlabel("order n (multiples of 4 up to MAX_K)")
    ax.set_title("How qift_hw.core.hadamard builds H_n (n = K x 2^k, smallest K)")
    ax.legend(ncol=7, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.35), frameon=False)
    fig.tight_layout()
    save_figure(fig, path, dpi=130)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512, help="rows (tokens) per transform")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=20, help="timed repetitions per case (median reported)")
    parser.add_argument("--device", default="cpu", help="torch device for the timing (cpu or cuda)")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_hadamard.json", help="JSON result file")
    parser.add_argument("--no-plot", action="store_true", help="skip docs/results/hadamard_orders.png")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    result = {
        "what": "median wall time of hadamard_transform(x) vs x @ H_n^T (float32, H precomputed), same process",
        "command": "python sw/bench_hadamard.py "
        f"--batch {args.batch} --threads {args.threads} --repeats {args.repeats} --device {args.device}",
        "torch": torch.__version__, "threads": args.threads, "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "load_avg_1min": os.getloadavg()[0],
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "rows": bench(args.batch, args.repeats, device),
        "provenance": provenance(),
    }
    write_text(args.out, json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    if not args.no_plot:
        plot_orders(RESULTS / "hadamard_orders.png")
        print(f"wrote {RESULTS / 'hadamard_orders.png'}")


if __name__ == "__main__":
    main()
