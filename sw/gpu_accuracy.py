"""Same configuration on CPU and CUDA: do the integer codes agree, and how far apart are the perplexities?

Quantizes a small random LLaMA (``models.tiny_llama``; no download, so it runs on the offline GPU machine)
with the full pipeline (rotation, GPTQ or RTN, W2A4KV4 fake-quant forward) once with ``device=cpu`` and once
with ``device=cuda`` from identical weights and calibration tokens, then compares every layer's codes and
the perplexity on the same evaluation windows.

    python sw/gpu_accuracy.py --out docs/results/gpu_accuracy.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time

import torch

from qift_hw.algo.evaluate import evaluate_ppl
from qift_hw.core.io import write_text
from qift_hw.core.provenance import command_line, provenance
from qift_hw.algo.models import tiny_llama
from qift_hw.algo.config import QuantConfig
from qift_hw.algo.quantize import quantize_model


def run(device: str, base, calib, evalw, **cfg) -> tuple[dict, float, float]:
    model = copy.deepcopy(base).to(device)
    config = QuantConfig(device=device, calib_windows=calib.shape[0], calib_seqlen=calib.shape[1], **cfg)
    t = time.perf_counter()
    qm = quantize_model(model, None, config, calib=calib, progress=False)
    elapsed = time.perf_counter() - t
    ppl = evaluate_ppl(qm.model, evalw, device=device, progress=False)
    codes = {k: v.codes.cpu() for k, v in qm.weights.items()}
    return codes, ppl, elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/results/gpu_accuracy.json")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--levels", default="pot_mnz")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("error: sw/gpu_accuracy.py needs a CUDA GPU")
    torch.manual_seed(0)
    base = tiny_llama(seed=0, hidden=args.hidden, intermediate=2 * args.hidden, layers=args.layers, heads=4,
                      kv_heads=2, vocab=512)
    g = torch.Generator().manual_seed(1)
    calib = torch.randint(0, 512, (32, 128), generator=g)
    evalw = torch.randint(0, 512, (16, 128), generator=g)
    rows = []
    for method, dt in (("rtn", "float32"), ("gptq", "float32"), ("gptq", "float64")):
        cfg = dict(levels=args.levels, method=method, hessian_dtype=dt, gptq_dtype=dt)
        try:
            res = {d: run(d, base, calib, evalw, **cfg) for d in ("cpu", "cuda")}
        except Exception as exc:  # record what broke on this device and go on with the next configuration
            rows.append({"method": method, "dtype": dt, "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
            print(f"{method} {dt}: failed: {rows[-1]['error']}", flush=True)
            continue
        (c_cpu, p_cpu, t_cpu), (c_gpu, p_gpu, t_gpu) = res["cpu"], res["cuda"]
        total = sum(v.numel() for v in c_cpu.values())
        diff = sum(int((c_cpu[k] != c_gpu[k]).sum()) for k in c_cpu)
        row = {"method": method, "dtype": dt, "codes_total": total, "codes_differing": diff,
               "frac_differing": diff / total, "ppl_cpu": p_cpu, "ppl_cuda": p_gpu,
               "ppl_rel_diff": abs(p_gpu - p_cpu) / p_cpu, "seconds_cpu": t_cpu, "seconds_cuda": t_gpu}
        rows.append(row)
        print(f"{method:5s} {dt}: {diff}/{total} codes differ ({100 * diff / total:.4f}%), "
              f"ppl cpu {p_cpu:.4f} cuda {p_gpu:.4f} (rel diff {row['ppl_rel_diff']:.2e})", flush=True)
    data = {"device": torch.cuda.get_device_name(0), "model": {"hidden": args.hidden, "layers": args.layers,
            "vocab": 512, "random": True}, "config": "W2A4KV4, rotation on, levels " + args.levels,
            "rows": rows, "command": command_line(), "provenance": provenance()}
    write_text(args.out, json.dumps(data, indent=1))


if __name__ == "__main__":
    main()
