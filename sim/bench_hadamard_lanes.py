"""cocotb bench of the lane-multiplexed Hadamard + INT4 quantizer unit (``qift_hw.rtl.hadamard_lanes``).

Streams the vectors of the stimulus through ``i`` (random gaps in valid) while ``o`` sees random back-pressure
(ready low at random). Inputs are driven after the falling edge, outputs read in the ReadOnly phase. It checks the
stream rule on the output (a payload offered with valid must stay the same until it is taken) and records every
beat taken with its cycle; the pytest side compares them with the bit-accurate model.
"""

from __future__ import annotations

import random
import time

import cocotb
from cocotb.triggers import FallingEdge, ReadOnly

from _bench import start, stimulus, write_summary


def _pack(values, bits: int) -> int:
    word = 0
    for i, v in enumerate(values):
        word |= (int(v) & ((1 << bits) - 1)) << (i * bits)
    return word


@cocotb.test()
async def stream_vectors(dut):
    """Drive every vector, take every output beat, record them and the cycles."""
    folder, config, arrays = stimulus()
    n, lanes, in_bits = config["n"], config["lanes"], config["in_bits"]
    rng = random.Random(config["seed"])
    p_gap, p_busy = config["p_gap"], config["p_busy"]
    X, exps = arrays["x"], arrays["exp"]
    beats = [_pack(X[v, r * lanes:(r + 1) * lanes], in_bits) | ((int(exps[v]) & 0xFF) << (lanes * in_bits))
             for v in range(len(X)) for r in range(n // lanes)]
    await start(dut, ["i__valid", "i__payload", "o__ready"])
    taken, in_cycles, out_cycles, unstable = [], [], [], 0
    k, held, cyc = 0, None, 0
    limit = config["max_cycles"]
    t0 = time.perf_counter()
    while len(taken) < len(beats) and cyc < limit:
        valid = k < len(beats) and rng.random() >= p_gap
        ready = rng.random() >= p_busy
        dut.i__valid.value = int(valid)
        dut.i__payload.value = beats[k] if valid else 0
        dut.o__ready.value = int(ready)
        await ReadOnly()
        if int(dut.o__valid.value):
            word = int(dut.o__payload.value)
            if held is not None and held != word:
                unstable += 1
            held = word
            if ready:
                taken.append(hex(word))
                out_cycles.append(cyc)
                held = None
        if valid and int(dut.i__ready.value):
            in_cycles.append(cyc)
            k += 1
        await FallingEdge(dut.clk)
        cyc += 1
    write_summary(folder, {"beats": taken, "in_cycles": in_cycles, "out_cycles": out_cycles, "unstable": unstable,
                           "cycles": cyc, "loop_s": time.perf_counter() - t0, "mismatches": 0,
                           "first_mismatch": "" if len(taken) == len(beats) else "the unit stopped producing output"})
    assert len(taken) == len(beats), f"only {len(taken)} of {len(beats)} output beats in {limit} cycles"
    assert unstable == 0, f"{unstable} output payloads changed while valid waited for ready"
