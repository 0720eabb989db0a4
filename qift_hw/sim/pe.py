"""The processing element: decode a weight code and add weight x activation with sign, shift and add only.

One integer function describes the PE datapath for every level set; it runs unchanged on Python ints, NumPy
arrays (the cycle-stepped array) and inside Numba kernels (`pe_product_nb`). The multiplier PEs for INT4/INT8
weights (the baselines the shift-add PE is compared with) are the only place a `*` appears.
"""

from __future__ import annotations

from numba import njit

from qift_hw.core import formats
from qift_hw.core.errors import QiftError
from qift_hw.core.levels import MULTIPLIER_PE, PE_KINDS, LevelSet, get_level_set

KIND_IDS = {kind: i for i, kind in enumerate(PE_KINDS)}
"""Integer id of each PE kind (``levels.PE_KINDS``), the form a Numba kernel branches on."""
POT_MNZ, MNZ, PM12, STD, MULT = (KIND_IDS[k] for k in ("pot_mnz", "mnz", "pm12", "std", MULTIPLIER_PE))
_MAG, _SIGN = formats.MAG_BIT, formats.SIGN_BIT


def pe_kind(level_set: str | LevelSet) -> tuple[int, int]:
    """(PE kind id, weight code bits) of a level set's PE: a shift-add variant, or MULT for int3/int4/int8."""
    ls = get_level_set(level_set)
    if ls.pe is None:
        raise QiftError(
            f"level set {ls.name!r} has no integer PE (its levels are not integers times one scale); "
            f"use one of {', '.join(formats.HW_LEVEL_SETS)}, or {', '.join(formats.MULTIPLIER_LEVEL_SETS)} for the "
            "multiplier baselines"
        )
    return KIND_IDS[ls.pe], ls.bits


def pe_product(kind, code, a, code_bits=formats.WEIGHT_CODE_BITS):
    """Integer weight(code) x activation a, as the PE computes it (works on ints and integer arrays).

    PoT-MNZ: a << (2 * bit0); MNZ: a + ((a << 1) if bit0); pm12: a << bit0; std: 0 for code 0, a << 1 for
    code 2, else a. Then bit 1 (the sign) negates by two's complement, (v ^ s) - s with s = 0 or -1.
    MULT: sign-extended code_bits-wide two's complement weight times a (a real multiplier).
    """
    if kind == MULT:
        half = 1 << (code_bits - 1)
        return ((code ^ half) - half) * a
    b0 = (code >> _MAG) & 1
    b1 = (code >> _SIGN) & 1
    if kind == POT_MNZ:
        mag = a << (b0 << 1)
    elif kind == MNZ:
        mag = a + ((a << 1) & -b0)
    elif kind == PM12:
        mag = a << b0
    else:
        mag = (a << (b1 & (b0 ^ 1))) & -(b0 | b1)
    s = -b1
    return (mag ^ s) - s


pe_product_nb = njit(inline="always", cache=True)(pe_product)
"""The same PE function compiled for use inside Numba kernels."""
