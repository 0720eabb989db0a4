"""Table: the W2/FP16 decode ratios measured on the H100 (docs/results/gpu_bench.json, gpu_e2e.json) beside the ratios
the accelerator model predicts on an H100-like roofline (sim/accelerators/h100_roofline.yaml).

Runs on any machine (no GPU). The model runs each decode step on the architecture file with W2 (pot_mnz) and W8
(int8) weights; FP16 weights are not a level set, so the FP16 prediction is the W8 run with each weight row's
DRAM bytes replaced by K x N x 2 (no scales) and the row's time the larger of its W8 cycles and those bytes at the
DRAM rate (a per-row roofline; decode rows are DRAM-bound on this file). Per linear (M = 1): predicted and
measured W2 and FP16 microseconds and their ratio; whole decode step (batch 1 and 8, context as measured):
predicted and measured tokens/s for FP16, W2 (LM head FP16) and W2 everywhere. A second per-linear ratio adds a
fixed cost per kernel (``--launch-us``) to both predictions. docs/accelerator.md discusses the gap.

    python sw/gpu_vs_estimate.py [--arch h100_roofline] [--set dram.gbps=2970]
"""

from __future__ import annotations

import argparse
import json
import math
import os

from qift_hw.core.io import write_text
from qift_hw.core.provenance import provenance, write_csv
from qift_hw.core.shapes import load_model_shape
from qift_hw.sim.accelerator import estimate
from qift_hw.sim.arch import load_arch

DRAM_KEYS = ("dram_act_read_bytes", "dram_weight_read_bytes", "dram_kv_read_bytes", "dram_out_write_bytes",
             "dram_kv_write_bytes")
FP16_BYTES = 2
VARIANTS = {"fp16": ("fp16", "fp16"), "w2": ("pot_mnz", "fp16"), "w2_all": ("pot_mnz", "pot_mnz")}
"""gpu_e2e.py's variants: (decoder linears, LM head) weight formats."""


def _fp16_cycles(row: dict, bytes_per_cycle: float) -> float:
    """Cycles of one instance of a W8 row with FP16 weights instead (per-row roofline)."""
    if row["kind"] not in ("linear", "lm_head"):
        return row["total_cycles"]
    dram = sum(row[k] for k in DRAM_KEYS) - row["dram_weight_read_bytes"] + row["K"] * row["N"] * FP16_BYTES
    return max(row["total_cycles"], math.ceil(dram / bytes_per_cycle))


