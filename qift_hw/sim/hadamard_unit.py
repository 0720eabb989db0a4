"""The Hadamard unit: exact integer butterfly for 2^k, the K x K +-1 stage, then the INT4 quantizer.

Input: per-token block floating point (formats.had_input_fixed: 16-bit mantissas, one exponent per token).
Stage by stage it computes y = H_n m with H_n = H_K kron S_{2^k} (qift_hw.core.hadamard's convention): k butterfly
stages (a + b, a - b; one bit of growth each) over the 2^k axis, then for each output row of H_K a sum of K
inputs with +-1 signs (adds and subtracts; ceil(log2 K) bits). The 1/sqrt(n) is not applied to the data: it is
folded into the activation scale by the quantizer (formats.had_output_quant).
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit

from qift_hw.core import formats
from qift_hw.core.errors import QiftError
from qift_hw.core.hadamard import hadamard_matrix, split_order


@njit(cache=True)
def _butterflies(z: np.ndarray, K: int, p: int, stage_max: np.ndarray) -> None:
    """In place over each row's K blocks of p: log2(p) stages of (a + b, a - b); records max |value| per stage."""
    T = z.shape[0]
    for t in range(T):
        for kk in range(K):
            base = kk * p
            h, s = 1, 0
            while h < p:
                for i in range(base, base + p, 2 * h):
                    for j in range(i, i + h):
                        a, b = z[t, j], z[t, j + h]
                        z[t, j], z[t, j + h] = a + b, a - b
                        stage_max[s] = max(stage_max[s], abs(a + b), abs(a - b))
                h, s = 2 * h, s + 1


@njit(cache=True)
def _k_stage(z: np.ndarray, plus: np.ndarray, K: int, p: int) -> np.ndarray:
    """out[a*p + j] = sum over kk of +-z[kk*p + j], the sign from row a of H_K: adds and subtracts only."""
    T = z.shape[0]
    out = np.empty_like(z)
    for t in range(T):
        for a in range(K):
            for j in range(p):
                acc = 0
                for kk in range(K):
                    if plus[a, kk]:
                        acc += z[t, kk * p + j]
                    else:
                        acc -= z[t, kk * p + j]
                out[t, a * p + j] = acc
    return out


def _check_width(peak: int, bits: int, stage: str) -> None:
    if peak >= 2 ** (bits - 1):
        raise AssertionError(f"Hadamard unit {stage}: value outside {bits}-bit range; the bit-growth rule is broken")


def hadamard_int(m: np.ndarray, in_bits: int = formats.HAD_IN_BITS) -> np.ndarray:
    """H_n @ m over the last axis for integer m (|m| < 2^(in_bits-1)); int64, exact, with the formats' bit growth."""
    m = np.asarray(m)
    if not np.issubdtype(m.dtype, np.integer):
        raise QiftError(f"the Hadamard unit takes integer mantissas, got {m.dtype}")
    n = m.shape[-1]
    K, p = split_order(n)
    z = np.ascontiguousarray(m.astype(np.int64).reshape(-1, n))
    _check_width(int(np.abs(z).max(initial=0)), in_bits, "input")
    stages = p.bit_length() - 1
    stage_max = np.zeros(max(stages, 1), dtype=np.int64)
    _butterflies(z, K, p, stage_max)
    for s in range(stages):
        _check_width(int(stage_max[s]), in_bits + s + 1, f"butterfly stage {s + 1}")
    if K > 1:
        z = _k_stage(z, hadamard_matrix(K).numpy() > 0, K, p)
        _check_width(int(np.abs(z).max(initial=0)), formats.had_out_bits(K, p, in_bits), "K stage")
    return z.reshape(m.shape)


def hadamard_quantize(x: torch.Tensor, bits: int = formats.ACT_BITS, clip: float = formats.ACT_CLIP
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """FP activations [..., n] -> the unit's INT4 output: (q int8 [..., n], scale FP32 [..., 1]).

    formats.had_input_fixed, then `hadamard_int`, then formats.had_output_quant; q * scale approximates
    quantize(hadamard_transform(x, normalize=True)).
    """
    mant, exp = formats.had_input_fixed(x)
    y = torch.from_numpy(hadamard_int(mant.numpy()))
    return formats.had_output_quant(y, exp, x.shape[-1], bits, clip)
