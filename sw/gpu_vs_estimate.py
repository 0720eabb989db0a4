"""Table: what the GPU measured (docs/results/gpu_bench.json, gpu_e2e.json) next to `qift-hw estimate`.

Runs on any machine (no GPU): it runs the estimate (`qift_hw.sim.estimate`) for each model and accelerator
configuration and lines its per-linear cycles (converted to microseconds at the stated clock) up with the measured W2 and FP16
kernel times, at decode (M = 1) and prefill (M = 512), plus the whole-model decode tokens/s.

    python sw/gpu_vs_estimate.py [--arrays 32x32@1000MHz/16GBps,128x128@1000MHz/256GBps]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

from qift_hw.core.io import write_text
from qift_hw.core.provenance import provenance, write_csv
from qift_hw.core.shapes import load_model_shape
from qift_hw.rtl.generate import parse_array_size
from qift_hw.sim.cycle_model import HwConfig
from qift_hw.sim.estimate import run_estimate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", default="docs/results/gpu_bench.json")
    ap.add_argument("--e2e", default="docs/results/gpu_e2e.json")
    ap.add_argument("--out", default="docs/results/gpu_vs_estimate.json")
    ap.add_argument("--models", default="smollm2,llama2-7b", help="model shapes (core.shapes names), comma-separated")
    ap.add_argument("--arrays", default="32x32@1000MHz/16GBps,128x128@1000MHz/256GBps",
                    help="accelerator configurations: ROWSxCOLS@CLOCKMHz/DRAMGBps, comma-separated")
    args = ap.parse_args()
    bench = json.load(open(args.bench))
    e2e = json.load(open(args.e2e)) if os.path.exists(args.e2e) else {"rows": []}
    by = {(r["N"], r["K"], r["M"], r["method"]): r["s"] for r in bench["rows"] if "s" in r}
    gpu_tok = {(r["model"], r["variant"], r["batch"]): r["tokens_per_s"] for r in e2e["rows"]}
    pos = e2e["rows"][0]["pos"] if e2e["rows"] else 128
    rows, totals = [], []
    for spec in args.arrays.split(","):
        m = re.fullmatch(r"(\d+x\d+)@([\d.]+)MHz/([\d.]+)GBps", spec)
        if not m:
            sys.exit(f"error: bad --arrays entry {spec!r}; write e.g. 32x32@1000MHz/16GBps")
        (R, C), mhz, gbps = parse_array_size(m.group(1)), float(m.group(2)), float(m.group(3))
        hw = HwConfig(rows=R, cols=C, clock_mhz=mhz, dram_gbps=gbps)
        for name in args.models.split(","):
            shape = load_model_shape(name)
            model = shape.name
            est = run_estimate(shape, hw, seqlen=512, context=pos)
            for phase, M in (("decode", 1), ("prefill", 512)):
                rep = est["reports"][f"w2_{phase}"]
                for r in rep["rows"]:
                    if r["kind"] != "linear":
                        continue
                    N, K = r["N"], r["K"]
                    w2, f16 = by.get((N, K, M, "w2")), by.get((N, K, M, "fp16"))
                    rows.append({"array": spec, "model": model, "phase": phase, "layer": r["name"], "M": M, "N": N,
                                 "K": K, "est_us": r["cycles"] / mhz, "est_util": r["util"],
                                 "gpu_w2_us": w2 * 1e6 if w2 else None, "gpu_fp16_us": f16 * 1e6 if f16 else None})
                t = rep["totals"]
                totals.append({"array": spec, "model": model, "phase": phase, "est_tokens_per_s": t["tokens_per_s"],
                               "est_pe_util": t["pe_util"], "est_dram_mb_per_token": t["dram_bytes_per_token"] / 1e6,
                               "gpu_w2_tokens_per_s": gpu_tok.get((model, "w2", 1)) if phase == "decode" else None,
                               "gpu_fp16_tokens_per_s": gpu_tok.get((model, "fp16", 1)) if phase == "decode" else None})
    prov = provenance()
    data = {"gpu": bench["device"]["name"], "context": pos, "rows": rows, "totals": totals,
            "command": prov["command"], "provenance": prov}
    write_text(args.out, json.dumps(data, indent=1))
    stem = os.path.splitext(args.out)[0]
    write_csv(stem + ".csv", rows)
    write_csv(stem + "_totals.csv", totals)
    print("| accelerator | model | phase | layer (N x K) | estimate us | est. PE util | GPU W2 us | GPU FP16 us |")
    print("|---|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        g = f"{r['gpu_w2_us']:.2f}" if r["gpu_w2_us"] else "-"
        f = f"{r['gpu_fp16_us']:.2f}" if r["gpu_fp16_us"] else "-"
        print(f"| {r['array']} | {r['model']} | {r['phase']} | {r['layer']} ({r['N']}x{r['K']}) | {r['est_us']:.1f} |"
              f" {100 * r['est_util']:.1f}% | {g} | {f} |")
    print()
    print("| accelerator | model | phase | estimate tokens/s | est. PE util | est. DRAM MB/token | GPU W2 tokens/s"
          " | GPU FP16 tokens/s |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for t in totals:
        g = f"{t['gpu_w2_tokens_per_s']:.0f}" if t["gpu_w2_tokens_per_s"] else "-"
        f = f"{t['gpu_fp16_tokens_per_s']:.0f}" if t["gpu_fp16_tokens_per_s"] else "-"
        print(f"| {t['array']} | {t['model']} | {t['phase']} | {t['est_tokens_per_s']:.1f} | {100 * t['est_pe_util']:.1f}% |"
              f" {t['est_dram_mb_per_token']:.1f} | {g} | {f} |")


if __name__ == "__main__":
    main()
