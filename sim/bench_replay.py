"""cocotb bench that replays a trace of the bit-accurate model on any qift top (array, PE, Hadamard unit).

Each cycle: drive ``en`` and the packed inputs after the falling edge, let them settle, read every output and
compare it with the trace (all lanes, every cycle, or only where the trace's valid port is set for outputs
listed in ``compare_when``), so a wrong value, a wrong valid bit or a result one cycle early or late fails.
Optional: a synchronous reset in the middle of the trace, after which the whole trace is replayed from cycle 0.
"""

from __future__ import annotations

import time

import cocotb
from cocotb.triggers import FallingEdge, ReadOnly

from _bench import start, stimulus, write_summary
from qift_hw.verify.replay import describe_mismatch, packed_trace


@cocotb.test()
async def replay_trace(dut):
    """Drive the model's trace and compare the outputs of every cycle."""
    folder, config, trace = stimulus()
    lanes = {k: tuple(v) for k, v in config["lanes"].items()}
    inputs, outputs = config["inputs"], config["outputs"]
    when = config.get("compare_when", {})
    packed = packed_trace(trace, lanes)
    handles_in = [(getattr(dut, k), packed[k]) for k in inputs]
    handles_out = [(k, getattr(dut, k), packed[k], packed[when[k]] if k in when else None) for k in outputs]
    en = packed["en"]
    rows = list(range(len(en)))
    reset_at = config.get("reset_at")
    if reset_at is not None:
        rows = rows[:reset_at] + [None] + rows
    observed = {k: [] for k in outputs}
    errors: list[str] = []
    await start(dut, ["en"] + inputs)
    t0 = time.perf_counter()
    for i, t in enumerate(rows):
        if t is None:
            dut.rst.value = 1
            await FallingEdge(dut.clk)
            dut.rst.value = 0
            continue
        dut.en.value = en[t]
        for h, vals in handles_in:
            h.value = vals[t]
        await ReadOnly()
        for k, h, vals, valid in handles_out:
            got = int(h.value)
            observed[k].append(got)
            if valid is not None and not valid[t]:
                continue
            if got != vals[t] and len(errors) < 20:
                errors.append(f"(row {i}) " + describe_mismatch(t, k, got, vals[t], lanes))
        await FallingEdge(dut.clk)
    loop_s = time.perf_counter() - t0
    write_summary(folder, {
        "rows": len(rows), "loop_s": loop_s, "advancing_cycles": int(sum(en)), "wall_cycles": len(en),
        "mismatches": len(errors), "first_mismatch": errors[0] if errors else "",
        "observed": {k: [hex(v) for v in vs] for k, vs in observed.items()},
    })
    assert not errors, "\n".join(errors)
