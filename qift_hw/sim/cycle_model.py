"""Closed forms of protocol v1 (back-to-back array passes) and of the pipelined Hadamard unit.

The v1 GEMM cycles equal the cycle-stepped v1 array (`qift_hw.sim.array`, tests) and the RTL arrays the benches
replay; the accelerator model uses them for ``timing: v1``. Protocol v2 (overlapped passes, the default of the
accelerator model) is `qift_hw.sim.dataflow`.
"""

from __future__ import annotations

import math

from qift_hw.core import formats
from qift_hw.core.hadamard import split_order
from qift_hw.sim.array import os_pass_cycles, ws_pass_cycles
from qift_hw.sim.hadamard_timing import lane_unit_cycles, usable_lanes


def ws_gemm_cycles(M: int, K: int, N: int, R: int, C: int, m_tile: int | None = None) -> int:
    """Cycles of a v1 WS GEMM: per M-chunk, ceil(N/C) * ceil(K/R) passes of R + m + R + C - 1 cycles."""
    if M == 0 or N == 0 or K == 0:
        return 0
    mt = M if not m_tile else m_tile
    tiles = math.ceil(N / C) * math.ceil(K / R)
    full, rest = divmod(M, mt)
    return tiles * (full * ws_pass_cycles(mt, R, C) + (ws_pass_cycles(rest, R, C) if rest else 0))


def os_gemm_cycles(M: int, K: int, N: int, R: int, C: int) -> int:
    """Cycles of a v1 OS GEMM: ceil(M/R) * ceil(N/C) passes of K + 2R + C - 2 cycles."""
    if M == 0 or N == 0 or K == 0:
        return 0
    return math.ceil(M / R) * math.ceil(N / C) * os_pass_cycles(K, R, C)


def had_cycles(vectors: int, n: int, lanes: int) -> int:
    """Cycles of the Hadamard + INT4 quantizer unit that the RTL builds for order n on ``lanes`` lanes.

    lanes >= n: the fully parallel pipelined unit (`rtl.hadamard.HadamardQuantUnit`), one vector per cycle plus the
    depth: one cycle of fill + log2(2^k) butterfly stages + 1 K stage (if K > 1) + the quantizer's
    ``formats.HAD_QUANT_LATENCY`` stages. lanes < n: the lane-multiplexed unit (`rtl.hadamard_lanes`) at the lane
    count it is built with (`hadamard_timing.usable_lanes`), vectors back to back (`hadamard_timing`).
    """
    if vectors == 0:
        return 0
    if lanes < n:
        return lane_unit_cycles(vectors, n, usable_lanes(n, lanes))
    k, p = split_order(n)
    per = math.ceil(n / lanes)
    return vectors * per + per + (p.bit_length() - 1) + (1 if k > 1 else 0) + formats.HAD_QUANT_LATENCY
