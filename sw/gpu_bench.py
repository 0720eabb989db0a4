"""Throughput of the W2 kernel against FP16 cuBLAS, INT8 and FP8 on the linear shapes of real models.

Needs a CUDA GPU. For each model's distinct linear shapes and each batch M (decode 1, 8; prefill 512, 2048)
it times, as CUDA graphs over rotating weight copies (cold L2, see ``qift_hw.gpu.timing``):
  fp16        torch F.linear (cuBLAS) on an fp16 weight
  w2          the W2 path with PTX decode; kernel and tile tuned per shape among: CUDA-core GEMV (M = 1),
              CUDA-core multi-row GEMV (M <= 8), tensor-core fused matmul, and for large M decode-to-fp16
              then cuBLAS (``deq_mm``)
  w2_triton   the same kernels with plain-Triton decode (decode sizes only): what the PTX look-up buys
  int8        torch._int_mm, W8A8 (M padded to 32 where cuBLASLt needs M > 16), int32 out, no scaling
  fp8         torch._scaled_mm e4m3 x e4m3 -> fp16, per-tensor scales (M padded to 16)
and writes JSON with the device, the measured copy bandwidth and every row.

    python sw/gpu_bench.py --out docs/results/gpu_bench.json [--models llama2-7b] [--ms 1,8]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F

from qift_hw.gpu import dispatch
from qift_hw.core.io import write_text
from qift_hw.gpu import w2_kernel as wk
from qift_hw.gpu.packed import PackedW2, dequantize_w2, random_packed
from qift_hw.core.shapes import MODELS, load_model_shape
from qift_hw.gpu.timing import copies_needed, copy_bandwidth, device_info, time_graph


def _save(path: str, data: dict) -> None:
    write_text(path, json.dumps(data, indent=1))


def _w2_copies(N: int, K: int, n: int) -> list[PackedW2]:
    base = random_packed(N, K, device="cuda", seed=N * 7 + K)
    return [base] + [PackedW2(torch.randint(0, 256, base.packed.shape, dtype=torch.uint8, device="cuda"),
                              base.scale.clone(), base.table, K, base.level_set) for _ in range(n - 1)]


def bench_shape(N: int, K: int, Ms: list[int], l2: int, with_triton: bool, with_low: bool) -> list[dict]:
    """All methods at all batch sizes for one (N, K) weight shape."""
    rows = []
    fp16_bytes, w2_bytes = N * K * 2, N * K // 4 + N * 2
    n16 = copies_needed(fp16_bytes, l2, max_copies=max(2, min(64, (8 << 30) // fp16_bytes)))
    n2 = copies_needed(w2_bytes, l2)
    w16 = [torch.randn(N, K, device="cuda", dtype=torch.float16) * 0.02 for _ in range(n16)]
    w2 = _w2_copies(N, K, n2)
    ref_w = dequantize_w2(w2[0], torch.float16)
    for M in Ms:
        x = torch.randn(M, K, device="cuda", dtype=torch.float16)
        flops = 2.0 * M * N * K
        big = M >= 512
        reps = dict(replays=5 if big else 15)

        def add(method: str, nbytes_w: int, n_var: int, fn, extra: dict | None = None):
            calls = max(n_var, 4) if big else max(n_var, 32)
            try:
                t = time_graph(fn, n_var, calls=calls, **reps)
            except Exception as exc:  # a method this GPU or torch build does not offer
                rows.append({"N": N, "K": K, "M": M, "method": method, "error": f"{type(exc).__name__}: {exc}"[:300]})
                print(f"  {method:10s} M={M:5d} N={N:6d} K={K:6d}  skipped: {str(exc).splitlines()[0][:100]}")
                return
            moved = nbytes_w + M * K * 2 + M * N * 2
            r = {"N": N, "K": K, "M": M, "method": method, "s": t["s"], "min_s": t["min_s"], "max_s": t["max_s"],
                 "tflops": flops / t["s"] / 1e12, "bytes": moved, "gbs": moved / t["s"] / 1e9,
                 "weight_copies": n_var, "l2_cold": n_var * nbytes_w >= 2 * l2, **(extra or {})}
            rows.append(r)
            print(f"  {method:10s} M={M:5d} N={N:6d} K={K:6d}  {t['s'] * 1e6:9.2f} us  {r['tflops']:7.2f} TFLOP/s"
                  f"  {r['gbs']:8.1f} GB/s", flush=True)

        add("fp16", fp16_bytes, n16, lambda i: F.linear(x, w16[i]))

        for mode in ["ptx"] + (["triton"] if with_triton and M <= 16 else []):
            tuned = dispatch.autotune(M, N, K, mode, pw=w2[0], x=x, copies=w2)
            kind, cfg = tuned["best"]
            y = dispatch.w2_matmul(x, w2[0], impl=mode)
            ref = F.linear(x, ref_w).float()
            err = float((y.float() - ref).norm() / ref.norm())
            call = lambda i, k=kind, c=cfg: dispatch.run_config(k, x, w2[i], mode, c)  # noqa: E731
            add("w2" if mode == "ptx" else "w2_triton", w2_bytes, n2, call,
                {"kernel": kind, "config": cfg, "rel_err_vs_fp16_dequant": err, "tuning": tuned["timings"]})


        if with_low:
            Mp = max(M, 32)
            xq = torch.randint(-127, 128, (Mp, K), device="cuda", dtype=torch.int8)
            n8 = copies_needed(N * K, l2, max_copies=max(2, min(64, (8 << 30) // (N * K))))
            wq = [torch.randint(-127, 128, (N, K), device="cuda", dtype=torch.int8) for _ in range(n8)]
            add("int8", N * K, n8, lambda i: torch._int_mm(xq, wq[i].t()), {"m_padded": Mp})
            del wq
            if hasattr(torch, "float8_e4m3fn") and torch.cuda.get_device_capability() >= (8, 9):
                Mp8 = max(16, (M + 15) // 16 * 16)
                xf = torch.randn(Mp8, K, device="cuda").to(torch.float8_e4m3fn)
                wf = [torch.randn(N, K, device="cuda").to(torch.float8_e4m3fn) for _ in range(n8)]
                one = torch.ones((), device="cuda")
                add("fp8", N * K, n8, lambda i: torch._scaled_mm(xf, wf[i].t(), scale_a=one, scale_b=one,
                                                                out_dtype=torch.float16), {"m_padded": Mp8})
                del wf
        del x
    del w16, w2, ref_w
    torch.cuda.empty_cache()
    return rows


def summarize(rows: list[dict], bw_nominal: float | None, bw_copy: float) -> list[dict]:
    """W2 against FP16 per shape and batch: speedup, effective bandwidth and its fraction of the peaks."""
    by = {(r["N"], r["K"], r["M"], r["method"]): r for r in rows if "s" in r}
    out = []
    for (N, K, M, m), r in sorted(by.items()):
        if m != "w2" or (N, K, M, "fp16") not in by:
            continue
        f = by[(N, K, M, "fp16")]
        s = {"N": N, "K": K, "M": M, "fp16_us": f["s"] * 1e6, "w2_us": r["s"] * 1e6,
             "speedup_vs_fp16": f["s"] / r["s"], "w2_gbs": r["gbs"], "fp16_gbs": f["gbs"],
             "w2_frac_copy_bw": r["gbs"] * 1e9 / bw_copy, "fp16_frac_copy_bw": f["gbs"] * 1e9 / bw_copy,
             "w2_kernel": r.get("kernel"), "l2_cold": r["l2_cold"]}
        if bw_nominal:
            s["w2_frac_nominal_bw"] = r["gbs"] * 1e9 / bw_nominal
            s["fp16_frac_nominal_bw"] = f["gbs"] * 1e9 / bw_nominal
        for other in ("w2_triton", "int8", "fp8"):
            if (N, K, M, other) in by:
                s[f"{other}_us"] = by[(N, K, M, other)]["s"] * 1e6
        out.append(s)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/results/gpu_bench.json", help="JSON file to write")
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated model shapes")
    ap.add_argument("--ms", default="1,8,512,2048", help="comma-separated batch sizes M")
    ap.add_argument("--no-triton", action="store_true", help="skip the plain-Triton decode comparison")
    ap.add_argument("--no-low", action="store_true", help="skip the INT8 and FP8 paths")
    ap.add_argument("--skip-lm-head", action="store_true", help="leave out the LM head shapes")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("error: sw/gpu_bench.py needs a CUDA GPU")
    torch.manual_seed(0)
    info = device_info()
    bw = copy_bandwidth()
    print(f"device {info['name']}  SMs {info['sm_count']}  L2 {info['l2_bytes'] / 2**20:.0f} MiB  "
          f"copy {bw / 1e12:.2f} TB/s  nominal {info['nominal_bandwidth']}", flush=True)
    Ms = [int(m) for m in args.ms.split(",")]
    data = {"device": info, "copy_bandwidth": bw, "Ms": Ms, "models": {}, "rows": [],
            "command": "python " + " ".join(sys.argv), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    done: dict[tuple[int, int], list[dict]] = {}
    for mname in args.models.split(","):
        shape = load_model_shape(mname)
        data["models"][mname] = {"shape": shape.__dict__, "layers": {}}
        for (N, K), names in shape.unique_linears().items():
            if args.skip_lm_head and names == ["lm_head"]:
                continue
            data["models"][mname]["layers"][f"{N}x{K}"] = names
            if (N, K) not in done:
                print(f"{mname} {'/'.join(names)} N={N} K={K}", flush=True)
                done[(N, K)] = bench_shape(N, K, Ms, info["l2_bytes"], not args.no_triton, not args.no_low)
                data["rows"] += done[(N, K)]
                data["summary"] = summarize(data["rows"], info["nominal_bandwidth"], bw)
                _save(args.out, data)
    data["summary"] = summarize(data["rows"], info["nominal_bandwidth"], bw)
    data["per_layer"] = per_layer(data, bw)
    _save(args.out, data)
    print("\n   N      K     M   fp16 us    w2 us  speedup  w2 GB/s  %copy  %nominal  kernel")
    for s in data["summary"]:
        print(f"{s['N']:6d} {s['K']:6d} {s['M']:5d} {s['fp16_us']:9.2f} {s['w2_us']:8.2f} {s['speedup_vs_fp16']:7.2f}x"
              f" {s['w2_gbs']:8.0f} {100 * s['w2_frac_copy_bw']:5.0f}% {100 * s.get('w2_frac_nominal_bw', 0):6.0f}%"
              f"   {s['w2_kernel']}")
    for row in data["per_layer"]:
        print(f"{row['model']:14s} M={row['M']:5d} one decoder layer: fp16 {row['fp16_us']:.1f} us, "
              f"w2 {row['w2_us']:.1f} us, {row['speedup']:.2f}x, w2 {row['w2_gbs']:.0f} GB/s")


def per_layer(data: dict, bw_copy: float) -> list[dict]:
    """Sum over the seven linears of one decoder layer (q, k, v, o, gate, up, down) per model and M."""
    by = {(r["N"], r["K"], r["M"], r["method"]): r for r in data["rows"] if "s" in r}
    out = []
    for mname, m in data["models"].items():
        lin = {k: v for k, v in load_model_shape(mname).weight_shapes().items() if k != "lm_head"}
        for M in data["Ms"]:
            try:
                f = sum(by[(n, k, M, "fp16")]["s"] for n, k in lin.values())
                w = sum(by[(n, k, M, "w2")]["s"] for n, k in lin.values())
            except KeyError:
                continue
            wbytes = sum(n * k // 4 + n * 2 for n, k in lin.values())
            out.append({"model": mname, "M": M, "fp16_us": f * 1e6, "w2_us": w * 1e6, "speedup": f / w,
                        "w2_gbs": wbytes / w / 1e9, "w2_frac_copy_bw": wbytes / w / bw_copy})
    return out


if __name__ == "__main__":
    main()
