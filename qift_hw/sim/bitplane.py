"""Fast exact W2 x INT4 GEMM on bit planes: AND / XOR / popcount / shift / add, no multiplier.

Activations (INT4, two's complement) are stored as 4 bit planes of 64 k's per word: a = -8 a3 + 4 a2 + 2 a1 + a0.
Weight codes are stored as their bit planes B0 (bit 0) and B1 (bit 1), word-major ([W, plane, N]) so that one
activation word meets the words of many output channels in one vector operation.

Sign-and-magnitude sets (PoT-MNZ, MNZ, pm12), weight = sgn * (1 + mu * b0) with mu = 3, 2, 1 (``signmag_mu``,
from the set's integer weights): the sign is a conditional inversion, sgn * a = (a ^ s) - s with s = -b1, so with
X_j = A_j ^ B1

    sum_k w_k a_k = sum_j e_j (popcount(X_j) + mu * popcount(X_j & B0)) + popcount(B1) + mu * popcount(B1 & B0)

where e_j = 1, 2, 4, -8; the last two terms depend on the weights only (``corr``). The standard set
(two's complement, w = b0 - 2 b1) uses sum_j e_j (popcount(B0 & A_j) - 2 popcount(B1 & A_j)).
Every product by mu, e_j or 2 is a shift and an add. Sums are exact in int64; the accumulator width and its
saturation are handled by the caller (`qift_hw.sim.matmul`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
from numba import njit, prange

from qift_hw.core import formats
from qift_hw.core.errors import QiftError
from qift_hw.core.levels import LevelSet, get_level_set
from qift_hw.sim._numba import popcount64

WORD = 64
"""Codes (and activations) per uint64 plane word."""
BYTES_PER_WORD = WORD // formats.CODES_PER_BYTE
"""Bytes of packed 2-bit codes that fill one plane word."""
ACT_PLANES = formats.ACT_BITS
"""Bit planes of an activation; the kernels below are written out for INT4 (plane weights 1, 2, 4, -8)."""
ACT_MASK = (1 << ACT_PLANES) - 1
SIGNMAG, TWOS_COMPLEMENT = 0, 1
"""The kernel's two weight decodes (its ``mode``): sign-and-magnitude, and 2-bit two's complement (``std``)."""
PARALLEL_MIN_CODES = 1 << 22
"""Below this many codes one thread lays out the weight planes faster than a parallel launch."""

if ACT_PLANES != 4:
    raise QiftError(f"the bit-plane kernels are written for INT4 activations, formats.ACT_BITS is {ACT_PLANES}")


def signmag_mu(level_set: str | LevelSet) -> int | None:
    """mu of a sign-and-magnitude set, whose integer weights are sgn * (1 + mu * b0) (pot_mnz 3, mnz 2, pm12 1);
    None for a two's complement set (``std``)."""
    ls = get_level_set(level_set)
    w = formats.weight_int_values(ls)
    if ls.kind == "integer" and ls.bits == formats.WEIGHT_CODE_BITS:
        return None
    sign = 1 << formats.SIGN_BIT
    mag = 1 << formats.MAG_BIT
    if ls.bits != formats.WEIGHT_CODE_BITS or w[0] != 1 or w[sign] != -1 or w[sign | mag] != -w[mag]:
        raise QiftError(f"level set {ls.name!r} is neither sign-and-magnitude with weights +-1, +-(1 + mu) nor 2-bit "
                        "two's complement; the bit-plane kernel cannot compute it (use kernel='pe')")
    return int(w[mag] - w[0])


def mu_shift_add(mu: int) -> tuple[int, int]:
    """mu as a shift and an optional add of the unshifted value: (sh, add) with mu = (1 << sh) + add, add 0 or 1
    (3 = (1 << 1) + 1, 2 = 1 << 1, 1 = 1 << 0)."""
    add = mu & 1 if mu > 1 else 0
    sh = (mu - add).bit_length() - 1
    if mu < 1 or (1 << sh) + add != mu:
        raise QiftError(f"mu = {mu} is not a power of two or a power of two plus one; no shift-add form")
    return sh, add


@dataclass(frozen=True)
class WeightPlanes:
    """Weight codes laid out for the bit-plane kernel (like a weight buffer in hardware: done once per layer)."""

    planes: np.ndarray  # uint64 [W, 2, N]: bit 0 and bit 1 of 64 codes per word
    corr: np.ndarray  # int64 [N]: the weight-only term of the sign-and-magnitude identity (0 for std)
    level_set: LevelSet
    mu: tuple[int, int] | None  # mu_shift_add of a sign-and-magnitude set; None for two's complement (std)
    K: int
    N: int


@njit(cache=True)
def _act_planes(acts: np.ndarray, W: int) -> np.ndarray:
    M, K = acts.shape
    out = np.zeros((M, ACT_PLANES, W), dtype=np.uint64)
    for m in range(M):
        for k in range(K):
            u = np.uint64(acts[m, k] & ACT_MASK)
            w, i = k // WORD, np.uint64(k % WORD)
            for j in range(ACT_PLANES):
                out[m, j, w] |= ((u >> np.uint64(j)) & np.uint64(1)) << i
    return out


