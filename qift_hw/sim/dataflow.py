"""Closed forms of the v2 array dataflows (docs/array_protocol.md, "v2"): cycles, tiles and array-edge word counts.

v2 overlaps consecutive tiles: WS double-buffers the weight registers (the next tile's weights shift into a shadow
chain while the current tile streams), OS drains through a separate output chain while the next tile streams, and
``stream`` (the decode mode for small M) writes a whole R x C weight tile per cycle through a wide port, so each
weight is used M times and decode is bound by the weight stream. Every formula here equals the cycle-stepped v2
array (`qift_hw.sim.array`, ``gemm_v2``) exactly; tests compare the two over random shapes.

Word counts are data words that cross the array edge (padding zeros the controller drives are not counted):
the memory and energy models turn them into buffer reads and DRAM bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from qift_hw.core.errors import QiftError

DATAFLOWS = ("ws", "os", "stream")
"""v2 dataflows; "stream" is the decode mode for small M (M <= 8 recommended, correct for any M)."""


@dataclass(frozen=True)
class Compute:
    """Compute side of one GEMM on the array: advancing cycles (no memory stalls), passes and edge words."""

    cycles: int
    """Advancing cycles of the whole GEMM, from the first input to the last output taken."""
    tiles: int
    """Passes (SCALE-Sim "folds")."""
    ii: int
    """Steady-state cycles between tile starts (initiation interval; for ``stream`` within one K round)."""
    weight_words: int
    """Weight codes that enter the array."""
    act_words: int
    """Activation words that enter the array."""
    psum_in_words: int
    """Partial sums read back into the array on p_in (WS and stream with several K tiles)."""
    out_words: int
    """Accumulator words that leave the array (each K tile's partial sums for WS and stream)."""


ZERO = Compute(0, 0, 0, 0, 0, 0, 0)


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def check_gemm(dataflow: str, M: int, K: int, N: int, R: int, C: int, m_tile: int | None) -> int:
    """Validate a GEMM on an R x C array; returns the WS/stream chunk rows (all of M when ``m_tile`` is None/0)."""
    if dataflow not in DATAFLOWS:
        raise QiftError(f"unknown dataflow {dataflow!r}; use one of {', '.join(DATAFLOWS)}")
    for name, v in (("M", M), ("K", K), ("N", N)):
        if not _is_int(v) or v < 0:
            raise QiftError(f"GEMM dimension {name} must be an integer >= 0, got {v!r}")
    if not (_is_int(R) and _is_int(C) and R >= 1 and C >= 1):
        raise QiftError(f"array size must be positive integers R x C, got {R!r} x {C!r}")
    if m_tile is not None and (not _is_int(m_tile) or m_tile < 0):
        raise QiftError(f"m_tile must be an integer >= 1 (or 0/None for all of M), got {m_tile!r}")
    return int(min(M, m_tile)) if m_tile else int(M)


def chunks(M: int, mt: int) -> list[int]:
    """Rows of each M chunk: full chunks of ``mt`` rows, then the rest."""
    full, rest = divmod(M, mt)
    return [mt] * full + ([rest] if rest else [])


def ws_cycles(M: int, K: int, N: int, R: int, C: int, m_tile: int | None = None) -> int:
    """WS v2: 2R + C - 1 + sum_j max(m_j, R) - (max(m_L, R) - m_L).

    Tiles j (per M chunk of m_j rows: N tiles outer, K tiles inner) start every max(m_j, R) cycles; the first
    waits R cycles for its weights and the last ends m_L + R + C - 1 cycles after its start.
    """
    mt = check_gemm("ws", M, K, N, R, C, m_tile)
    if not (M and K and N):
        return 0
    nk = math.ceil(N / C) * math.ceil(K / R)
    ms = chunks(M, mt)
    last = ms[-1]
    return 2 * R + C - 1 + nk * sum(max(m, R) for m in ms) - (max(last, R) - last)


def stream_cycles(M: int, K: int, N: int, R: int, C: int, m_tile: int | None = None) -> int:
    """stream: R + C + sum over M chunks of m rows of [(ceil(K/R) - 1) * max(ceil(N/C) * m, R) + ceil(N/C) * m].

    Tiles (per chunk: K tiles outer, N tiles inner) start every m cycles; a K round of ceil(N/C) tiles lasts at
    least R cycles, the latency of a partial sum from p_in back to p_in; one cycle writes the first weights.
    """
    mt = check_gemm("stream", M, K, N, R, C, m_tile)
    if not (M and K and N):
        return 0
    nt, kt = math.ceil(N / C), math.ceil(K / R)
    return R + C + sum((kt - 1) * max(nt * m, R) + nt * m for m in chunks(M, mt))


def os_cycles(M: int, K: int, N: int, R: int, C: int) -> int:
    """OS v2: (ceil(M/R) * ceil(N/C) - 1) * max(K, R) + K + 2R + C - 2.

    Tiles start every max(K, R) cycles (K for the stream, R for a column's drain through the output chain); the
    last one ends K + 2R + C - 2 cycles after its start, as a v1 pass.
    """
    check_gemm("os", M, K, N, R, C, None)
    if not (M and K and N):
        return 0
    return (math.ceil(M / R) * math.ceil(N / C) - 1) * max(K, R) + K + 2 * R + C - 2


def gemm_compute(dataflow: str, M: int, K: int, N: int, R: int, C: int, m_tile: int | None = None) -> Compute:
    """Cycles, tiles, initiation interval and array-edge words of an M x K by K x N GEMM on an R x C v2 array.

    n_t = ceil(N/C), k_t = ceil(K/R), m_t = ceil(M/R); WS and stream split M into chunks of ``m_tile`` rows
    (output-buffer depth; None or 0 = all of M, OS ignores it), ch = number of chunks, mt = rows of a full chunk.
    - ws: cycles = ``ws_cycles``; tiles = ch * n_t * k_t; ii = max(mt, R); weights ch * N * K;
      activations n_t * M * K; psum in (k_t - 1) * M * N; out k_t * M * N.
    - os: cycles = ``os_cycles``; tiles = m_t * n_t; ii = max(K, R); weights m_t * N * K;
      activations n_t * M * K; psum in 0; out M * N.
    - stream: cycles = ``stream_cycles``; tiles = ch * k_t * n_t; ii = mt (a K round: max(n_t * mt, R));
      words as ws.
    Any zero dimension gives all zeros.
    """
    mt = check_gemm(dataflow, M, K, N, R, C, m_tile)
    if not (M and K and N):
        return ZERO
    nt, kt = math.ceil(N / C), math.ceil(K / R)
    if dataflow == "os":
        mtiles = math.ceil(M / R)
        return Compute(os_cycles(M, K, N, R, C), mtiles * nt, max(K, R), mtiles * N * K, nt * M * K, 0, M * N)
    ch = math.ceil(M / mt)
    if dataflow == "ws":
        cycles, ii = ws_cycles(M, K, N, R, C, mt), max(mt, R)
    else:
        cycles, ii = stream_cycles(M, K, N, R, C, mt), mt
    return Compute(int(cycles), ch * nt * kt, int(ii), ch * N * K, nt * M * K, (kt - 1) * M * N, kt * M * N)
