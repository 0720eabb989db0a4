"""Time the rotated W2A4KV4 pipeline on SmolLM2-135M on this machine: rotation, GPTQ, evaluation, peak memory.

Baselines in the same process: the float model's evaluation on the same windows, and one float forward over the
calibration windows. Writes docs/results/bench_pipeline.json (atomically).

    .venv/bin/python sw/bench_pipeline.py [--threads 2] [--calib-windows 128] [--calib-seqlen 512] [--levels mnz]
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import resource
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--levels", default="mnz")
    ap.add_argument("--calib-windows", type=int, default=128)
    ap.add_argument("--calib-seqlen", type=int, default=512)
    ap.add_argument("--seqlen", type=int, default=2048, help="evaluation window length")
    ap.add_argument("--windows", type=int, default=None, help="evaluation windows (default: all of the eval split)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-true-sequential", action="store_true",
                    help="one Hessian pass per layer (all groups from the float-weight layer) instead of four")
    ap.add_argument("--out", default="docs/results/bench_pipeline.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from qift_hw.algo.data import get_windows
    from qift_hw.algo.evaluate import evaluate_ppl
    from qift_hw.core.io import write_json
    from qift_hw.core.provenance import provenance
    from qift_hw.algo.models import load_model
    from qift_hw.algo.config import QuantConfig
    from qift_hw.algo.quantize import quantize_model
    from qift_hw.algo.rotation import rotate_model

    load_before = os.getloadavg()
    t = {}
    cpu = {}
    t0, c0 = time.perf_counter(), time.process_time()
    base, tok = load_model("smollm2", device="cpu")
    t["load_s"], cpu["load_s"] = time.perf_counter() - t0, time.process_time() - c0
    ev = get_windows(tok, "pydoc", "eval", args.seqlen, args.windows)
    calib = get_windows(tok, "pydoc", "calib", args.calib_seqlen, args.calib_windows, 0)

    t0, c0 = time.perf_counter(), time.process_time()
    ppl_fp = evaluate_ppl(base, ev, device=args.device, progress=False)
    t["eval_fp_s"], cpu["eval_fp_s"] = time.perf_counter() - t0, time.process_time() - c0

    t0, c0 = time.perf_counter(), time.process_time()
    with torch.no_grad():
        for b in calib.split(8):
            base.model(input_ids=b.to(args.device), use_cache=False)
    t["fp_forward_calib_s"], cpu["fp_forward_calib_s"] = time.perf_counter() - t0, time.process_time() - c0

    model = copy.deepcopy(base)
    t0, c0 = time.perf_counter(), time.process_time()
    rotate_model(model, seed=0)
    t["rotate_s"], cpu["rotate_s"] = time.perf_counter() - t0, time.process_time() - c0
    del model

    model = copy.deepcopy(base)
    cfg = QuantConfig(levels=args.levels, method="gptq", calib_windows=args.calib_windows,
                      calib_seqlen=args.calib_seqlen, device=args.device,
                      true_sequential=not args.no_true_sequential)
    t0, c0 = time.perf_counter(), time.process_time()
    qm = quantize_model(model, tok, cfg, calib=calib, progress=True)
    t["quantize_total_s"], cpu["quantize_total_s"] = time.perf_counter() - t0, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    ppl_q = evaluate_ppl(model, ev, device=args.device, progress=False)
    t["eval_quant_s"], cpu["eval_quant_s"] = time.perf_counter() - t0, time.process_time() - c0
    for d in (t, cpu):
        d["gptq_run_plus_eval_s"] = d["quantize_total_s"] + d["eval_quant_s"]
    per_window = t["eval_quant_s"] / ev.shape[0]

    result = {
        "what": f"W2A4KV4 GPTQ ({args.levels}, true_sequential={cfg.true_sequential}) on SmolLM2-135M, "
                f"calibration {args.calib_windows} x {args.calib_seqlen} "
                f"tokens, evaluation {ev.shape[0]} x {args.seqlen} tokens (pydoc eval split)",
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform(), "torch": torch.__version__, "device": args.device,
                    "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "wall_seconds": t,
        "process_cpu_seconds": cpu,
        "note": "wall times depend on how busy the machine was (see loadavg); process CPU seconds / torch_threads "
                "estimates the wall time on otherwise idle cores",
        "eval_quant_s_per_window": per_window,
        "pipeline_breakdown_s": qm.timings,
        "ratios": {"eval_quant_over_fp": t["eval_quant_s"] / t["eval_fp_s"],
                   "quantize_over_fp_calib_forward": t["quantize_total_s"] / t["fp_forward_calib_s"]},
        "ppl": {"fp": ppl_fp, "w2a4kv4_gptq": ppl_q},
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "goal": "full GPTQ run plus evaluation well under 600 s on 2 cores",
        "provenance": provenance(),
    }
    write_json(Path(args.out), result)
    print(result)


if __name__ == "__main__":
    main()
