"""Replaying a model trace on an RTL simulation: packed port values per cycle and the check of each cycle.

Shared by the Amaranth-simulator tests and the cocotb benches, so both drive and compare in the same way:
each cycle, drive ``en`` and the packed inputs, read the packed outputs, compare them with the trace (every lane,
every cycle: the trace lists exact register values from the all-zero reset state), then clock.
"""

from __future__ import annotations

import numpy as np

from qift_hw.verify.lanes import pack_lanes, unpack_lanes


def port_plan(component) -> tuple[dict, list[str], list[str]]:
    """(lanes, input names, output names) of a component with a ``lanes()`` method; ``en`` is driven apart."""
    from amaranth.lib.wiring import In

    lanes = component.lanes()
    members = component.signature.members
    inputs = [k for k in lanes if members[k].flow == In]
    outputs = [k for k in lanes if k not in inputs]
    return lanes, inputs, outputs


def _packed_rows(values: np.ndarray, n: int, bits: int) -> list[int]:
    v = np.asarray(values)
    if v.ndim == 1:
        v = v[:, None]
    v = v[:, :n].astype(np.int64)
    return [pack_lanes(row, bits) for row in v]


def packed_trace(trace: dict, lanes: dict) -> dict[str, list[int]]:
    """Every port of the trace as one packed integer per cycle (a 1-lane port takes lane 0 of a per-lane trace)."""
    out = {"en": [int(bool(x)) for x in np.asarray(trace["en"])]}
    for name, (n, bits, _signed) in lanes.items():
        out[name] = _packed_rows(trace[name], n, bits)
    return out


def describe_mismatch(t: int, name: str, got: int, want: int, lanes: dict) -> str:
    """One line naming the cycle, the port and the lanes that differ."""
    n, bits, signed = lanes[name]
    g, w = unpack_lanes(got, n, bits, signed), unpack_lanes(want, n, bits, signed)
    diff = [i for i in range(n) if g[i] != w[i]]
    shown = ", ".join(f"lane {i}: got {g[i]} want {w[i]}" for i in diff[:4])
    return f"cycle {t}: {name} differs ({shown}{', ...' if len(diff) > 4 else ''})"


def unpack_rows(rows: list[int], name: str, lanes: dict) -> np.ndarray:
    """Packed per-cycle values of port ``name`` back to an int64 array [cycles, lanes]."""
    n, bits, signed = lanes[name]
    return np.array([unpack_lanes(v, n, bits, signed) for v in rows], dtype=np.int64).reshape(len(rows), n)


def replay_amaranth(dut, trace: dict, reset_at: int | None = None,
                    compare_when: dict[str, str] | None = None) -> tuple[dict, list[str]]:
    """Replay ``trace`` on an Amaranth component in Amaranth's simulator (vector ports driven and read flat).

    ``reset_at``: after that many cycles, hold the synchronous reset for one cycle (inputs still driven, so
    the reset must win), then replay the whole trace again from cycle 0. ``compare_when`` {output: valid port}
    compares that output only in cycles where the trace's valid port is 1 (every cycle otherwise).
    Returns (observed packed outputs per replayed cycle, mismatch messages).
    """
    from amaranth.hdl import ClockDomain, Module, Value
    from amaranth.sim import Simulator

    lanes, inputs, outputs = port_plan(dut)
    flat = {k: Value.cast(getattr(dut, k)) for k in lanes}
    packed = packed_trace(trace, lanes)
    when = compare_when or {}
    rows = list(range(len(packed["en"])))
    if reset_at is not None:
        rows = rows[:reset_at] + [None] + rows
    observed = {k: [] for k in outputs}
    errors: list[str] = []

    async def bench(ctx):
        for i, t in enumerate(rows):
            if t is None:
                ctx.set(domain.rst, 1)
                await ctx.tick()
                ctx.set(domain.rst, 0)
                continue
            ctx.set(dut.en, packed["en"][t])
            for k in inputs:
                ctx.set(flat[k], packed[k][t])
            for k in outputs:
                sig = flat[k]
                got = ctx.get(sig) & ((1 << len(sig)) - 1)
                observed[k].append(got)
                if k in when and not packed[when[k]][t]:
                    continue
                if got != packed[k][t] and len(errors) < 10:
                    errors.append(f"(replay row {i}) " + describe_mismatch(t, k, got, packed[k][t], lanes))
            await ctx.tick()

    top = Module()
    top.domains.sync = domain = ClockDomain("sync")
    top.submodules.dut = dut
    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return observed, errors
