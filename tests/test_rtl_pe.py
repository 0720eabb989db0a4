"""Amaranth-simulator tests of the PE variants: every product exhaustively, saturation, clear/enable."""

import numpy as np
import pytest
from amaranth import ClockDomain, Module
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


@pytest.mark.parametrize("kind", PE_KINDS)
def test_accepted_accumulator_widths(kind):
    """The generator accepts from the narrowest width that holds one product (|product range| by brute force over
    the formats' table) to 64 bits, and rejects one bit less and 65."""
    fmt = pe_format(kind)
    acts = range(-(1 << (fmt.act_bits - 1)), 1 << (fmt.act_bits - 1))
    prods = [int(w) * a for w in formats.weight_int_values(kind) for a in acts]
    narrowest = next(b for b in range(2, 65) if -(1 << (b - 1)) <= min(prods) and max(prods) < 1 << (b - 1))
    for bits in (narrowest, 16 if narrowest <= 16 else narrowest, 64):
        MacPE(kind, bits)
    for bits in (narrowest - 1, 65):
        with pytest.raises(QiftError):
            MacPE(kind, bits)


def test_clr_clears_ovf_and_rst_overrides_en():
    """clr starts a new sum and clears the sticky ovf (with en: ovf = this add's saturation; without: 0); a
    synchronous rst clears acc and ovf even with en = 1, and in that cycle no MAC happens."""
    dut = MacPE("pot_mnz", 8)
    top = Module()
    top.domains.sync = cd = ClockDomain()
    top.submodules.dut = dut
    seen = {}

    async def bench(ctx):
        async def step(name, en, clr, a=-8, w=3, rst=False):
            ctx.set(dut.en, en)
            ctx.set(dut.clr, clr)
            ctx.set(dut.a, a)
            ctx.set(dut.w, w)  # -4 * a
            if rst:
                ctx.set(cd.rst, 1)
            await ctx.tick()
            ctx.set(cd.rst, 0)
            seen[name] = (ctx.get(dut.acc), ctx.get(dut.ovf))

        for i in range(5):
            await step(f"up{i}", 1, 0)           # 32 x 5 = 160 > 127: saturates at the 4th
        await step("clr_en", 1, 1, a=1)         # new sum: -4, ovf cleared
        for i in range(5):
            await step(f"up2_{i}", 1, 0)
        await step("clr_no_en", 0, 1)
        for i in range(5):
            await step(f"up3_{i}", 1, 0)
        await step("rst_en", 1, 0, rst=True)
        await step("rst_en_clr", 1, 1, rst=True)
        await step("hold", 0, 0)

    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert seen["up4"] == (127, 1)
    assert seen["clr_en"] == (-4, 0)
    assert seen["up2_4"] == (127, 1)
    assert seen["clr_no_en"] == (0, 0)
    assert seen["up3_4"] == (127, 1)
    assert seen["rst_en"] == (0, 0) and seen["rst_en_clr"] == (0, 0) and seen["hold"] == (0, 0)