@njit(inline="always")
def _byte_lsbs(x: np.uint64) -> np.uint64:
    """Gather bit 0 of each of the 8 bytes of x into an 8-bit value (shift-and-mask compaction)."""
    x &= np.uint64(0x0101010101010101)
    x = (x | (x >> np.uint64(7))) & np.uint64(0x0003000300030003)
    x = (x | (x >> np.uint64(14))) & np.uint64(0x0000000F0000000F)
    return (x | (x >> np.uint64(28))) & np.uint64(0xFF)


@njit(inline="never", cache=True)
def _code_planes_row(words, W, out0, out1):
    for w in range(W):
        p0 = np.uint64(0)
        p1 = np.uint64(0)
        for b in range(8):
            x = words[8 * w + b]
            p0 |= _byte_lsbs(x) << np.uint64(8 * b)
            p1 |= _byte_lsbs(x >> np.uint64(1)) << np.uint64(8 * b)
        out0[w] = p0
        out1[w] = p1


@njit(cache=True)
def _code_planes_serial(words: np.ndarray, W: int) -> np.ndarray:
    """Planes [2, N, W] from codes viewed as uint64 [N, 8W] (8 codes per word, code i in byte i)."""
    N = words.shape[0]
    out = np.zeros((2, N, W), dtype=np.uint64)
    for n in range(N):
        _code_planes_row(words[n], W, out[0, n], out[1, n])
    return out


@njit(parallel=True, cache=True)
def _code_planes_parallel(words: np.ndarray, W: int) -> np.ndarray:
    N = words.shape[0]
    out = np.zeros((2, N, W), dtype=np.uint64)
    for n in prange(N):
        _code_planes_row(words[n], W, out[0, n], out[1, n])
    return out


