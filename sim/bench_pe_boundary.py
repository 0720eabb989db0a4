"""cocotb bench for the accumulator's rails: deposit a value into the PE's ``acc`` (and ``ovf``) register, do one
cycle of given inputs, compare ``acc``/``ovf`` after the clock edge with the expected values.

The saturation boundaries of a 32-bit accumulator are 2^26 maximal MACs away from zero, too far to reach by
clocking; writing the register directly (a VPI deposit) puts each step one product below, on and past a rail.
"""

from __future__ import annotations

import cocotb
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge

from _bench import start, stimulus, write_summary


@cocotb.test()
async def boundary_steps(dut):
    """Each step: (deposit acc or None, deposit ovf, a, w, en, clr, expected acc, expected ovf)."""
    folder, config, _ = stimulus()
    steps = config["steps"]
    width = len(dut.acc)
    await start(dut, ["a", "w", "en", "clr"])
    observed, errors = [], []
    for i, (acc0, ovf0, a, w, en, clr, want_acc, want_ovf) in enumerate(steps):
        if acc0 is not None:
            dut.acc.value = acc0 & ((1 << width) - 1)
            dut.ovf.value = ovf0
        dut.a.value, dut.w.value, dut.en.value, dut.clr.value = a, w, en, clr
        await RisingEdge(dut.clk)
        await ReadOnly()
        got_acc, got_ovf = dut.acc.value.to_signed(), int(dut.ovf.value)
        observed.append([got_acc, got_ovf])
        if (got_acc, got_ovf) != (want_acc, want_ovf):
            errors.append(f"step {i} (acc {acc0}, a {a}, w {w}, en {en}, clr {clr}): acc {got_acc} ovf {got_ovf}, "
                          f"expected {want_acc} {want_ovf}")
        await FallingEdge(dut.clk)
    write_summary(folder, {"steps": len(steps), "observed": observed, "mismatches": len(errors),
                           "first_mismatch": errors[0] if errors else ""})
    assert not errors, "\n".join(errors)
