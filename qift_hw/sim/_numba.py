"""Numba set-up shared by the kernels: a threading layer that does not spin, and a popcount intrinsic.

The OpenMP layer busy-waits at its barriers; on a machine whose cores are shared with other work a descheduled
worker then stalls every parallel call (measured: 100x slower for small GEMMs). The work-queue layer does not.
"""

from __future__ import annotations

import numba
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

if numba.config.THREADING_LAYER == "default":
    numba.config.THREADING_LAYER = "workqueue"


@intrinsic
def popcount64(typingctx, x):
    """Number of set bits of a uint64 (LLVM ctpop: one instruction, vectorised where the CPU has one)."""
    if not isinstance(x, types.Integer):
        return None
    sig = types.uint64(x)

    def codegen(context, builder, signature, args):
        fn = builder.module.declare_intrinsic("llvm.ctpop", [ir.IntType(64)])
        val = context.cast(builder, args[0], signature.args[0], types.uint64)
        return builder.call(fn, [val])

    return sig, codegen
