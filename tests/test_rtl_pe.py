"""Amaranth-simulator tests of the PE variants: every product exhaustively, saturation, clear/enable."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from qift_hw.core import formats
from qift_hw.core.errors import QiftError
from qift_hw.rtl.pe import PE_KINDS, MacPE, Product, pe_format
from qift_hw.verify.replay import replay_amaranth
from qift_hw.verify.stimulus import pe_trace


def _weight_of(kind: str, w: int) -> int:
    if kind in formats.HW_LEVEL_SETS:
        return int(formats.weight_int_values(kind)[w])
    bits = {"int4": 4, "int8": 8}[kind]
    return w - (1 << bits) if w >> (bits - 1) else w


@pytest.mark.parametrize("kind", PE_KINDS)
def test_product_exhaustive(kind):
    """neg ? -term : term equals the formats' integer weight times a, for every (w, a) pair."""
    dut = Product(kind)
    fmt = pe_format(kind)
    acts = range(-(1 << (fmt.act_bits - 1)), 1 << (fmt.act_bits - 1))
    bad = []

    async def bench(ctx):
        for w in range(1 << fmt.w_shape.width):
            for a in acts:
                ctx.set(dut.a, a)
                ctx.set(dut.w, w - (1 << fmt.w_shape.width) if fmt.w_shape.signed and w >> (fmt.w_shape.width - 1)
                        else w)
                term, neg = ctx.get(dut.term), ctx.get(dut.neg)
                got = -term if neg else term
                if got != _weight_of(kind, w) * a:
                    bad.append((w, a, got))

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()
    assert not bad, bad[:5]


def test_multiplier_free_variants_have_no_multiplier():
    """The 2-bit PEs are built from shifts, adds and muxes only: no $mul cell in their netlist."""
    from amaranth.back import rtlil

    for kind in formats.HW_LEVEL_SETS:
        text = rtlil.convert(Product(kind), name="p")
        assert "$mul" not in text, kind
    assert "$mul" in rtlil.convert(Product("int4"), name="p")


@pytest.mark.parametrize("kind,acc_bits", [("pot_mnz", 10), ("mnz", 10), ("pm12", 10), ("std", 10), ("int4", 10),
                                           ("int8", 20), ("pot_mnz", 32)])
def test_mac_sequence_matches_model(kind, acc_bits):
    """Random en/clr/a/w sequence with saturation runs: acc and ovf equal the model every cycle, reset included."""
    tr = pe_trace(kind, acc_bits, 300, seed=3)
    if acc_bits < 32:
        lo, hi = formats.acc_range(acc_bits)
        assert (tr["acc"] == hi).any() and (tr["acc"] == lo).any(), "stimulus must saturate both ways"
        assert tr["ovf"].any()
    _, errors = replay_amaranth(MacPE(kind, acc_bits), tr, reset_at=120)
    assert not errors, errors


def test_saturation_against_written_rule():
    """A long run of +32 products on a 8-bit PE clamps at 127 and flags, as formats.saturating_dot says."""
    dut = MacPE("pot_mnz", 8)
    seen = []

    async def bench(ctx):
        ctx.set(dut.en, 1)
        ctx.set(dut.clr, 1)
        ctx.set(dut.a, -8)
        ctx.set(dut.w, 3)  # -4 * -8 = +32
        await ctx.tick()
        ctx.set(dut.clr, 0)
        for _ in range(6):
            seen.append((ctx.get(dut.acc), ctx.get(dut.ovf)))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    want = [formats.saturating_dot(np.full(i + 1, 32), 8) for i in range(6)]
    assert seen == [(v, int(f)) for v, f in want]


def test_bad_configurations():
    with pytest.raises(QiftError, match="unknown PE kind"):
        MacPE("nf2")
    with pytest.raises(QiftError, match="cannot hold one"):
        MacPE("pot_mnz", 6)
