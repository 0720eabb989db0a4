"""On-chip buffers, tiling and the double-buffered DMA from DRAM: bytes moved and stall cycles of one GEMM.

A GEMM ``[M x K] x [K x N]`` runs as a loop nest over buffer tiles (outermost first): M chunks of ``m`` rows,
N blocks of ``n`` columns, K chunks of ``k`` rows. One tile holds an ``m x k`` activation slice in the act
buffer, a ``k x n`` weight slice in the weight buffer and the ``m x n`` partial sums in the out buffer, each in
its buffer's tile bytes (half the buffer when double-buffered). Words are as stored: weights packed ``w_bits``
per code along K plus an FP32 scale per column, activations packed ``act_bits`` along K plus an FP32 scale per
row, partial sums ``acc_bits``, outputs ``out_bytes`` each. Weights stay on chip across M chunks when the whole
matrix fits one weight tile, else every M chunk reads them again; activations of an M chunk stay across N blocks
when ``m x K`` fits one act tile, else every N block reads them again. `choose_tiling` picks the tile that moves
the fewest DRAM bytes.

DMA (`dma_pipeline`): one DRAM channel fills tile i's operands while tile i - 1 computes; a tile cannot start
before its operands have arrived, and tile i's DMA cannot start before tile i - 2 has finished computing (two
slots per buffer). Total cycles = compute + stall, SCALE-Sim's convention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from qift_hw.core.errors import QiftError

SCALE_BYTES = 4
"""One FP32 scale (per weight column, per activation row)."""


def packed_bytes(rows: int, cols: int, bits: int, per_col: float = 0.0) -> float:
    """Bytes of a ``rows x cols`` operand packed ``bits`` per element along ``rows`` (each column padded to whole
    bytes), plus ``per_col`` bytes (scales, zeros) per column."""
    return math.ceil(rows * bits / 8) * cols + per_col * cols


@dataclass(frozen=True)
class Tiling:
    """Buffer tiles of one GEMM and how often each operand comes from DRAM."""

    m: int
    n: int
    k: int
    n_m: int
    n_n: int
    n_k: int
    weights_resident: bool
    acts_resident: bool

    @property
    def tiles(self) -> int:
        return self.n_m * self.n_n * self.n_k

    @property
    def weight_reads(self) -> int:
        """Times the weights come from DRAM."""
        return 1 if self.weights_resident else self.n_m

    @property
    def act_reads(self) -> int:
        """Times each activation comes from DRAM."""
        return 1 if self.acts_resident else self.n_n


@dataclass(frozen=True)
class Operands:
    """What the tiling needs to know about one GEMM: sizes, bits, bytes per column of the stationary operand."""

    M: int
    K: int
    N: int
    w_bits: int
    w_col_bytes: float
    act_bits: int
    acc_bits: int


def _max_k(op: Operands, m: int, n: int, w_tile: float, a_tile: float, R: int) -> int:
    """Largest K chunk (all of K, else a multiple of R) whose weight and act slices fit their tiles; 0 if none."""
    def fits(k: int) -> bool:
        return (packed_bytes(k, n, op.w_bits, op.w_col_bytes) <= w_tile
                and packed_bytes(k, m, op.act_bits, SCALE_BYTES) <= a_tile)
    if fits(op.K):
        return op.K
    lo, hi = 0, (op.K - 1) // R
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid * R):
            lo = mid
        else:
            hi = mid - 1
    return lo * R


def _pow2_upto(limit: int, step: int) -> list[int]:
    out, v = [], step
    while v < limit:
        out.append(v)
        v *= 2
    out.append(limit)
    return out


def tile_dram_bytes(op: Operands, t: Tiling, w_total: float, out_bytes: int) -> tuple[float, float, float]:
    """DRAM bytes of (weights, activations, outputs) of the whole GEMM under tiling ``t``."""
    acts = packed_bytes(op.K, op.M, op.act_bits, SCALE_BYTES)
    return w_total * t.weight_reads, acts * t.act_reads, float(op.M * op.N * out_bytes)


def choose_tiling(op: Operands, R: int, C: int, buffers, w_total: float, out_bytes: int) -> Tiling:
    """The tile (m, n, k) with the fewest DRAM bytes (then the fewest tiles) that fits the buffers.

    QiftError naming the buffer when even the smallest tile (1 row, min(N, C) columns, min(K, R) rows of K) does
    not fit.
    """
    w_tile, a_tile, o_tile = buffers.weight.tile_bytes, buffers.act.tile_bytes, buffers.out.tile_bytes
    acc_b = op.acc_bits / 8
    n0, k0 = min(op.N, C), min(op.K, R)
    needs = (("out", 1 * n0 * acc_b, o_tile, "one row of partial sums"),
             ("weight", packed_bytes(k0, n0, op.w_bits, op.w_col_bytes), w_tile, f"a {k0} x {n0} weight slice"),
             ("act", packed_bytes(k0, 1, op.act_bits, SCALE_BYTES), a_tile, f"a 1 x {k0} activation slice"))
    for name, need, have, what in needs:
        if need > have:
            raise QiftError(f"{name} buffer too small for one tile: {what} needs {need:g} bytes, a tile has "
                            f"{have:g} (buffers.{name}.kib; half of it when double_buffered)")
    best, best_key = None, None
    for m in _pow2_upto(op.M, 1):
        n_cap = int(o_tile // (m * acc_b))
        if n_cap < n0:
            break
        for n in _pow2_upto(min(op.N, max(n0, n_cap // C * C)), C):
            k = _max_k(op, m, n, w_tile, a_tile, R)
            if k < k0:
                continue
            n_m, n_n, n_k = math.ceil(op.M / m), math.ceil(op.N / n), math.ceil(op.K / k)
            t = Tiling(m, n, k, n_m, n_n, n_k,
                       weights_resident=n_m == 1 or w_total <= w_tile,
                       acts_resident=n_n == 1 or packed_bytes(op.K, m, op.act_bits, SCALE_BYTES) <= a_tile)
            key = (sum(tile_dram_bytes(op, t, w_total, out_bytes)), t.tiles, -m)
            if best_key is None or key < best_key:
                best, best_key = t, key
    if best is None:
        raise QiftError(f"buffers too small for one tile of a {op.M} x {op.K} x {op.N} GEMM; raise buffers.out.kib "
                        "or buffers.weight.kib")
    return balanced(best, op, R, C)


def _even(total: int, parts: int, step: int) -> int:
    """Chunk size that splits ``total`` into ``parts`` chunks as evenly as multiples of ``step`` allow."""
    return total if parts == 1 else min(total, math.ceil(math.ceil(total / parts) / step) * step)


def balanced(t: Tiling, op: Operands, R: int, C: int) -> Tiling:
    """The same tile counts with chunks as even as possible (never larger than chosen): the DMA model takes the
    tiles of one M chunk as alike, and even chunks also waste fewer array passes."""
    return Tiling(_even(op.M, t.n_m, 1), _even(op.N, t.n_n, C), _even(op.K, t.n_k, R), t.n_m, t.n_n, t.n_k,
                  t.weights_resident, t.acts_resident)


Run = tuple  # (count, compute cycles, DMA cycles) of identical tiles, or (repeat, [runs...]) of a repeated pattern
EXACT_PERIODS = 8
"""Most periods of a repeated pattern stepped before extrapolating (the pattern settles well before)."""


def _advance(state: tuple[float, float, float], item: Run) -> tuple[float, float, float]:
    a, e1, e2 = state
    count, body = item[0], item[1:]
    if count <= 0:
        return state
    if len(body) == 2 and not isinstance(body[0], (list, tuple)):
        c, d = body
        exact = min(count, 3)
        for _ in range(exact):
            a = max(a, e2) + d
            e1, e2 = max(e1, a) + c, e1
        rest = (count - exact) * max(c, d)
        return a + rest, e1 + rest, e2 + rest
    pattern, last_delta, done = body[0], None, 0
    while done < count:
        before = (a, e1, e2)
        for sub in pattern:
            a, e1, e2 = _advance((a, e1, e2), sub)
        done += 1
        delta = (a - before[0], e1 - before[1], e2 - before[2])
        if delta == last_delta or done >= EXACT_PERIODS:
            rest = count - done
            return a + rest * delta[0], e1 + rest * delta[1], e2 + rest * delta[2]
        last_delta = delta
    return a, e1, e2


def dma_pipeline(groups: Sequence[Run], tail: float = 0.0) -> float:
    """Cycles from the first DMA to the end of the last tile (plus ``tail``) of a tile sequence under
    double-buffered DMA. ``groups``: runs ``(count, compute cycles, DMA cycles)`` of identical tiles, or repeated
    patterns ``(repeat, [runs or patterns])``.

    Per tile i: dma_start = max(dma_end[i-1], compute_end[i-2]); compute_start = max(compute_end[i-1],
    dma_end[i]). Within a run the recurrence settles after at most three tiles into steps of max(compute, DMA)
    (both then advance by that much per tile), so a run costs three exact steps and one multiplication; a repeated
    pattern is stepped until one period advances the state as much as the period before, then multiplied.
    """
    state = (0.0, 0.0, 0.0)
    for item in groups:
        state = _advance(state, item)
    return state[1] + tail


def _sizes(total: int, size: int, parts: int) -> list[tuple[int, int]]:
    """(count, size) runs of the chunks of ``total`` in ``parts`` chunks of ``size`` (the last one the rest)."""
    last = total - size * (parts - 1)
    return [(parts - 1, size), (1, last)] if parts > 1 else [(1, total)]


def dma_groups(t: Tiling, M: int, K: int, N: int, cycles_per_mac: float, w_bytes: float, act_row_bytes: float,
               out_elem_bytes: float, bpc: float) -> tuple[list, float]:
    """The tile sequence of one GEMM for `dma_pipeline` (loop order M chunks > N blocks > K chunks) and the tail
    (the last block's output write), in cycles.

    A tile of ``rows x kk x cols`` computes for ``cycles_per_mac * rows * kk * cols`` cycles and brings its slice
    of the weights (``w_bytes * kk * cols / (K * N)``, on every M chunk unless they stay on chip) and of the
    activations (``act_row_bytes * rows * kk / K``, on the first N block of a chunk only when they stay on chip);
    the first tile of a block also writes the previous block's outputs (``out_elem_bytes`` each).
    """
    def block(rows: int, cols: int, weights: bool, acts: bool, before: float) -> list:
        runs = []
        for i, (n, kk) in enumerate(_sizes(K, t.k, t.n_k)):
            d = (w_bytes * kk * cols / (K * N) if weights else 0.0) + (act_row_bytes * rows * kk / K if acts else 0.0)
            c = cycles_per_mac * rows * kk * cols
            if i == 0 and n > 0:
                runs += [(1, c, (d + before) / bpc), (n - 1, c, d / bpc)]
            else:
                runs.append((n, c, d / bpc))
        return runs

    def chunk(rows: int, first: bool, before: float) -> list:
        weights = first or not t.weights_resident
        out = []
        for i, (n, cols) in enumerate(_sizes(N, t.n, t.n_n)):
            if i == 0 and n > 0:
                out += [(1, block(rows, cols, weights, True, before))]
                n -= 1
            out.append((n, block(rows, cols, weights, not t.acts_resident, rows * t.n * out_elem_bytes)))
        return out

    n_last = N - t.n * (t.n_n - 1)
    blocks = _sizes(M, t.m, t.n_m)
    groups = chunk(blocks[0][1] if t.n_m > 1 else M, True, 0.0)
    if t.n_m > 1:
        m_last = blocks[1][1]
        groups += [(t.n_m - 2, chunk(t.m, False, t.m * n_last * out_elem_bytes))]
        groups += chunk(m_last, False, t.m * n_last * out_elem_bytes)
    else:
        m_last = M
    return groups, m_last * n_last * out_elem_bytes / bpc
