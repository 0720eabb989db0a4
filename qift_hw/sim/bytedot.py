"""Fast exact W x INT4 GEMM as byte dot products: AVX-512 VNNI ``vpdpbusd`` (64 multiply-adds per instruction).

Activations a in [-8, 7] are staged as unsigned bytes a + 8 in [0, 15]; the integer weights w (|w| <= 128, the
level set's own values) as signed bytes in panels of ``PANEL`` output channels: per group of 4 k's, 16 channels x
4 bytes fill one 512-bit register. ``vpdpbusd`` adds, in every 32-bit lane n, the four products (a_k + 8) w_nk to
the lane's accumulator, so a register tile of ``TILE_M`` rows x ``PANEL`` channels runs from registers (the
activation dword is broadcast from memory). The int32 lane holds sum_k (a_k + 8) w_nk = sum_k a_k w_nk + 8 sum_k w_nk;
the weight-only term (``corr``) is subtracted in int64 at the end.

Exactness: every step of a lane adds four products of at most 15 * max|w|, so |lane| <= 15 * max|w| * K_padded at
all times; ``fits(K, max|w|)`` requires that to be below 2^31 (no int32 wrap-around; vpdpbusd does not saturate).
The result is then the exact integer sum, which equals the hardware's saturating, ascending-k accumulation only
when no partial sum can leave the accumulator (`formats.cannot_overflow`); the caller (`qift_hw.sim.matmul`)
checks that and otherwise runs the saturating PE kernel.

Without AVX-512 VNNI (or with Numba compiling for a named CPU) the same tile runs as portable LLVM vector code
(widening multiplies and adds), bit for bit the same, slower; ``VNNI`` says which one ``gemm`` uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from qift_hw.core.errors import QiftError

LANES = 16
"""int32 lanes of one 512-bit register: output channels per vpdpbusd."""
GROUP = 4
"""k's per lane per vpdpbusd (bytes per 32-bit lane)."""
PANEL_REGS = 4
"""512-bit accumulators per activation row in the register tile."""
PANEL = LANES * PANEL_REGS
"""Output channels of one weight panel (the tile's width)."""
TILE_M = 6
"""Activation rows of the register tile: TILE_M x PANEL_REGS = 24 of the 32 zmm registers hold accumulators
(`_tile` is written out for 1..6 rows)."""
UNROLL = {1: 4, 2: 2}
"""k groups per loop step of the short tiles (1 and 2 rows: 4 or 8 accumulators alone would wait on vpdpbusd's
latency); K is padded to a multiple of GROUP * K_GROUPS_ALIGN so that every unroll divides the group count."""
K_GROUPS_ALIGN = 4
ACT_OFFSET = 8
"""Added to an INT4 activation to make it an unsigned byte (0..15)."""
ACT_UMAX = 15
LANE_MAX = 2**31 - 1
GROUP_BYTES = 1 << 19
"""Weight bytes of the panels that run together (half of a 1 MiB L2, leaving room for the activations)."""
PARALLEL_MIN_MACS = 1 << 26
"""Below this many MACs one thread wins (a parallel launch costs ~0.1 ms)."""


def _host_vnni512() -> bool:
    """True when Numba compiles for this host and the host has AVX-512 VNNI (so vpdpbusd.512 can be selected)."""
    if numba.config.CPU_NAME or numba.config.CPU_FEATURES:
        return False
    import llvmlite.binding as llvm

    try:
        feats = llvm.get_host_cpu_features()
    except RuntimeError:  # LLVM cannot tell on this platform
        return False
    return all(feats.get(f, False) for f in ("avx512f", "avx512bw", "avx512vnni"))


VNNI = _host_vnni512()
"""True when `gemm` runs on AVX-512 VNNI (vpdpbusd, and `dot_tile(..., vnni=True)` compiles); False: the portable
vector code."""

_I8, _I32, _I64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
_V16 = ir.VectorType(_I32, 16)


def _broadcast(builder, x):
    v = builder.insert_element(ir.Constant(_V16, ir.Undefined), x, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, ir.Constant(_V16, ir.Undefined), ir.Constant(_V16, [0] * LANES))


