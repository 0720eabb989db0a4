"""Bit formats shared by every layer (PyTorch pipeline, bit-accurate model, RTL); written down in docs/formats.md.

Weights: 2-bit codes, bit 1 = sign (1 = negative), bit 0 = magnitude select (1 = larger magnitude).
Activations: INT4 two's complement [-8, 7], one symmetric FP32 scale per token.
KV cache: 4-bit unsigned with an FP32 scale and integer zero point per head.
Accumulator: signed, ``ACC_BITS`` wide (default 32), every add saturating in ascending k; overflow is reported
(sticky flag) or raises, never wraps.
Hadamard unit: 16-bit block-floating-point input, +1 bit per butterfly stage and ceil(log2 K) for the K stage,
1/sqrt(n) folded into the following INT4 scale.
Dequantization: ((fp32(acc) * act_scale) * weight_scale * unit) in FP32, round to nearest even at each step.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from qift_hw.core.errors import QiftError
from qift_hw.core.levels import LEVEL_SETS, MULTIPLIER_PE, SHIFT_ADD_PES, LevelSet, get_level_set

WEIGHT_CODE_BITS = 2
CODES_PER_BYTE = 8 // WEIGHT_CODE_BITS
"""2-bit codes in one byte of packed storage (``levels.pack_codes``)."""
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

HW_LEVEL_SETS = tuple(ls.name for pe in SHIFT_ADD_PES for ls in LEVEL_SETS.values() if ls.pe == pe)
"""Level sets the multiplier-free hardware decodes (sign, shift and add only), in ``SHIFT_ADD_PES`` order."""
MULTIPLIER_LEVEL_SETS = tuple(ls.name for ls in LEVEL_SETS.values() if ls.pe == MULTIPLIER_PE)
"""Integer grids computed by the multiplier baseline PE (int3, int4, int8): the comparison points."""

HW_LEVEL_SET = "pot_mnz"
"""The level set the accelerator is built for (PoT-MNZ: sign and shift only); the default wherever one is needed."""


def _int_set(level_set: str | LevelSet) -> LevelSet:
    """The level set, checked to have integer weights (a hardware decode: shift-add or multiplier PE)."""
    ls = get_level_set(level_set)
    if ls.pe is None:
        raise QiftError(f"level set {ls.name!r} has no integer hardware decode; use one of {', '.join(HW_LEVEL_SETS)}, "
                        f"or {', '.join(MULTIPLIER_LEVEL_SETS)} for the multiplier baselines")
    return ls


def weight_int_values(level_set: str | LevelSet) -> np.ndarray:
    """Integer weight value of each code (index = code), e.g. pot_mnz -> [1, 4, -1, -4]."""
    return _int_set(level_set).int_weights


def weight_ints(codes: torch.Tensor, level_set: str | LevelSet) -> torch.Tensor:
    """Integer weights (int64, same shape) of uint8 codes: the value each PE adds, before the scale."""
    table = torch.as_tensor(_int_set(level_set).int_weights, device=codes.device)
    return table[codes.long()]


def weight_unit(level_set: str | LevelSet) -> float:
    """Factor from integer weight to level (0.5 for MNZ, whose levels are {+-1, +-3} / 2); folded into the scale."""
    return _int_set(level_set).unit


def signed_range(bits: int) -> tuple[int, int]:
    """Inclusive range of a ``bits``-wide two's complement integer."""
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def acc_range(bits: int = ACC_BITS) -> tuple[int, int]:
    """Inclusive range of a signed ``bits``-wide accumulator."""
    if not 2 <= bits <= 64:
        raise QiftError(f"accumulator width must be 2..64 bits, got {bits}")
    return signed_range(bits)


def acc_bits_needed(K: int, level_set: str | LevelSet = HW_LEVEL_SET, act_bits: int = ACT_BITS) -> int:
    """Accumulator width that can never overflow for a K-term dot product of INT activations and these weights:
    the sign bit plus the bits of the worst |sum|, K * max_abs_product."""
    return int(K * max_abs_product(_int_set(level_set), act_bits)).bit_length() + 1


def _amax_scale(amax: torch.Tensor, qmax: int, clip: float) -> torch.Tensor:
    s = (amax.to(SCALE_DTYPE) * clip) / qmax
    return torch.where(s > 0, s, torch.ones_like(s))


