"""End-to-end decode tokens/s of a random-weight LLaMA-style stack: FP16 (cuBLAS) against W2 (Triton kernel).

Each decode step (batch B, context ``--pos`` tokens already in the KV cache) is captured as one CUDA graph
and replayed; the median replay time gives tokens/s = B / time. W2 replaces every decoder linear; the LM head
stays FP16 (``w2``) or is W2 too (``w2_all``). Before timing, the W2 logits are checked against the same
weights through the PyTorch dequantize-and-matmul path.

    python sw/gpu_e2e.py --out docs/results/gpu_e2e.json [--models smollm2-135m,llama2-7b] [--batches 1,8]
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time

import torch

from qift_hw.gpu import dispatch
from qift_hw.core.io import write_text
from qift_hw.gpu.decoder import Decoder, compiled_glue, step_bytes
from qift_hw.core.shapes import MODELS, load_model_shape
from qift_hw.core.provenance import provenance, write_csv
from qift_hw.gpu.timing import copy_bandwidth, device_info, time_graph

VARIANTS = {"fp16": ("fp16", "fp16"), "w2": ("w2", "fp16"), "w2_all": ("w2", "w2")}


def _save(path: str, data: dict) -> None:
    write_text(path, json.dumps(data, indent=1))


def time_step(model: Decoder, batch: int, pos: int, replays: int = 20) -> dict:
    """Median seconds per decode step, one step per captured CUDA graph (`gpu.timing.time_graph`); plus an eager
    (uncaptured) figure."""
    tokens = torch.randint(0, model.shape.vocab, (batch,), device="cuda")
    for _ in range(3):
        model.step(tokens, pos)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(3):
        model.step(tokens, pos)
    torch.cuda.synchronize()
    eager = (time.perf_counter() - t0) / 3
    t = time_graph(lambda _: model.step(tokens, pos), 1, calls=1, replays=replays)
    return {"s": t["s"], "min_s": t["min_s"], "max_s": t["max_s"], "eager_s": eager}


def run_model(mname: str, batches: list[int], pos: int, bw: float, variants: list[str], glue) -> list[dict]:
    shape = load_model_shape(mname)
    rows = []
    for B in batches:
        for v in variants:
            weights, head = VARIANTS[v]
            model = Decoder(shape, weights, head, max_len=pos + 8, batch=B, glue=glue)
            check = None
            if weights == "w2":
                for N, K in {(pw.N, pw.K) for pw in model.w2_weights}:
                    if not dispatch.is_tuned(B, N, K, "ptx"):
                        dispatch.autotune(B, N, K, "ptx")
                tokens = torch.randint(0, shape.vocab, (B,), device="cuda")
                y = model.step(tokens, pos).float()
                model.impl = "torch"
                ref = model.step(tokens, pos).float()
                model.impl = "auto"
                check = float((y - ref).norm() / ref.norm())
            t = time_step(model, B, pos)
            nb = step_bytes(shape, weights, head, pos, B)
            r = {"model": mname, "variant": v, "batch": B, "pos": pos, "glue": "compiled" if glue else "eager", **t, "tokens_per_s": B / t["s"],
                 "eager_tokens_per_s": B / t["eager_s"], "bytes": nb, "gbs": nb["total"] / t["s"] / 1e9,
                 "frac_copy_bw": nb["total"] / t["s"] / bw, "logits_rel_err_vs_torch_path": check}
            rows.append(r)
            print(f"{mname:14s} {v:7s} B={B}  {t['s'] * 1e3:8.3f} ms/step  {r['tokens_per_s']:9.1f} tok/s  "
                  f"(eager {r['eager_tokens_per_s']:8.1f})  {r['gbs']:7.0f} GB/s  check {check}", flush=True)
            del model
            gc.collect()
            torch.cuda.empty_cache()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/results/gpu_e2e.json", help="JSON file to write")
    ap.add_argument("--models", default="smollm2-135m,llama2-7b", help="comma-separated model shapes")
    ap.add_argument("--batches", default="1,8", help="comma-separated decode batch sizes")
    ap.add_argument("--pos", type=int, default=128, help="tokens already in the KV cache")
    ap.add_argument("--variants", default="fp16,w2,w2_all", help="comma-separated: fp16, w2, w2_all")
    ap.add_argument("--eager-glue", action="store_true", help="do not fuse the element-wise glue with torch.compile")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("error: sw/gpu_e2e.py needs a CUDA GPU")
    info = device_info()
    bw = copy_bandwidth()
    glue, glue_note = None, "eager by request"
    if not args.eager_glue:
        try:
            glue = compiled_glue()
            x = torch.randn(1, 64, device="cuda", dtype=torch.float16)
            glue["add_rms"](x, x, x[0])
            glue["silu_mul"](x, x)
            glue_note = "torch.compile"
        except Exception as exc:  # no working inductor on this machine: time the unfused glue instead
            glue, glue_note = None, f"eager, torch.compile failed: {type(exc).__name__}: {str(exc)[:200]}"
    print("glue:", glue_note, flush=True)
    prov = provenance()
    data = {"device": info, "copy_bandwidth": bw, "command": prov["command"], "glue": glue_note, "rows": [],
            "provenance": prov}
    for m in args.models.split(","):
        data["rows"] += run_model(m, [int(b) for b in args.batches.split(",")], args.pos, bw,
                                  args.variants.split(","), glue)
        _save(args.out, data)
    base = {(r["model"], r["batch"]): r["s"] for r in data["rows"] if r["variant"] == "fp16"}
    for r in data["rows"]:
        if (r["model"], r["batch"]) in base:
            r["speedup_vs_fp16"] = base[(r["model"], r["batch"])] / r["s"]
    _save(args.out, data)
    write_csv(args.out.rsplit(".", 1)[0] + ".csv", [{k: v for k, v in r.items() if k != "bytes"} for r in data["rows"]])
    print("\nmodel          variant  B   ms/step   tok/s  speedup  GB/s")
    for r in data["rows"]:
        print(f"{r['model']:14s} {r['variant']:7s} {r['batch']:2d} {r['s'] * 1e3:8.3f} {r['tokens_per_s']:8.1f}"
              f" {r.get('speedup_vs_fp16', 0):6.2f}x {r['gbs']:6.0f}")


if __name__ == "__main__":
    main()