def _dpbusd_portable(builder, acc, a, w):
    """vpdpbusd written as plain vector IR: acc + sum over each lane's 4 bytes of zext(a) * sext(w)."""
    v64 = ir.VectorType(_I32, LANES * GROUP)
    prod = builder.mul(builder.zext(builder.bitcast(a, ir.VectorType(_I8, 64)), v64),
                       builder.sext(builder.bitcast(w, ir.VectorType(_I8, 64)), v64))
    for q in range(GROUP):
        part = builder.shuffle_vector(prod, ir.Constant(v64, ir.Undefined),
                                      ir.Constant(_V16, [GROUP * i + q for i in range(LANES)]))
        acc = builder.add(acc, part)
    return acc


def dot_tile(rows: int, regs: int, vnni: bool, unroll: int = 1):
    """A register tile of the byte-dot GEMM, as a Numba intrinsic (one per shape: the registers are unrolled).

    tile(a, lda, w, G, out, ldo), all int64 (addresses and byte/element strides): for r < rows, j < regs, lane i:
    out32[r * ldo + 16 j + i] = sum_{g < G} sum_{q < 4} u8 a[r * lda + 4 g + q] * s8 w[(g * regs + j) * 64 + 4 i + q].
    The accumulators stay in registers over the whole k loop; the activation dword is broadcast from memory.
    vnni: use llvm.x86.avx512.vpdpbusd.512 (needs VNNI); otherwise portable vector IR, same values.
    unroll: k groups per loop step, each into its own accumulators (summed at the end), so that a short tile still
    has enough independent vpdpbusd chains in flight; G must be a multiple of it.
    """
    if vnni and not VNNI:
        raise RuntimeError("dot_tile(vnni=True) needs AVX-512 VNNI on the host")

    @intrinsic
    def tile(typingctx, a, lda, w, G, out, ldo):
        sig = types.void(types.int64, types.int64, types.int64, types.int64, types.int64, types.int64)

        def codegen(context, builder, signature, args):
            a, lda, w, G, out, ldo = args
            if vnni:
                fn = builder.module.declare_intrinsic("llvm.x86.avx512.vpdpbusd.512",
                                                      fnty=ir.FunctionType(_V16, [_V16, _V16, _V16]))

                def dp(acc, x, y):
                    return builder.call(fn, [acc, x, y])
            else:
                def dp(acc, x, y):
                    return _dpbusd_portable(builder, acc, x, y)

            def c64(v):
                return ir.Constant(_I64, v)

            vp = _V16.as_pointer()
            ldo_b = builder.mul(ldo, c64(4))
            out_ptrs = [[builder.inttoptr(builder.add(out, builder.add(builder.mul(c64(r), ldo_b), c64(64 * j))), vp)
                         for j in range(regs)] for r in range(rows)]
            init = [ir.Constant(_V16, None)] * (rows * regs * unroll)
            entry = builder.block
            head = builder.append_basic_block("tile.head")
            body = builder.append_basic_block("tile.body")
            done = builder.append_basic_block("tile.done")
            builder.branch(head)
            builder.position_at_end(head)
            g = builder.phi(_I64)
            g.add_incoming(c64(0), entry)
            accs = []
            for v in init:
                phi = builder.phi(_V16)
                phi.add_incoming(v, entry)
                accs.append(phi)
            builder.cbranch(builder.icmp_signed("<", g, G), body, done)
            builder.position_at_end(body)
            new = []
            for u in range(unroll):
                gu = builder.add(g, c64(u))
                wrow = builder.add(w, builder.mul(gu, c64(64 * regs)))
                ws = [builder.load(builder.inttoptr(builder.add(wrow, c64(64 * j)), vp), align=1) for j in range(regs)]
                for r in range(rows):
                    addr = builder.add(a, builder.add(builder.mul(c64(r), lda), builder.mul(gu, c64(GROUP))))
                    xb = _broadcast(builder, builder.load(builder.inttoptr(addr, _I32.as_pointer()), align=1))
                    base = (u * rows + r) * regs
                    new.extend(dp(accs[base + j], xb, ws[j]) for j in range(regs))
            g.add_incoming(builder.add(g, c64(unroll)), builder.block)
            for phi, v in zip(accs, new):
                phi.add_incoming(v, builder.block)
            builder.branch(head)
            builder.position_at_end(done)
            n = rows * regs
            for k, p in enumerate(p for row in out_ptrs for p in row):
                total = accs[k]
                for u in range(1, unroll):
                    total = builder.add(total, accs[u * n + k])
                builder.store(total, p, align=4)
            return context.get_dummy_value()

        return sig, codegen

    return tile


