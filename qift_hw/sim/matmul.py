"""`matmul`: the bit-accurate W2 x INT4 product every check goes through.

Three exact kernels give the same answer. When no partial sum can overflow the accumulator (`formats.cannot_overflow`:
K * max|product| fits), saturation cannot happen, the result is the exact integer sum in any order, and a fast
kernel computes it: byte dot products on AVX-512 VNNI (`bytedot`, where the CPU has it) or bit planes (`bitplane`).
Otherwise the PE kernel runs the PE datapath MAC by MAC with a saturating ``acc_bits`` accumulator in ascending k,
exactly as both array dataflows do (docs/array_protocol.md). Overflow never wraps: it saturates and
is reported (a warning, or the mask with ``return_overflow``), or raises with ``overflow="error"``.
"""

from __future__ import annotations

import warnings

import numpy as np
from numba import njit, prange

from qift_hw.core import formats
from qift_hw.core.errors import QiftError
from qift_hw.core.levels import LevelSet, get_level_set, unpack_codes
from qift_hw.sim import bitplane, bytedot
from qift_hw.sim.pe import MULT, pe_kind, pe_product_nb

KERNELS = ("auto", "bytes", "bitplane", "pe")


class SaturationWarning(UserWarning):
    """Some accumulators saturated (overflow policy "saturate"); the values are clamped, not exact."""


@njit(parallel=True, cache=True)
def _pe_gemm(acts, codes, kind, code_bits, lo, hi, out, ovf):
    M, K = acts.shape
    N = codes.shape[0]
    for n in prange(N):
        for m in range(M):
            acc = np.int64(0)
            flag = False
            for k in range(K):
                x = acc + pe_product_nb(kind, np.int64(codes[n, k]), np.int64(acts[m, k]), code_bits)
                acc = min(max(x, lo), hi)
                flag |= acc != x
            out[m, n] = acc
            ovf[m, n] = flag


class PreparedWeights:
    """Codes of one weight matrix, validated once and laid out for the kernels (reuse it across calls)."""

    def __init__(self, codes, level_set: str | LevelSet = formats.HW_LEVEL_SET, packed: bool = False,
                 K: int | None = None):
        ls = get_level_set(level_set)
        self.level_set = ls
        self.kind, self.code_bits = pe_kind(ls)
        c = _as_numpy(codes, "codes")
        if c.ndim != 2:
            raise QiftError(f"codes must be 2-D [N, K] (or packed [N, ceil(K/{formats.CODES_PER_BYTE})]), got shape "
                            f"{c.shape}")
        if c.dtype != np.uint8:
            raise QiftError(f"codes must be uint8, got {c.dtype}")
        if packed:
            if self.code_bits != formats.WEIGHT_CODE_BITS:
                raise QiftError(f"packed codes are {formats.WEIGHT_CODE_BITS}-bit; level set {ls.name!r} has "
                                f"{self.code_bits}-bit codes")
            held = c.shape[1] * formats.CODES_PER_BYTE
            K = held if K is None else int(K)
            if not 0 <= K <= held:
                raise QiftError(f"packed rows hold {held} codes, K={K} does not fit")
            self._packed = np.ascontiguousarray(c)
            self._codes = None
        else:
            if K is not None and K != c.shape[1]:
                raise QiftError(f"codes have K={c.shape[1]} but K={K} was given")
            if c.size and int(c.max()) >= 2**self.code_bits:
                raise QiftError(f"a code exceeds {self.code_bits} bits (max {int(c.max())}); codes must be unpacked "
                                "one per byte, or pass packed=True")
            K = c.shape[1]
            self._packed = None
            self._codes = np.ascontiguousarray(c)
        self.N, self.K = int(c.shape[0]), int(K)
        self._planes: bitplane.WeightPlanes | None = None
        self._bytes: bytedot.WeightBytes | None = None
        self._safe: dict[int, bool] = {}
        self._fast: dict[int, str] = {}

    @property
    def codes(self) -> np.ndarray:
        """One code per byte, uint8 [N, K]."""
        if self._codes is None:
            import torch

            self._codes = unpack_codes(torch.from_numpy(self._packed), self.K, formats.WEIGHT_CODE_BITS).numpy()
        return self._codes

    @property
    def planes(self) -> bitplane.WeightPlanes:
        """Bit-plane layout for the fast kernel (built on first use)."""
        if self.kind == MULT:
            raise QiftError(f"the bit-plane kernel covers the 2-bit sets only, not {self.level_set.name!r}")
        if self._planes is None:
            if self._packed is not None:
                self._planes = bitplane.weight_planes(self._packed, self.level_set, self.K, packed=True)
            else:
                self._planes = bitplane.weight_planes(self._codes, self.level_set)
        return self._planes

    @property
    def byte_panels(self) -> bytedot.WeightBytes:
        """Integer weights in byte panels for the byte-dot kernel (built on first use)."""
        if self._bytes is None:
            w = formats.weight_int_values(self.level_set)
            if int(w.min()) < -128 or int(w.max()) > 127:
                raise QiftError(f"level set {self.level_set.name!r} has weights beyond a signed byte; use kernel='pe'")
            self._bytes = bytedot.weight_bytes(w.astype(np.int8)[self.codes])
        return self._bytes

    def cannot_overflow(self, acc_bits: int) -> bool:
        """`formats.cannot_overflow` for these weights (memoized: it sits on every call's path; it also rejects a
        bad ``acc_bits``)."""
        safe = self._safe.get(acc_bits)
        if safe is None:
            safe = self._safe[acc_bits] = formats.cannot_overflow(self.K, self.level_set, acc_bits)
        return safe

    def fast_kernel(self, acc_bits: int) -> str:
        """The kernel ``kernel="auto"`` runs: "bytes" (AVX-512 VNNI), "bitplane" or "pe" (when an overflow is possible)."""
        fast = self._fast.get(acc_bits)
        if fast is None:
            amax = int(np.abs(formats.weight_int_values(self.level_set)).max())
            if not self.cannot_overflow(acc_bits):
                fast = "pe"
            elif bytedot.VNNI and bytedot.fits(self.K, amax):
                fast = "bytes"
            else:
                fast = "pe" if self.kind == MULT else "bitplane"
            self._fast[acc_bits] = fast
        return fast