@njit(inline="always")
def _even_bits(x: np.uint64) -> np.uint64:
    """Gather bits 0, 2, 4, ... of x into the low 32 bits (shift-and-mask compaction)."""
    x &= np.uint64(0x5555555555555555)
    x = (x | (x >> np.uint64(1))) & np.uint64(0x3333333333333333)
    x = (x | (x >> np.uint64(2))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    x = (x | (x >> np.uint64(4))) & np.uint64(0x00FF00FF00FF00FF)
    x = (x | (x >> np.uint64(8))) & np.uint64(0x0000FFFF0000FFFF)
    x = (x | (x >> np.uint64(16))) & np.uint64(0x00000000FFFFFFFF)
    return x


@njit(parallel=True, cache=True)
def _packed_planes(words: np.ndarray, W: int) -> np.ndarray:
    """Planes from packed codes viewed as uint64 [N, 2W] (32 codes per word, code c in bits 2c, 2c+1)."""
    N = words.shape[0]
    out = np.zeros((W, 2, N), dtype=np.uint64)
    for n in prange(N):
        for w in range(W):
            lo, hi = words[n, 2 * w], words[n, 2 * w + 1]
            out[w, 0, n] = _even_bits(lo) | (_even_bits(hi) << np.uint64(32))
            out[w, 1, n] = _even_bits(lo >> np.uint64(1)) | (_even_bits(hi >> np.uint64(1)) << np.uint64(32))
    return out


@njit(cache=True)
def _corr(planes: np.ndarray, mu_sh: int, mu_self: int) -> np.ndarray:
    """popcount(B1) + mu * popcount(B1 & B0) per output channel, mu * c as (c << mu_sh) + (c if mu_self)."""
    W, _, N = planes.shape
    out = np.zeros(N, dtype=np.int64)
    for w in range(W):
        for n in range(N):
            b0, b1 = planes[w, 0, n], planes[w, 1, n]
            c = np.int64(popcount64(b1 & b0))
            out[n] += np.int64(popcount64(b1)) + (c << mu_sh) + (c & -mu_self)
    return out


def act_planes(acts: np.ndarray) -> np.ndarray:
    """uint64 [M, 4, ceil(K/64)] bit planes of INT4 activations (int8 [M, K], values in [-8, 7]); zero padded."""
    return _act_planes(acts, -(-acts.shape[1] // WORD))


def weight_planes(codes: np.ndarray, level_set: str | LevelSet, K: int | None = None, packed: bool = False
                  ) -> WeightPlanes:
    """Lay out 2-bit codes (uint8 [N, K] one per byte, or packed [N, ceil(K/4)] with ``packed``) for the kernel."""
    ls = get_level_set(level_set)
    mu = signmag_mu(ls)
    per = formats.CODES_PER_BYTE
    if packed:
        N, nbytes = codes.shape
        K = nbytes * per if K is None else K
        W = -(-K // WORD)
        buf = np.zeros((N, W * BYTES_PER_WORD), dtype=np.uint8)
        buf[:, : min(nbytes, W * BYTES_PER_WORD)] = codes[:, : W * BYTES_PER_WORD]
        rem = K % per
        if rem:  # clear the unused codes of the last byte so they act as weight code 0 next to zero activations
            buf[:, K // per] &= np.uint8((1 << (formats.WEIGHT_CODE_BITS * rem)) - 1)
        buf[:, -(-K // per):] = 0
        planes = _packed_planes(buf.view(np.uint64).reshape(N, 2 * W), W)
    else:
        N, K = codes.shape
        W = -(-K // WORD)
        buf = np.zeros((N, W * WORD), dtype=np.uint8)
        buf[:, :K] = codes
        fn = _code_planes_parallel if N * K >= PARALLEL_MIN_CODES and numba.get_num_threads() > 1 else \
            _code_planes_serial
        planes = np.ascontiguousarray(fn(buf.view(np.uint64), W).transpose(2, 0, 1))
    shift_add = None if mu is None else mu_shift_add(mu)
    corr = np.zeros(N, dtype=np.int64) if shift_add is None else _corr(planes, *shift_add)
    return WeightPlanes(planes, corr, ls, shift_add, int(K), int(N))


@njit(inline="never", cache=True)
def _signmag_block(acc, a0, a1, a2, a3, b0, b1, mu_sh, mu_self):
    for n in range(acc.shape[0]):
        s, m = b1[n], b0[n]
        x0, x1, x2, x3 = a0 ^ s, a1 ^ s, a2 ^ s, a3 ^ s
        c = (np.int64(popcount64(x0)) + (np.int64(popcount64(x1)) << 1) + (np.int64(popcount64(x2)) << 2)
             - (np.int64(popcount64(x3)) << 3))
        d = (np.int64(popcount64(x0 & m)) + (np.int64(popcount64(x1 & m)) << 1)
             + (np.int64(popcount64(x2 & m)) << 2) - (np.int64(popcount64(x3 & m)) << 3))
        acc[n] += c + (d << mu_sh) + (d & -mu_self)


@njit(inline="never", cache=True)
def _std_block(acc, a0, a1, a2, a3, b0, b1):
    for n in range(acc.shape[0]):
        m, s = b0[n], b1[n]
        p = (np.int64(popcount64(m & a0)) + (np.int64(popcount64(m & a1)) << 1) + (np.int64(popcount64(m & a2)) << 2)
             - (np.int64(popcount64(m & a3)) << 3))
        q = (np.int64(popcount64(s & a0)) + (np.int64(popcount64(s & a1)) << 1) + (np.int64(popcount64(s & a2)) << 2)
             - (np.int64(popcount64(s & a3)) << 3))
        acc[n] += p - (q << 1)


@njit(inline="never", cache=True)
def _gemm_row(ap, planes, corr, mode, mu_sh, mu_self, out_row):
    W, _, N = planes.shape
    acc = np.zeros(N, dtype=np.int64)
    for w in range(W):
        if mode == SIGNMAG:
            _signmag_block(acc, ap[0, w], ap[1, w], ap[2, w], ap[3, w], planes[w, 0], planes[w, 1], mu_sh, mu_self)
        else:
            _std_block(acc, ap[0, w], ap[1, w], ap[2, w], ap[3, w], planes[w, 0], planes[w, 1])
    for i in range(N):
        out_row[i] = acc[i] + corr[i]


@njit(cache=True)
def _gemm_serial(ap, planes, corr, mode, mu_sh, mu_self, out):
    for m in range(ap.shape[0]):
        _gemm_row(ap[m], planes, corr, mode, mu_sh, mu_self, out[m])


@njit(parallel=True, cache=True)
def _gemm_parallel(ap, planes, corr, mode, mu_sh, mu_self, out):
    for m in prange(ap.shape[0]):
        _gemm_row(ap[m], planes, corr, mode, mu_sh, mu_self, out[m])


PARALLEL_MIN_MACS = 1 << 26
"""Below this many MACs one thread wins: a parallel launch costs ~0.1 ms, the serial kernel does >100 GMAC/s."""


def gemm(acts: np.ndarray, wp: WeightPlanes) -> np.ndarray:
    """Exact int64 [M, N] = acts @ weights^T for validated INT4 acts (int8 [M, K]) and prepared weight planes."""
    M, K = acts.shape
    if K != wp.K:
        raise ValueError(f"activations have K={K}, weights K={wp.K}")
    out = np.empty((M, wp.N), dtype=np.int64)
    if M == 0 or wp.N == 0:
        return out
    ap = act_planes(np.ascontiguousarray(acts))
    mode, (mu_sh, mu_self) = (TWOS_COMPLEMENT, (0, 0)) if wp.mu is None else (SIGNMAG, wp.mu)
    big = M >= 2 and M * K * wp.N >= PARALLEL_MIN_MACS and numba.get_num_threads() > 1
    (_gemm_parallel if big else _gemm_serial)(ap, wp.planes, wp.corr, mode, mu_sh, mu_self, out)
    return out
