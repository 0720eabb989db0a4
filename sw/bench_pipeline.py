"""Time the rotated W2A4KV4 pipeline on SmolLM2-135M on this machine: rotation, GPTQ, evaluation, peak memory.

Baselines in the same process: the float model's evaluation on the same windows, and one float forward over the
calibration windows. Records per stage the wall and process CPU seconds and the load average before and after,
the GPTQ breakdown, the threads, the CPU model and ISA flags, the perplexities (all digits) and provenance.
Writes docs/results/bench_pipeline.json (atomically).

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

from bench_sim import cpu_info, loadavg


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
    t: dict[str, float] = {}
    cpu: dict[str, float] = {}
    loads: dict[str, dict] = {}

    def stage(key: str, fn):
        """fn(), recording its wall and process CPU seconds and the load average around it under `key`."""
        before = loadavg()
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        t[key], cpu[key] = time.perf_counter() - t0, time.process_time() - c0
        loads[key] = {"before": before, "after": loadavg()}
        print(f"{key}: {t[key]:.1f} s wall, {cpu[key]:.1f} s CPU, load average {before} -> {loads[key]['after']}",
              flush=True)
        return out

    base, tok = stage("load_s", lambda: load_model("smollm2", device="cpu"))
    ev = get_windows(tok, "pydoc", "eval", args.seqlen, args.windows)
    calib = get_windows(tok, "pydoc", "calib", args.calib_seqlen, args.calib_windows, 0)
    ppl_fp = stage("eval_fp_s", lambda: evaluate_ppl(base, ev, device=args.device, progress=False))

    def fp_forward() -> None:
        with torch.no_grad():
            for b in calib.split(8):
                base.model(input_ids=b.to(args.device), use_cache=False)

    stage("fp_forward_calib_s", fp_forward)
    model = copy.deepcopy(base)
    stage("rotate_s", lambda: rotate_model(model, seed=0))
    del model

    model = copy.deepcopy(base)
    cfg = QuantConfig(levels=args.levels, method="gptq", calib_windows=args.calib_windows,
                      calib_seqlen=args.calib_seqlen, device=args.device,
                      true_sequential=not args.no_true_sequential)
    qm = stage("quantize_total_s", lambda: quantize_model(model, tok, cfg, calib=calib, progress=True))
    ppl_q = stage("eval_quant_s", lambda: evaluate_ppl(model, ev, device=args.device, progress=False))
    for d in (t, cpu):
        d["gptq_run_plus_eval_s"] = d["quantize_total_s"] + d["eval_quant_s"]
    per_window = t["eval_quant_s"] / ev.shape[0]

    result = {
        "what": f"W2A4KV4 GPTQ ({args.levels}, true_sequential={cfg.true_sequential}) on SmolLM2-135M, "
                f"calibration {args.calib_windows} x {args.calib_seqlen} "
                f"tokens, evaluation {ev.shape[0]} x {args.seqlen} tokens (pydoc eval split)",
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform(), "torch": torch.__version__, "device": args.device,
                    "cpu": cpu_info(), "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "wall_seconds": t,
        "process_cpu_seconds": cpu,
        "loadavg_per_stage": loads,
        "note": "wall times depend on how busy the machine was (see loadavg); process CPU seconds / torch_threads "
                "estimates the wall time on otherwise idle cores",
        "eval_quant_s_per_window": per_window,
        "pipeline_breakdown_s": qm.timings,
        "ratios": {"eval_quant_over_fp": t["eval_quant_s"] / t["eval_fp_s"],
                   "quantize_over_fp_calib_forward": t["quantize_total_s"] / t["fp_forward_calib_s"]},
        "ppl": {"fp": ppl_fp, "w2a4kv4_gptq": ppl_q, "w2a4kv4_gptq_repr": repr(ppl_q)},
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "goal": "full GPTQ run plus evaluation under 300 s on 2 cores, perplexity digits unchanged",
        "provenance": provenance(),
    }
    write_json(Path(args.out), result)
    print(result)


if __name__ == "__main__":
    main()