def step_cycles(rows: dict[str, list[dict]], linears: str, head: str, bpc: float) -> float:
    """Cycles of one decode step with ``linears`` / ``head`` weights in pot_mnz or fp16 (from the W8 rows)."""
    total = 0.0
    for r in rows["w8"]:
        fmt = head if r["kind"] == "lm_head" else linears if r["kind"] == "linear" else None
        if fmt == "pot_mnz":
            twin = next(x for x in rows["w2"] if x["layer"] == r["layer"] and x["kind"] == r["kind"])
            total += twin["total_cycles"] * twin["count"]
        elif fmt == "fp16":
            total += _fp16_cycles(r, bpc) * r["count"]
        else:
            total += r["total_cycles"] * r["count"]
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", default="docs/results/gpu_bench.json")
    ap.add_argument("--e2e", default="docs/results/gpu_e2e.json")
    ap.add_argument("--out", default="docs/results/gpu_vs_estimate.json")
    ap.add_argument("--models", default="smollm2,llama2-7b", help="model shapes (core.shapes names), comma-separated")
    ap.add_argument("--arch", default="h100_roofline", help="architecture preset or YAML file")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="architecture override")
    ap.add_argument("--launch-us", type=float, default=3.0, help="fixed cost per kernel added to both predictions "
                    "in the floor column (about the smallest FP16 GEMV time measured, 2.98 us)")
    args = ap.parse_args()
    import yaml

    overrides = {k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in args.set)}
    arch = load_arch(args.arch, overrides)
    bpc, mhz = arch.bytes_per_cycle, arch.clock_mhz
    bench = json.load(open(args.bench))
    e2e = json.load(open(args.e2e)) if os.path.exists(args.e2e) else {"rows": []}
    gpu_s = {(r["N"], r["K"], r["M"], r["method"]): r["s"] for r in bench["rows"] if "s" in r}
    gpu_tok = {(r["model"], r["variant"], r["batch"]): r["tokens_per_s"] for r in e2e["rows"]}
    pos = e2e["rows"][0]["pos"] if e2e["rows"] else 128
    batches = sorted({r["batch"] for r in e2e["rows"]}) or [1]
    linears, steps = [], []
    for name in args.models.split(","):
        shape = load_model_shape(name)
        for batch in batches:
            res = estimate(arch, shape, ("pot_mnz", "int8"), seqlen=pos, context=pos, batch=batch, lm_head="int8",
                           phases=("decode",), labels=("w2", "w8"))
            w2_head = estimate(arch, shape, ("pot_mnz",), seqlen=pos, context=pos, batch=batch, lm_head="pot_mnz",
                               phases=("decode",), labels=("w2",))
            rows = {"w2": [r for r in res["layers"] if r["format"] == "w2" and r["kind"] != "lm_head"]
                    + [r for r in w2_head["layers"] if r["kind"] == "lm_head"],
                    "w8": [r for r in res["layers"] if r["format"] == "w8"]}
            fp16 = step_cycles(rows, "fp16", "fp16", bpc)
            for variant, (lin, head) in VARIANTS.items():
                cyc = step_cycles(rows, lin, head, bpc)
                measured = gpu_tok.get((shape.name, variant, batch))
                steps.append({"model": shape.name, "batch": batch, "context": pos, "variant": variant,
                              "pred_tokens_per_s": batch * mhz * 1e6 / cyc, "pred_speedup_vs_fp16": fp16 / cyc,
                              "gpu_tokens_per_s": measured,
                              "gpu_speedup_vs_fp16": measured / gpu_tok[(shape.name, "fp16", batch)]
                              if measured and gpu_tok.get((shape.name, "fp16", batch)) else None})
            if batch != 1:
                continue
            for r8 in rows["w8"]:
                if r8["kind"] not in ("linear", "lm_head"):
                    continue
                r2 = next(x for x in rows["w2"] if x["layer"] == r8["layer"])
                N, K = r8["N"], r8["K"]
                p2, p16 = r2["total_cycles"] / mhz, _fp16_cycles(r8, bpc) / mhz
                g2, g16 = gpu_s.get((N, K, 1, "w2")), gpu_s.get((N, K, 1, "fp16"))
                linears.append({"model": shape.name, "layer": r8["layer"], "N": N, "K": K, "M": 1,
                                "pred_w2_us": p2, "pred_fp16_us": p16, "pred_ratio": p16 / p2,
                                "pred_floor_ratio": (p16 + args.launch_us) / (p2 + args.launch_us),
                                "gpu_w2_us": g2 * 1e6 if g2 else None, "gpu_fp16_us": g16 * 1e6 if g16 else None,
                                "gpu_ratio": g16 / g2 if g2 and g16 else None})
    prov = provenance()
    data = {"gpu": bench["device"]["name"], "arch": arch.model_dump(mode="json"), "arch_digest": arch.digest(),
            "context": pos, "linears": linears, "steps": steps, "command": prov["command"], "provenance": prov}
    write_text(args.out, json.dumps(data, indent=1))
    stem = os.path.splitext(args.out)[0]
    write_csv(stem + ".csv", linears)
    write_csv(stem + "_totals.csv", steps)

    def f(x, spec):
        return "-" if x is None else format(x, spec)

    print(f"Roofline {arch.name}: {arch.array.rows}x{arch.array.cols} MACs/cycle at {mhz:g} MHz, "
          f"{arch.dram.gbps:g} GB/s; decode at context {pos}")
    print()
    print(f"| model | linear (N x K) | predicted W2 us | predicted FP16 us | predicted W2/FP16 | with a "
          f"{args.launch_us:g} us floor | H100 W2 us | H100 FP16 us | measured W2/FP16 |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    seen = set()
    for r in linears:
        key = (r["model"], r["N"], r["K"])
        if key in seen:
            continue
        seen.add(key)
        print(f"| {r['model']} | {r['layer']} ({r['N']}x{r['K']}) | {r['pred_w2_us']:.2f} | {r['pred_fp16_us']:.2f} |"
              f" {r['pred_ratio']:.2f}x | {r['pred_floor_ratio']:.2f}x | {f(r['gpu_w2_us'], '.2f')} | {f(r['gpu_fp16_us'], '.2f')} |"
              f" {f(r['gpu_ratio'], '.2f')}{'x' if r['gpu_ratio'] else ''} |")
    print()
    print("| model | batch | variant | predicted tokens/s | predicted vs FP16 | H100 tokens/s | measured vs FP16 |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for s in steps:
        print(f"| {s['model']} | {s['batch']} | {s['variant']} | {s['pred_tokens_per_s']:,.0f} |"
              f" {s['pred_speedup_vs_fp16']:.2f}x | {f(s['gpu_tokens_per_s'], ',.0f')} |"
              f" {f(s['gpu_speedup_vs_fp16'], '.2f')}{'x' if s['gpu_speedup_vs_fp16'] else ''} |")


if __name__ == "__main__":
    main()