def prepare_weights(codes, level_set: str | LevelSet = formats.HW_LEVEL_SET, packed: bool = False,
                    K: int | None = None) -> PreparedWeights:
    """Validate and lay out a weight matrix once (``matmul`` accepts the result in place of the codes)."""
    pw = PreparedWeights(codes, level_set, packed, K)
    fast = pw.fast_kernel(formats.ACC_BITS)
    if fast == "bytes":
        _ = pw.byte_panels
    elif fast == "bitplane":
        _ = pw.planes
    return pw


def _as_numpy(x, what: str) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    try:
        import torch

        if isinstance(x, torch.Tensor):
            return x.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    raise QiftError(f"{what} must be a numpy array or torch tensor, got {type(x).__name__}")


def _check_range(a: np.ndarray, act_bits: int) -> None:
    lo, hi = formats.signed_range(act_bits)
    if a.size and (int(a.min()) < lo or int(a.max()) > hi):
        raise QiftError(f"acts must lie in [{lo}, {hi}] (INT{act_bits}), got [{int(a.min())}, {int(a.max())}]")


def _int8_acts(acts, act_bits: int) -> np.ndarray:
    """Integer 2-D acts as int8, C-contiguous; range-checked only when converted (int8 input is left to the kernel,
    which checks the range as it stages the activations)."""
    a = _as_numpy(acts, "acts")
    if a.ndim != 2:
        raise QiftError(f"acts must be 2-D [M, K], got shape {a.shape}")
    if a.dtype == np.int8 and a.flags.c_contiguous:
        return a
    if not np.issubdtype(a.dtype, np.integer):
        raise QiftError(f"acts must be an integer array (INT4 values in int8), got {a.dtype}")
    _check_range(a, act_bits)
    return np.ascontiguousarray(a, dtype=np.int8)


