"""Packing of per-row / per-column values into the flat ports of the array and Hadamard tops.

Every vector port carries its lanes side by side: lane ``i`` occupies bits ``[i*bits, (i+1)*bits)``, two's
complement for signed lanes. One wide port per vector keeps the generated Verilog small and lets a testbench
drive a whole vector with one write.
"""

from __future__ import annotations

from collections.abc import Iterable


def pack_lanes(values: Iterable[int], bits: int) -> int:
    """One integer holding ``values`` as ``bits``-wide two's complement lanes, lane 0 in the low bits."""
    mask = (1 << bits) - 1
    word = 0
    for i, v in enumerate(values):
        word |= (int(v) & mask) << (i * bits)
    return word


def unpack_lanes(word: int, n: int, bits: int, signed: bool = True) -> list[int]:
    """The ``n`` lanes of ``word`` (inverse of ``pack_lanes``), sign-extended when ``signed``."""
    mask = (1 << bits) - 1
    half = 1 << (bits - 1)
    out = []
    for i in range(n):
        v = (int(word) >> (i * bits)) & mask
        out.append(v - (1 << bits) if signed and v & half else v)
    return out
