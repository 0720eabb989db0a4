"""Closed-form timing of the lane-multiplexed Hadamard + INT4 quantizer unit (``qift_hw.rtl.hadamard_lanes``).

The unit holds one vector at a time and runs five phases over an L-lane datapath (R = n / L rows of L lanes,
n = K * 2^k): LOAD R beats (butterfly stages of stride < L on the way in), c = max(k - log2 L, 0) in-place
butterfly passes over row pairs of R + 1 cycles each, the K x K +-1 stage (K > 1) at one row of K terms per
cycle, K * R cycles, ``SCALE_CYCLES`` for the scale and the thresholds, and OUT R beats. With a source that
is always valid and a sink that is always ready, vectors follow each other without a gap.
"""

from __future__ import annotations

from qift_hw.core import formats
from qift_hw.core.errors import QiftError
from qift_hw.core.hadamard import split_order

THRESHOLDS = -formats.ACT_QMIN
"""INT4 thresholds per vector (8: |q| from 0 to 8), computed one per cycle."""
SCALE_CYCLES = 1 + THRESHOLDS
"""The FP32 scale (one cycle), then one cycle per threshold."""


def _shape(n: int, lanes: int) -> tuple[int, int, int]:
    """(K, R, c) of order n at ``lanes`` lanes; rejects a lane count the unit cannot be built with."""
    K, p = split_order(n)
    if lanes < 2 or lanes & (lanes - 1) or n % lanes or lanes >= n:
        raise QiftError(f"lanes must be a power of two >= 2 that divides n = {n} and is below it, got {lanes}")
    return K, n // lanes, max(p.bit_length() - lanes.bit_length(), 0)


def lane_unit_period(n: int, lanes: int) -> int:
    """Cycles between the first input beats of two back-to-back vectors (no back-pressure):
    2R + c (R + 1) + [K > 1] K R + SCALE_CYCLES."""
    K, R, c = _shape(n, lanes)
    return 2 * R + c * (R + 1) + (K * R if K > 1 else 0) + SCALE_CYCLES


def lane_unit_latency(n: int, lanes: int) -> int:
    """Cycles from a vector's first input beat to its first output beat: the period less the R output beats."""
    return lane_unit_period(n, lanes) - n // lanes


def lane_unit_cycles(vectors: int, n: int, lanes: int) -> int:
    """Cycles from the first input beat to the last output beat, inclusive, for ``vectors`` back-to-back vectors:
    vectors x ``lane_unit_period``."""
    if vectors < 0:
        raise QiftError(f"vectors must be >= 0, got {vectors}")
    return vectors * lane_unit_period(n, lanes) if vectors else 0


def usable_lanes(n: int, lanes: int) -> int:
    """The lane count the unit is built with for order n on a datapath of at most ``lanes`` lanes: the largest power
    of two <= lanes that divides n and is below it (so the cycle model can ask with any lane budget)."""
    if lanes < 2 or n < 4:
        raise QiftError(f"the lane-multiplexed unit needs lanes >= 2 and n >= 4, got lanes = {lanes}, n = {n}")
    L = min(1 << (lanes.bit_length() - 1), n & -n)
    return L // 2 if L >= n else L