def check_acts(acts, act_bits: int = formats.ACT_BITS) -> np.ndarray:
    """Validate INT4 activations: integer 2-D [M, K] within [-8, 7]; returns int8, C-contiguous."""
    a = _int8_acts(acts, act_bits)
    _check_range(a, act_bits)
    return a


def matmul(acts, codes, level_set: str | LevelSet = formats.HW_LEVEL_SET, acc_bits: int = formats.ACC_BITS,
           overflow: str = "saturate", *, packed: bool = False, K: int | None = None,
           return_overflow: bool = False, kernel: str = "auto"):
    """Integer accumulators acts @ W^T, int64 [M, N], as the hardware computes them.

    acts: int8 [M, K] in [-8, 7]. codes: uint8 [N, K] one code per byte (bit 1 = negative, bit 0 = larger
    magnitude), packed [N, ceil(K/4)] with ``packed=True`` (then ``K`` if it is not a multiple of 4), or a
    ``PreparedWeights``. Accumulation: ``acc_bits`` wide, saturating in ascending k (formats.saturating_dot).
    overflow: "saturate" (clamped values; a SaturationWarning unless ``return_overflow``) or "error" (QiftError).
    return_overflow: also return the bool [M, N] mask of accumulators that saturated.
    kernel: "auto" (when no overflow is possible: "bytes" on CPUs with AVX-512 VNNI, else "bitplane" (2-bit sets)
    or "pe"; when an overflow is possible: "pe"), "bytes", "bitplane" or "pe".
    """
    if overflow not in formats.OVERFLOW_POLICIES:
        raise QiftError(f"unknown overflow policy {overflow!r}; use one of {', '.join(formats.OVERFLOW_POLICIES)}")
    if kernel not in KERNELS:
        raise QiftError(f"unknown kernel {kernel!r}; use one of {', '.join(KERNELS)}")
    if isinstance(codes, PreparedWeights):
        pw = codes
        if level_set != pw.level_set.name and get_level_set(level_set).name != pw.level_set.name:
            raise QiftError(f"prepared weights are {pw.level_set.name!r} but level_set={get_level_set(level_set).name!r}")
    else:
        pw = PreparedWeights(codes, level_set, packed, K)
    chosen = pw.fast_kernel(acc_bits) if kernel == "auto" else kernel
    if chosen != "pe" and not pw.cannot_overflow(acc_bits):
        raise QiftError(f"kernel={kernel!r} needs an accumulator that cannot overflow (K={pw.K} needs "
                        f"{formats.acc_bits_needed(pw.K, pw.level_set)} bits, got {acc_bits}); use kernel='pe'")
    if chosen == "bytes":
        a = _int8_acts(acts, formats.ACT_BITS)
        if a.shape[1] != pw.K:
            raise QiftError(f"acts have K={a.shape[1]} columns but the weights have K={pw.K}")
        out = bytedot.gemm(a, pw.byte_panels)
        return (out, np.zeros(out.shape, dtype=bool)) if return_overflow else out
    lo, hi = formats.acc_range(acc_bits)
    a = check_acts(acts)
    if a.shape[1] != pw.K:
        raise QiftError(f"acts have K={a.shape[1]} columns but the weights have K={pw.K}")
    M, N = a.shape[0], pw.N
    if chosen == "bitplane":
        out = bitplane.gemm(a, pw.planes)
        ovf = np.zeros((M, N), dtype=bool)
    else:
        out = np.empty((M, N), dtype=np.int64)
        ovf = np.empty((M, N), dtype=bool)
        if M and N:
            _pe_gemm(a, pw.codes, pw.kind, pw.code_bits, lo, hi, out, ovf)
    n_ovf = int(ovf.sum())
    if n_ovf and overflow == "error":
        raise QiftError(f"{n_ovf} of {M * N} accumulators overflow {acc_bits} bits; use a wider accumulator "
                        f"(K={pw.K} needs {formats.acc_bits_needed(pw.K, pw.level_set)} bits to be safe)")
    if return_overflow:
        return out, ovf
    if n_ovf:
        warnings.warn(f"{n_ovf} of {M * N} accumulators saturated at {acc_bits} bits", SaturationWarning,
                      stacklevel=2)
    return out
