"""Energy of a run from action counts and the architecture's per-action energy table (Accelergy style).

Energy = sum over actions of count x energy per action: MACs per PE kind (padding MACs of partial array tiles
count: those PEs switch too), array register bits written, each buffer's bits read and written (pJ/bit of one
bank, scaled with the bank's size), DRAM bits, Hadamard butterfly adds and quantized elements. docs/energy.md
derives the default table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from qift_hw.core.errors import QiftError
from qift_hw.core.hadamard import split_order

PARTS = ("e_pe_pj", "e_reg_pj", "e_weight_buf_pj", "e_act_buf_pj", "e_out_buf_pj", "e_dram_pj", "e_hadamard_pj",
         "e_quant_pj")
"""Energy columns of a layer row; their sum is ``energy_pj``."""


@dataclass
class Counts:
    """Actions of one op instance."""

    macs: dict[str, int] = field(default_factory=dict)
    reg_bits: float = 0.0
    weight_buf_bits: float = 0.0
    act_buf_bits: float = 0.0
    out_buf_bits: float = 0.0
    dram_bits: float = 0.0
    had_adds: int = 0
    quant_elems: int = 0


def hadamard_adds(n: int) -> int:
    """Adds and subtracts of one length-n Hadamard transform as the unit is built (n = K * 2^k): k butterfly
    stages of n add/subtracts, then for K > 1 a K stage whose n outputs are each a +-sum of K inputs (K - 1
    adds each)."""
    k_ord, pow2 = split_order(n)
    return n * (pow2.bit_length() - 1) + (n * (k_ord - 1) if k_ord > 1 else 0)


def sram_pj_per_bit(table, buffer) -> float:
    """pJ per bit read or written in ``buffer``: the table's figure for an ``sram_ref_kib`` array, scaled by
    (bank KiB / ref)^exponent (one access touches one bank)."""
    bank_kib = buffer.kib / buffer.banks
    return table.sram_pj_per_bit * (bank_kib / table.sram_ref_kib) ** table.sram_size_exponent


def energy_parts(arch, counts: Counts) -> dict[str, float]:
    """Energy of one op instance in pJ by part (`PARTS`) plus their sum ``energy_pj``."""
    t = arch.energy
    missing = [k for k in counts.macs if k not in t.mac_pj]
    if missing:
        raise QiftError(f"energy.mac_pj has no entry for PE kind {missing[0]!r}; add one to the architecture file")
    parts = {
        "e_pe_pj": sum(n * t.mac_pj[k] for k, n in counts.macs.items()),
        "e_reg_pj": counts.reg_bits * t.reg_pj_per_bit,
        "e_weight_buf_pj": counts.weight_buf_bits * sram_pj_per_bit(t, arch.buffers.weight),
        "e_act_buf_pj": counts.act_buf_bits * sram_pj_per_bit(t, arch.buffers.act),
        "e_out_buf_pj": counts.out_buf_bits * sram_pj_per_bit(t, arch.buffers.out),
        "e_dram_pj": counts.dram_bits * arch.dram.pj_per_bit,
        "e_hadamard_pj": counts.had_adds * t.had_add_pj,
        "e_quant_pj": counts.quant_elems * t.quant_pj_per_elem,
    }
    parts["energy_pj"] = math.fsum(parts.values())
    return parts