def fits(K: int, max_abs_w: int) -> bool:
    """True when no int32 lane can wrap: 15 * max|w| * K_padded <= 2^31 - 1 (and |w| fits a signed byte)."""
    kpad = -(-K // (GROUP * K_GROUPS_ALIGN)) * GROUP * K_GROUPS_ALIGN
    return max_abs_w <= 128 and ACT_UMAX * max_abs_w * kpad <= LANE_MAX


@dataclass(frozen=True)
class WeightBytes:
    """Integer weights laid out for the byte-dot kernel (done once per layer)."""

    panels: np.ndarray  # int8 [P, K/4, PANEL * 4]: panel p, k group g, channel c of the panel, k within the group
    corr: np.ndarray  # int64 [N]: ACT_OFFSET * sum_k w[n, k]
    K: int
    N: int
    max_abs_w: int
    fits: bool  # fits(K, max_abs_w): no int32 lane can wrap
    per: int  # panels_per_group for one thread


def weight_bytes(w: np.ndarray) -> WeightBytes:
    """Lay out integer weights int8 [N, K] (values in [-128, 127]) in panels; zero padding to PANEL x GROUP."""
    N, K = w.shape
    G = -(-K // (GROUP * K_GROUPS_ALIGN)) * K_GROUPS_ALIGN
    P = -(-N // PANEL)
    buf = np.zeros((P * PANEL, G * GROUP), dtype=np.int8)
    buf[:N, :K] = w
    panels = np.ascontiguousarray(buf.reshape(P, PANEL, G, GROUP).transpose(0, 2, 1, 3).reshape(P, G, PANEL * GROUP))
    corr = ACT_OFFSET * w.sum(axis=1, dtype=np.int64)
    amax = int(np.abs(w.astype(np.int16)).max()) if w.size else 0
    return WeightBytes(panels, corr, int(K), int(N), amax, fits(K, amax), panels_per_group(G, P, 1))


@njit(cache=True)
def _stage_acts(acts, G):
    """uint8 [M, 4G]: a + 8, zero padded; also whether every activation lay in [-8, 7]."""
    M, K = acts.shape
    out = np.zeros((M, G * GROUP), dtype=np.uint8)
    ok = True
    for m in range(M):
        for k in range(K):
            v = np.int16(acts[m, k]) + np.int16(ACT_OFFSET)
            ok &= (v >= 0) & (v <= ACT_UMAX)
            out[m, k] = np.uint8(v & 0xFF)
    return out, ok


_F1, _F2, _F3, _F4, _F5, _F6 = (dot_tile(r, PANEL_REGS, VNNI, UNROLL.get(r, 1)) for r in range(1, TILE_M + 1))
_P1, _P2, _P3, _P4, _P5, _P6 = (dot_tile(r, PANEL_REGS, False, UNROLL.get(r, 1)) for r in range(1, TILE_M + 1))


@njit(inline="always")
def _tile(rows, portable, a, lda, w, G, o, ldo):
    if portable:
        if rows == 6:
            _P6(a, lda, w, G, o, ldo)
        elif rows == 5:
            _P5(a, lda, w, G, o, ldo)
        elif rows == 4:
            _P4(a, lda, w, G, o, ldo)
        elif rows == 3:
            _P3(a, lda, w, G, o, ldo)
        elif rows == 2:
            _P2(a, lda, w, G, o, ldo)
        elif rows == 1:
            _P1(a, lda, w, G, o, ldo)
    elif rows == 6:
        _F6(a, lda, w, G, o, ldo)
    elif rows == 5:
        _F5(a, lda, w, G, o, ldo)
    elif rows == 4:
        _F4(a, lda, w, G, o, ldo)
    elif rows == 3:
        _F3(a, lda, w, G, o, ldo)
    elif rows == 2:
        _F2(a, lda, w, G, o, ldo)
    elif rows == 1:
        _F1(a, lda, w, G, o, ldo)


@njit(inline="always")
def _panels(ap, panels, corr, p0, p1, out, portable):
    """Output channels [p0 * PANEL, p1 * PANEL) of every row: for each TILE_M rows, one register tile per panel
    into a small int32 block (it stays in L1), then int64 minus corr into the output."""
    M, N = out.shape
    G = panels.shape[1]
    lda = np.int64(ap.shape[1])
    block = np.empty((TILE_M, PANEL), dtype=np.int32)
    b0 = np.int64(block.ctypes.data)
    a0 = np.int64(ap.ctypes.data)
    for m in range(0, M, TILE_M):
        rows = min(TILE_M, M - m)
        for p in range(p0, p1):
            w0 = np.int64(panels.ctypes.data) + np.int64(p) * np.int64(G * PANEL * GROUP)
            _tile(rows, portable, a0 + m * lda, lda, w0, G, b0, np.int64(PANEL))
            n0 = p * PANEL
            for r in range(rows):
                for n in range(n0, min(N, n0 + PANEL)):
                    out[m + r, n] = np.int64(block[r, n - n0]) - corr[n]


@njit(inline="always")
def _gemm(acts, panels, corr, N, per, portable, parallel):
    """Stage the activations, run the panels in groups of ``per`` (over threads when ``parallel``);
    (out int64 [M, N], acts in range)."""
    M = acts.shape[0]
    P = panels.shape[0]
    ap, ok = _stage_acts(acts, panels.shape[1])
    out = np.empty((M, N), dtype=np.int64)
    if not ok or M == 0 or N == 0:
        return out, ok
    groups = (P + per - 1) // per
    if parallel:
        for q in prange(groups):
            _panels(ap, panels, corr, q * per, min(P, (q + 1) * per), out, portable)
    else:
        for q in range(groups):
            _panels(ap, panels, corr, q * per, min(P, (q + 1) * per), out, portable)
    return out, ok


@njit(cache=True)
def _gemm_serial(acts, panels, corr, N, per, portable):
    return _gemm(acts, panels, corr, N, per, portable, False)


@njit(parallel=True, cache=True)
def _gemm_parallel(acts, panels, corr, N, per, portable):
    return _gemm(acts, panels, corr, N, per, portable, True)


def panels_per_group(G: int, P: int, threads: int) -> int:
    """Weight panels run together over each block of TILE_M rows: as many as fit GROUP_BYTES (so they stay in L2
    while every row block passes), and at most P / threads so that every thread gets a group."""
    return max(1, min(GROUP_BYTES // (max(G, 1) * GROUP * PANEL), -(-P // threads)))


def gemm(acts: np.ndarray, wb: WeightBytes, portable: bool = False, per: int | None = None) -> np.ndarray:
    """Exact int64 [M, N] = acts @ w^T for INT4 acts (int8 [M, K], C-contiguous; range-checked here) and prepared
    weight bytes. portable: run the portable vector code even where AVX-512 VNNI is available (to test it);
    per: panels per group (default `panels_per_group`)."""
    M, K = acts.shape
    if K != wb.K:
        raise QiftError(f"activations have K={K}, weights K={wb.K}")
    if not wb.fits:
        raise QiftError(f"K={K} with |w| <= {wb.max_abs_w} could wrap an int32 lane; use the bit-plane or PE kernel")
    P, G = wb.panels.shape[:2]
    threads = numba.get_num_threads() if M * K * wb.N >= PARALLEL_MIN_MACS and P > 1 else 1
    if per is None:
        per = wb.per if threads == 1 else panels_per_group(G, P, threads)
    out, ok = (_gemm_parallel if threads > 1 else _gemm_serial)(acts, wb.panels, wb.corr, wb.N, per,
                                                                portable or not VNNI)
    if not ok:
        raise QiftError(f"acts must lie in [-8, 7] (INT4), got [{int(acts.min())}, {int(acts.max())}]")
    return out
