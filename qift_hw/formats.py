"""Bit formats shared by every layer (PyTorch pipeline, bit-accurate model, RTL); written down in docs/formats.md.

Weights: 2-bit codes, bit 1 = sign (1 = negative), bit 0 = magnitude select (1 = larger magnitude).
Activations: INT4 two's complement [-8, 7], one symmetric FP32 scale per token.
KV cache: 4-bit unsigned with an FP32 scale and integer zero point per head.
Accumulator: signed, ``ACC_BITS`` wide (default 32); overflow saturates and is reported, or raises.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from qift_hw.errors import QiftError
from qift_hw.levels import LevelSet, get_level_set

WEIGHT_CODE_BITS = 2
SIGN_BIT = 1
MAG_BIT = 0

ACT_BITS = 4
ACT_QMIN = -(2 ** (ACT_BITS - 1))
ACT_QMAX = 2 ** (ACT_BITS - 1) - 1
ACT_CLIP = 0.9

KV_BITS = 4
KV_CLIP = 0.95

ACC_BITS = 32
OVERFLOW_POLICIES = ("saturate", "error")
SCALE_DTYPE = torch.float32

_INT_WEIGHTS = {
    # integer weight for codes 0, 1, 2, 3 and the factor that turns it into a level (level = unit * int)
    "pot_mnz": ((1, 4, -1, -4), 1.0),
    "mnz": ((1, 3, -1, -3), 0.5),
    "pm12": ((1, 2, -1, -2), 1.0),
    "std": ((0, 1, -2, -1), 1.0),
}
HW_LEVEL_SETS = tuple(_INT_WEIGHTS)
"""Level sets the multiplier-free hardware decodes (sign, shift and add only)."""


def _hw_set(level_set: str | LevelSet) -> LevelSet:
    ls = get_level_set(level_set)
    if ls.name not in _INT_WEIGHTS:
        raise QiftError(f"level set {ls.name!r} has no integer hardware decode; use one of {', '.join(HW_LEVEL_SETS)}")
    return ls


def weight_int_values(level_set: str | LevelSet) -> np.ndarray:
    """Integer weight value of each 2-bit code (index = code), e.g. pot_mnz -> [1, 4, -1, -4]."""
    return np.array(_INT_WEIGHTS[_hw_set(level_set).name][0], dtype=np.int64)


def weight_unit(level_set: str | LevelSet) -> float:
    """Factor from integer weight to level (0.5 for MNZ, whose levels are {+-1, +-3} / 2); folded into the scale."""
    return _INT_WEIGHTS[_hw_set(level_set).name][1]


def pot_shift_of_code(code: np.ndarray | int) -> np.ndarray | int:
    """PoT-MNZ shift amount: bit 0 selects a shift of 2 (x4) instead of 0 (x1)."""
    return (np.asarray(code) & 1) << 1


def acc_range(bits: int = ACC_BITS) -> tuple[int, int]:
    """Inclusive range of a signed ``bits``-wide accumulator."""
    if not 2 <= bits <= 64:
        raise QiftError(f"accumulator width must be 2..64 bits, got {bits}")
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def acc_bits_needed(K: int, level_set: str | LevelSet = "pot_mnz", act_bits: int = ACT_BITS) -> int:
    """Accumulator width that can never overflow for a K-term dot product of INT activations and these weights."""
    wmax = int(np.abs(weight_int_values(level_set)).max())
    worst = K * wmax * 2 ** (act_bits - 1)
    return int(math.ceil(math.log2(worst + 1))) + 1


def _amax_scale(amax: torch.Tensor, qmax: int, clip: float) -> torch.Tensor:
    s = (amax.to(SCALE_DTYPE) * clip) / qmax
    return torch.where(s > 0, s, torch.ones_like(s))


def quantize_act(x: torch.Tensor, bits: int = ACT_BITS, clip: float = ACT_CLIP) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token symmetric quantization over the last dim: (q int8, scale FP32 [..., 1]).

    scale = clip * max|x| / (2^(b-1) - 1) in FP32 (1.0 for an all-zero token); q = clamp(round_half_even(x / scale),
    -2^(b-1), 2^(b-1) - 1), the division done in FP32.
    """
    if not 2 <= bits <= 8:
        raise QiftError(f"activation width must be 2..8 bits, got {bits}")
    qmax = 2 ** (bits - 1) - 1
    xf = x.to(SCALE_DTYPE)
    scale = _amax_scale(xf.abs().amax(dim=-1, keepdim=True), qmax, clip)
    q = torch.clamp(torch.round(xf / scale), -qmax - 1, qmax)
    return q.to(torch.int8), scale


def fake_quant_act(x: torch.Tensor, bits: int = ACT_BITS, clip: float = ACT_CLIP) -> torch.Tensor:
    """Quantize then dequantize activations per token (q * scale in FP32, cast back to x's dtype)."""
    q, s = quantize_act(x, bits, clip)
    return (q.to(SCALE_DTYPE) * s).to(x.dtype)


def quantize_kv(x: torch.Tensor, bits: int = KV_BITS, clip: float = KV_CLIP
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric quantization over the last dim (one group = one head): (q uint8, scale FP32, zero FP32).

    xmax = clip * max(x, 0), xmin = clip * min(x, 0); scale = (xmax - xmin) / (2^b - 1); zero = round(-xmin / scale);
    q = clamp(round(x / scale) + zero, 0, 2^b - 1).
    """
    if not 2 <= bits <= 8:
        raise QiftError(f"KV width must be 2..8 bits, got {bits}")
    qmax = 2**bits - 1
    xf = x.to(SCALE_DTYPE)
    xmax = xf.amax(dim=-1, keepdim=True).clamp(min=0) * clip
    xmin = xf.amin(dim=-1, keepdim=True).clamp(max=0) * clip
    scale = (xmax - xmin) / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = torch.round(-xmin / scale)
    q = torch.clamp(torch.round(xf / scale) + zero, 0, qmax)
    return q.to(torch.uint8), scale, zero


def fake_quant_kv(x: torch.Tensor, bits: int = KV_BITS, clip: float = KV_CLIP) -> torch.Tensor:
    """Quantize then dequantize the KV cache per head: scale * (q - zero), cast back to x's dtype."""
    q, s, z = quantize_kv(x, bits, clip)
    return ((q.to(SCALE_DTYPE) - z) * s).to(x.dtype)


def saturate(acc: np.ndarray | torch.Tensor, bits: int = ACC_BITS, policy: str = "saturate"):
    """Apply the accumulator overflow policy to exact int64 sums: clamp (returns (values, n_overflowed)) or raise."""
    if policy not in OVERFLOW_POLICIES:
        raise QiftError(f"unknown overflow policy {policy!r}; use one of {', '.join(OVERFLOW_POLICIES)}")
    lo, hi = acc_range(bits)
    over = (acc < lo) | (acc > hi)
    n = int(over.sum())
    if n and policy == "error":
        raise QiftError(f"{n} accumulator value(s) overflow {bits} bits; use a wider accumulator (--acc-bits)")
    if isinstance(acc, torch.Tensor):
        return acc.clamp(lo, hi), n
    return np.clip(acc, lo, hi), n