def quantize_act(x: torch.Tensor, bits: int = ACT_BITS, clip: float = ACT_CLIP) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token symmetric quantization over the last dim: (q int8, scale FP32 [..., 1]).

    scale = clip * max|x| / (2^(b-1) - 1) in FP32 (1.0 for an all-zero token); q = clamp(round_half_even(x / scale),
    -2^(b-1), 2^(b-1) - 1), the division done in FP32.
    """
    q, scale = _act_levels(x, bits, clip)
    return q.to(torch.int8), scale


def _row_min_max(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max over the last dim (keepdim). Two reductions, not `torch.aminmax`: on CPU aminmax over the
    last dim took 10-20x as long (2048 x 576 float32, one thread: 2.5 ms against 0.12 ms); the values are the same."""
    return x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)


def _act_levels(x: torch.Tensor, bits: int, clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """quantize_act's integers as FP32 values (a new tensor) and its scale; max|x| from the row min and max."""
    if not 2 <= bits <= 8:
        raise QiftError(f"activation width must be 2..8 bits, got {bits}")
    qmax = 2 ** (bits - 1) - 1
    xf = x.to(SCALE_DTYPE)
    lo, hi = _row_min_max(xf)
    scale = _amax_scale(torch.maximum(hi, lo.neg_()), qmax, clip)
    q = torch.div(xf, scale).round_().clamp_(-qmax - 1, qmax)
    return q, scale


def fake_quant_act(x: torch.Tensor, bits: int = ACT_BITS, clip: float = ACT_CLIP) -> torch.Tensor:
    """Quantize then dequantize activations per token (q * scale in FP32, cast back to x's dtype)."""
    q, s = _act_levels(x, bits, clip)
    return q.mul_(s).to(x.dtype)


def quantize_kv(x: torch.Tensor, bits: int = KV_BITS, clip: float = KV_CLIP
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric quantization over the last dim (one group = one head): (q uint8, scale FP32, zero FP32).

    xmax = clip * max(x, 0), xmin = clip * min(x, 0); scale = (xmax - xmin) / (2^b - 1); zero = round(-xmin / scale);
    q = clamp(round(x / scale) + zero, 0, 2^b - 1).
    """
    q, scale, zero = _kv_levels(x, bits, clip)
    return q.to(torch.uint8), scale, zero


def _kv_levels(x: torch.Tensor, bits: int, clip: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """quantize_kv's integers as FP32 values (a new tensor), scale and zero."""
    if not 2 <= bits <= 8:
        raise QiftError(f"KV width must be 2..8 bits, got {bits}")
    qmax = 2**bits - 1
    xf = x.to(SCALE_DTYPE)
    lo, hi = _row_min_max(xf)
    xmax = hi.clamp_(min=0).mul_(clip)
    xmin = lo.clamp_(max=0).mul_(clip)
    scale = (xmax - xmin) / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = torch.round(-xmin / scale)
    q = torch.div(xf, scale).round_().add_(zero).clamp_(0, qmax)
    return q, scale, zero


def fake_quant_kv(x: torch.Tensor, bits: int = KV_BITS, clip: float = KV_CLIP) -> torch.Tensor:
    """Quantize then dequantize the KV cache per head: scale * (q - zero), cast back to x's dtype."""
    q, s, z = _kv_levels(x, bits, clip)
    return q.sub_(z).mul_(s).to(x.dtype)


def saturate(acc: np.ndarray | torch.Tensor, bits: int = ACC_BITS, policy: str = "saturate"):
    """Apply the overflow policy to exact int64 sums: clamp (returns (values, n_overflowed)) or raise.

    This clamps final values only; the hardware saturates every partial sum in ascending k (``saturating_dot``,
    what qift_hw.sim.matmul computes). The two agree whenever no partial sum leaves the range.
    """
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


# ---------------------------------------------------------------- PE products and accumulation order

def product_range(level_set: str | LevelSet, act_bits: int = ACT_BITS) -> tuple[int, int]:
    """Exact (min, max) of integer weight x INT``act_bits`` activation; a product is linear in the activation, so
    its extremes lie at the ends of the activation range."""
    acts = signed_range(act_bits)
    prods = [int(w) * a for w in _int_set(level_set).int_weights for a in acts]
    return min(prods), max(prods)


PE_PRODUCT_RANGE = {name: product_range(name) for name in HW_LEVEL_SETS}
"""Exact range of weight x INT4 activation for each hardware level set (the -8 activation gives the extremes)."""

ACC_ORDER = "k-ascending"
"""Partial sums are added in ascending k and every add saturates (see ``saturating_dot``); both array dataflows
(docs/array_protocol.md) add in this order, so the result does not depend on the array size or the dataflow."""


def max_abs_product(level_set: str | LevelSet, act_bits: int = ACT_BITS) -> int:
    """Largest |weight x activation| for this level set and activation width (what one MAC can add)."""
    lo, hi = product_range(_int_set(level_set), act_bits)
    return max(-lo, hi)


def cannot_overflow(K: int, level_set: str | LevelSet, bits: int = ACC_BITS, act_bits: int = ACT_BITS) -> bool:
    """True when no partial sum of a K-term dot product can leave the ``bits``-wide range (fast, unchecked path)."""
    return K * max_abs_product(_int_set(level_set), act_bits) <= acc_range(bits)[1]


def saturating_dot(products: np.ndarray, bits: int = ACC_BITS) -> tuple[int, bool]:
    """The hardware accumulation rule, written out: acc = sat(acc + p) for p in order; (value, any add saturated).

    sat clamps to [-2^(bits-1), 2^(bits-1) - 1]. A sum that leaves the range and comes back is not the exact
    sum: that is why the overflow flag is sticky and reported with the value.
    """
    lo, hi = acc_range(bits)
    acc, flag = 0, False
    for p in np.asarray(products, dtype=np.int64).tolist():
        x = acc + p
        acc = min(max(x, lo), hi)
        flag |= acc != x
    return acc, flag


# ---------------------------------------------------------------- Hadamard unit

HAD_IN_BITS = 16
"""Signed width of the Hadamard unit's input mantissas (block floating point: one exponent per token)."""
HAD_IN_MAX = 2 ** (HAD_IN_BITS - 1) - 1


def had_input_fixed(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Convert FP activations to the Hadamard unit's input: (mantissas int32, exponent int32 [..., 1]), x ~ m * 2^e.

    Per token (last dim): max|x| = f * 2^E with f in [0.5, 1) (frexp); e = E - (HAD_IN_BITS - 1);
    m = clamp(round_half_even(x * 2^-e), -HAD_IN_MAX, HAD_IN_MAX). Scaling by 2^-e is exact in FP32; an
    all-zero token gets e = 0.
    """
    xf = x.to(SCALE_DTYPE)
    amax = xf.abs().amax(dim=-1, keepdim=True)
    _, E = torch.frexp(amax)
    e = torch.where(amax > 0, E - (HAD_IN_BITS - 1), torch.zeros_like(E)).to(torch.int32)
    m = torch.clamp(torch.round(torch.ldexp(xf, -e)), -HAD_IN_MAX, HAD_IN_MAX)
    return m.to(torch.int32), e


def had_growth_bits(K: int, p: int) -> int:
    """Bits an n = K * p (p = 2^k) Hadamard adds: one per butterfly stage (k) plus ceil(log2 K) for the K stage."""
    if p < 1 or p & (p - 1):
        raise QiftError(f"the butterfly part of a Hadamard order must be a power of two, got {p}")
    if K < 1:
        raise QiftError(f"the K factor of a Hadamard order must be >= 1, got {K}")
    return int(p).bit_length() - 1 + (int(K - 1).bit_length() if K > 1 else 0)


def had_out_bits(K: int, p: int, in_bits: int = HAD_IN_BITS) -> int:
    """Signed width of the Hadamard unit's output for input width ``in_bits`` (no overflow is possible)."""
    return in_bits + had_growth_bits(K, p)


def had_output_quant(y: torch.Tensor, exp: torch.Tensor, n: int, bits: int = ACT_BITS, clip: float = ACT_CLIP
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """INT4 quantizer after the Hadamard unit: (q int8, activation scale FP32 [..., 1]).

    y = H x_int (exact integers). q, s_u = quantize_act(fp32(y)) (fp32(y) rounds to nearest even above 2^24);
    the unit's 1/sqrt(n) and the input exponent are folded into the scale only:
    scale = fp32(s_u * fp32(1/sqrt(n))) * 2^exp (the power of two is exact).
    """
    q, s_u = quantize_act(y.to(SCALE_DTYPE), bits, clip)
    inv = torch.tensor(1.0 / math.sqrt(n), dtype=torch.float64).to(SCALE_DTYPE)
    return q, torch.ldexp(s_u * inv, exp.to(torch.int32))


# ---------------------------------------------------------------- dequantization

def weight_scale_eff(w_scale: torch.Tensor, level_set: str | LevelSet) -> torch.Tensor:
    """Per-output-channel FP32 scale of the integer weight: fp32(scale * unit) (unit is 1 or 1/2, so exact)."""
    return (w_scale.to(SCALE_DTYPE).reshape(-1) * _int_set(level_set).unit).to(SCALE_DTYPE)


FP32_EXACT_INT = 2**24
"""Every integer of magnitude <= 2^24 is exact in FP32, so an FP32 dot product of integer operands whose partial
sums stay within it is exact in any summation order (the integer-product mode of the PyTorch path relies on it)."""


HW_MAX_ABS_WEIGHT = max(int(np.abs(LEVEL_SETS[name].int_weights).max()) for name in HW_LEVEL_SETS)
"""Largest |integer weight| of the hardware level sets (4: PoT-MNZ)."""


def exact_float_products(K: int, act_bits: int = ACT_BITS, max_abs_weight: int = HW_MAX_ABS_WEIGHT) -> bool:
    """True when a K-term FP32 dot product of INT``act_bits`` values and integer weights of magnitude
    <= ``max_abs_weight`` is exact: K * 2^(act_bits-1) * max_abs_weight <= 2^24."""
    return K * 2 ** (act_bits - 1) * max_abs_weight <= FP32_EXACT_INT


def dequantize_acc(acc: torch.Tensor, act_scale: torch.Tensor, w_scale: torch.Tensor, level_set: str | LevelSet,
                   bias: torch.Tensor | None = None) -> torch.Tensor:
    """Output of a quantized linear from its integer accumulators [..., N]; FP32, each step round to nearest even.

    y = ((fp32(acc) * act_scale[token]) * weight_scale_eff[n]) (+ fp32(bias[n])), in exactly this order.
    """
    y = acc.to(SCALE_DTYPE) * act_scale.to(SCALE_DTYPE)
    y = y * weight_scale_eff(w_scale, _int_set(level_set))
    return y if bias is None else y + bias.to(SCALE_DTYPE)


# ---------------------------------------------------------------- FP32 fields of the integer quantizer RTL

FP32_FRAC_BITS = int(np.finfo(np.float32).nmant)
"""Stored fraction bits of an FP32 value (23)."""
FP32_SIG_BITS = FP32_FRAC_BITS + 1
"""Bits of an FP32 significand with its hidden leading one (24): a normal value is S * 2^e, 2^23 <= S < 2^24."""
FP32_EXP_BITS = int(np.finfo(np.float32).nexp)
"""Bits of the biased FP32 exponent field (8)."""
FP32_EXP_BIAS = int(np.finfo(np.float32).maxexp) - 1
"""Bias of the FP32 exponent field (127): a normal S * 2^e has field e + FP32_FRAC_BITS + FP32_EXP_BIAS."""
FP32_BITS = 1 + FP32_EXP_BITS + FP32_FRAC_BITS
"""Width of an FP32 bit pattern (32): sign, exponent field, fraction."""


def fp32_significand(x: float) -> tuple[int, int]:
    """(S, e) with fp32(x) = S * 2^e exactly and 2^23 <= S < 2^24 (x normal and nonzero)."""
    frac, exp = math.frexp(float(np.float32(x)))
    if frac == 0:
        raise QiftError("fp32_significand needs a nonzero value")
    return int(frac * 2**FP32_SIG_BITS), exp - FP32_SIG_BITS


ACT_CLIP_FP32_SIG, ACT_CLIP_FP32_EXP = fp32_significand(ACT_CLIP)
"""fp32(ACT_CLIP) = ACT_CLIP_FP32_SIG * 2^ACT_CLIP_FP32_EXP (15099494 * 2^-24 for 0.9): the quantizer RTL
multiplies max|y| by this integer significand instead of by an FP32 value."""

HAD_QUANT_LATENCY = 4
"""Pipeline stages of the INT4 quantizer after the Hadamard unit (max|y|; scale; thresholds; compare): the RTL's
``Int4Quantizer.LATENCY`` and the cycle model's quantizer depth."""
