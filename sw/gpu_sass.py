"""Compile the W2 Triton kernels for Hopper (sm_90) without a GPU and count their SASS instructions.

The instruction mix per 16-code word is what decides whether the decode GEMV can keep up with HBM, so it
is read here at no device time: ``python sw/gpu_sass.py [--dump DIR]``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess

import triton
from triton.backends.compiler import GPUTarget

from qift_hw.gpu import w2_kernel as wk
from qift_hw.core.levels import get_level_set


def compile_kernel(name: str, ptx: bool, level_set: str = "pot_mnz", **cfg) -> dict:
    """Compile one kernel variant for sm_90; return its PTX, SASS and resource use."""
    import torch

    table = torch.as_tensor(get_level_set(level_set).level_of_code, dtype=torch.float32)
    lo, hi = wk.fp16_table_bytes(table)
    lv = {f"L{i}": float(table[i]) for i in range(4)}
    if name == "gemv":
        fn = wk._gemv_kernel
        sig = {"x_ptr": "*i32" if ptx else "*fp16", "w_ptr": "*i32", "s_ptr": "*fp16", "y_ptr": "*fp16",
               "N": "i32", "KW": "i32", "stride_wn": "i32"}
        const = dict(BN=cfg.get("BN", 16), BKW=cfg.get("BKW", 64), ALIGN4=True, PTX=ptx,
                     ASM=wk.gemv_word_ptx(lo, hi) if ptx else "", XPERM=wk.XPERM_PTX,
                     PREFETCH=cfg.get("prefetch", False), **lv)
    elif name == "gemv_multi":
        fn = wk._gemv_multi_kernel
        sig = {"x_ptr": "*i32", "w_ptr": "*i32", "s_ptr": "*fp16", "y_ptr": "*fp16", "M": "i32", "N": "i32",
               "KW": "i32", "stride_xm": "i32", "stride_wn": "i32", "stride_ym": "i32"}
        const = dict(BM=cfg.get("BM", 8), BN=cfg.get("BN", 4), BKW=cfg.get("BKW", 64), ALIGN4=True,
                     DEC=wk.decode_pairs_ptx(lo, hi), DOT=wk.DOT8_PTX, XPERM=wk.XPERM_PTX)
    else:
        fn = wk._mm_kernel
        sig = {"x_ptr": "*fp16", "w_ptr": "*i32", "s_ptr": "*fp16", "y_ptr": "*fp16", "M": "i32", "N": "i32",
               "KW": "i32", "stride_xm": "i32", "stride_wn": "i32", "stride_ym": "i32"}
        const = dict(BM=cfg.get("BM", 16), BN=cfg.get("BN", 64), BKW=cfg.get("BKW", 4), GROUP_M=8, ALIGN4=True,
                     SWAP=cfg.get("SWAP", False),
                     PTX=ptx, ASM=wk.decode_word_ptx(lo, hi) if ptx else "", **lv)
    sig.update({k: "constexpr" for k in const})
    attrs = {(i,): [["tt.divisibility", 16]] for i, k in enumerate(sig) if k.endswith("_ptr")}
    src = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=const, attrs=attrs)
    opts = {"num_warps": cfg.get("num_warps", 4), "num_stages": cfg.get("num_stages", 2)}
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=opts)
    path = "/tmp/qift_w2.cubin"
    with open(path, "wb") as f:
        f.write(k.asm["cubin"])
    cuobj = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump")
    sass = subprocess.run([cuobj, "-sass", path], capture_output=True, text=True, check=True).stdout
    ops = collections.Counter(m.group(1).split(".")[0] for m in re.finditer(r"/\*[0-9a-f]{4}\*/\s+(?:@!?P\d\s+)?([A-Z0-9_.]+)", sass))
    res = subprocess.run([cuobj, "-res-usage", path], capture_output=True, text=True, check=True).stdout
    regs = re.search(r"REG:(\d+)", res)
    stack = re.search(r"STACK:(\d+)", res)
    return {"ptx": k.asm["ptx"], "sass": sass, "ops": dict(ops.most_common()), "n_regs": int(regs.group(1)) if regs else None,
            "stack": int(stack.group(1)) if stack else None, "shared": k.metadata.shared}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dump", help="folder to write the PTX and SASS of each variant into")
    ap.add_argument("--out", help="JSON file for the instruction counts")
    ap.add_argument("--only", help="compile only variants whose name or config contains this text")
    args = ap.parse_args()
    report = {}
    variants = [("gemv", True, {}), ("gemv", False, {}), ("gemv_multi", True, {}), ("mm", True, {}), ("mm", False, {}),
                ("mm", True, {"SWAP": True}), ("mm", True, {"SWAP": True, "BN": 128, "BKW": 8}),
                ("mm", True, {"BM": 128, "BN": 128, "BKW": 4, "num_warps": 8, "num_stages": 3})]
    if args.only:
        variants = [v for v in variants if args.only in v[0] + str(v[2])]
    for name, ptx, cfg in variants:
        tag = f"{name}_{'ptx' if ptx else 'triton'}" + ("_" + "_".join(f"{k}{v}" for k, v in cfg.items()) if cfg else "")
        r = compile_kernel(name, ptx, **cfg)
        if args.dump:
            os.makedirs(args.dump, exist_ok=True)
            for ext in ("ptx", "sass"):
                with open(os.path.join(args.dump, f"{tag}.{ext}"), "w") as f:
                    f.write(r[ext])
        report[tag] = {k: r[k] for k in ("ops", "n_regs", "stack", "shared")}
        top = ", ".join(f"{k} {v}" for k, v in list(r["ops"].items())[:12])
        print(f"{tag}: regs {r['n_regs']} stack {r['stack']} smem {r['shared']} | {top}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
