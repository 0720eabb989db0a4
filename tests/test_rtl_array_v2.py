"""Protocol-v2 PE arrays (qift_hw.rtl.array2) against the v2 stepped model, the protocol text and a direct product.

Amaranth-simulator replays of every v2 case (stalls with junk inputs, reset mid-run), the WS (shift chain and
per-PE port) and OS passes driven straight from the protocol's tile tables, a live-checker test; then the same
cases through cocotb on Icarus and Verilator (quick ones in the default group, the rest `slow`) and Verilator lint.
"""

import functools
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from amaranth.sim import Simulator

from qift_hw.core import formats
from qift_hw.core.errors import QiftError
from qift_hw.rtl.array2 import OS2Array, WS2Array, make_array2
from qift_hw.rtl.generate import array_top, write_top
from qift_hw.verify.cases import run_case
from qift_hw.verify.cases_v2 import QUICK, array2_case, default_cases_v2, tile_schedule, v2_trace
from qift_hw.verify.lint import lint
from qift_hw.verify.replay import replay_amaranth
from qift_hw.verify.simulate import simulator_available

BUILD = Path(__file__).resolve().parents[1] / "sim_build"


@functools.lru_cache(maxsize=1)
def _cases() -> dict:
    return {c.name: c for c in default_cases_v2()}


def _replay(case):
    obs, errors = replay_amaranth(case.top.component, case.stimulus, reset_at=case.reset_at)
    summary = {"observed": {k: [hex(v) for v in vs] for k, vs in obs.items()}}
    return errors, case.check(summary)


@pytest.mark.parametrize("name", list(_cases()))
def test_replay_amaranth(name):
    """Every output lane equal to the model's v2 trace in every cycle (stalls, reset mid-run); the GEMM read at the
    protocol's result cycles equals qift_hw.sim.matmul and the direct product; cycles equal gemm_compute."""
    errors, problems = _replay(_cases()[name])
    assert not errors, errors
    assert not problems, problems


def test_suite_covers_the_brief():
    cov = {n: c.coverage for n, c in _cases().items()}
    assert {c["dataflow"] for c in cov.values()} == {"ws", "stream", "os"}
    assert {c["level_set"] for c in cov.values()} >= {"pot_mnz", "mnz", "std", "int4"}
    for df in ("ws", "stream"):
        assert cov[f"v2_{df}_sat_a8"]["saturation_position_dirs"] == [32, 32]  # every PE, both rails
    assert cov["v2_os_sat_a8"]["saturation_position_dirs"][0] >= 24
    assert all(c["stall_cycles"] > 0 and c["tiles"] > 1 for c in cov.values())
    assert cov["v2_ws_random"]["padding"] and cov["v2_ws_random"]["m_tile"] == 4
    assert any(n.endswith("smollm2_gptq") for n in cov)


@pytest.mark.parametrize("dataflow,R,C,M,K,N", [("ws", 1, 1, 3, 4, 2), ("stream", 1, 3, 2, 5, 4), ("os", 1, 1, 2, 3, 2),
                                                ("os", 3, 1, 4, 2, 2), ("ws", 2, 1, 5, 5, 1)])
def test_degenerate_sizes(dataflow, R, C, M, K, N):
    """1-row and 1-column arrays (no neighbour above or to the left)."""
    rng = np.random.default_rng(R + 7 * C + M)
    a, w = rng.integers(-8, 8, (M, K)), rng.integers(0, 4, (N, K))
    errors, problems = _replay(array2_case("deg", dataflow, R, C, a, w, acc_bits=12, stall_prob=0.2))
    assert not errors and not problems, (errors, problems)


def test_trace_mismatch_is_caught():
    """The checker is live: one corrupted expected output is reported at its cycle."""
    case = _cases()["v2_os_random"]
    stim = {k: np.array(v, copy=True) if isinstance(v, np.ndarray) else v for k, v in case.stimulus.items()}
    t = int(np.flatnonzero(stim["out_valid"][:, 2])[1])
    stim["out"][t, 2] += 1
    _, errors = replay_amaranth(case.top.component, stim)
    assert errors and f"cycle {t}: out differs (lane 2" in errors[0]


def test_missing_port_is_refused():
    rng = np.random.default_rng(0)
    a, w = rng.integers(-8, 8, (2, 9)), rng.integers(0, 4, (5, 9))
    lanes = array_top("ws2_chain", 4, 4).component.lanes()
    with pytest.raises(QiftError, match="wp_in"):
        v2_trace("stream", a, w, 4, 4, lanes)
    with pytest.raises(QiftError, match="weight_ports"):
        WS2Array(2, 2, weight_ports="wide")
    with pytest.raises(QiftError, match="v2 array"):
        make_array2("rs2", 2, 2)


def _ref(A, W):
    return A @ formats.weight_int_values("pot_mnz")[W].T


def _simulate(dut, bench) -> None:
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("dataflow", ["ws", "stream"])
def test_ws2_protocol_written_out(dataflow):
    """WS v2 driven from the protocol's tile table, not the model: shadow loads (shift chain or per-PE port) under
    the previous tile, the skewed swap, partial sums forwarded from p_out to p_in by the bench when they are due,
    and every result on p_out[c] with pv_out at S_j + m + R + c; values against a direct product."""
    R, C, M, K, N = 3, 2, 3, 8, 4
    rng = np.random.default_rng(11)
    A, W = rng.integers(-8, 8, (M, K)), rng.integers(0, 4, (N, K))
    tiles = tile_schedule(dataflow, M, K, N, R, C)
    T = tiles[-1][4] + M + R + C - 1
    drive = {k: np.zeros((T, R), dtype=np.int64) for k in ("a_in", "sw_in", "sh_in")}
    drive["w_in"] = np.zeros((T, C), dtype=np.int64)
    drive["wp_in"], drive["wp_we"] = np.zeros((T, R, C), dtype=np.int64), np.zeros((T, R, C), dtype=np.int64)
    psum_due, result_at = {}, {}
    for m0, m, n0, k0, s in tiles:
        code = [[W[n0 + c, k0 + r] if k0 + r < K and n0 + c < N else 0 for c in range(C)] for r in range(R)]
        for r in range(R):
            drive["sw_in"][s + r, r] = 1
            for i in range(m):
                drive["a_in"][s + i + r, r] = A[m0 + i, k0 + r] if k0 + r < K else 0
            if dataflow == "ws":
                drive["sh_in"][s - R + r: s, r] = 1
            for c in range(C):
                if dataflow == "ws":
                    drive["w_in"][s - R + c + (R - 1 - r), c] = code[r][c]
                else:
                    drive["wp_in"][s + r + c - 1, r, c], drive["wp_we"][s + r + c - 1, r, c] = code[r][c], 1
        for i in range(m):
            for c in range(C):
                psum_due[(s + i + c, c)] = (m0 + i, n0 + c, k0 > 0)
                result_at[(s + i + R + c, c)] = (m0 + i, n0 + c)
    dut = WS2Array(R, C, "pot_mnz", 16)
    psum, got = {}, {}

    async def bench(ctx):
        ctx.set(dut.en, 1)
        for t in range(T):
            pv, p = ctx.get(dut.pv_out), ctx.get(dut.p_out)
            for c in range(C):
                assert bool(pv[c]) == ((t, c) in result_at), (t, c)
                if pv[c]:
                    psum[result_at[t, c]] = got[result_at[t, c]] = p[c]
            p_in, pv_in = [0] * C, [0] * C
            for c in range(C):
                if (t, c) in psum_due:
                    mm, nn, carry = psum_due[t, c]
                    p_in[c], pv_in[c] = (psum[(mm, nn)] if carry else 0), 1
            ctx.set(dut.p_in, p_in)
            ctx.set(dut.pv_in, pv_in)
            for k in ("a_in", "sw_in", "sh_in", "w_in"):
                ctx.set(getattr(dut, k), [int(v) for v in drive[k][t]])
            ctx.set(dut.wp_in, [[int(v) for v in row] for row in drive["wp_in"][t]])
            ctx.set(dut.wp_we, [[int(v) for v in row] for row in drive["wp_we"][t]])
            await ctx.tick()

    _simulate(dut, bench)
    ref = _ref(A, W)
    assert all(got[m, n] == ref[m, n] for m in range(M) for n in range(N))


def test_os2_protocol_written_out():
    """OS v2 from the protocol's table with K < R (tiles every R cycles, the output chain binds): last tags,
    drain-enable lanes, and every result on out[c] with out_valid exactly at S_j + K + 2R + c - 2 - r."""
    R, C, M, K, N = 3, 2, 5, 2, 4
    rng = np.random.default_rng(12)
    A, W = rng.integers(-8, 8, (M, K)), rng.integers(0, 4, (N, K))
    tiles = tile_schedule("os", M, K, N, R, C)
    T = tiles[-1][4] + K + 2 * R + C - 2
    a_in, last, osh = (np.zeros((T, R), dtype=np.int64) for _ in range(3))
    w_in = np.zeros((T, C), dtype=np.int64)
    result_at = {}
    for m0, _, n0, _, s in tiles:
        e = s + K - 1
        for r in range(R):
            for k in range(K):
                a_in[s + k + r, r] = A[m0 + r, k] if m0 + r < M else 0
            last[e + r, r] = 1
            osh[e + R: e + R + r, r] = 1
            for c in range(C):
                result_at[(e + R + c + R - 1 - r, c)] = (m0 + r, n0 + c)
        for c in range(C):
            for k in range(K):
                w_in[s + k + c, c] = W[n0 + c, k] if n0 + c < N else 0
    dut = OS2Array(R, C, "pot_mnz", 16)
    got = {}

    async def bench(ctx):
        ctx.set(dut.en, 1)
        for t in range(T):
            ov, out = ctx.get(dut.out_valid), ctx.get(dut.out)
            for c in range(C):
                assert bool(ov[c]) == ((t, c) in result_at), (t, c)
                if ov[c]:
                    got[result_at[t, c]] = out[c]
            for port, vals in ((dut.a_in, a_in), (dut.last_in, last), (dut.osh_in, osh), (dut.w_in, w_in)):
                ctx.set(port, [int(v) for v in vals[t]])
            await ctx.tick()

    _simulate(dut, bench)
    ref = _ref(A, W)
    assert all(got[m, n] == ref[m, n] for m in range(M) for n in range(N))


# ---------------------------------------------------------------- cocotb on Icarus and Verilator


def _run(sim: str, name: str) -> None:
    reason = simulator_available(sim)
    if reason is not None:
        pytest.skip(reason)
    res = run_case(_cases()[name], sim, BUILD)
    assert res.passed, res.problems
    assert res.cycles == res.expected_cycles


SIM_CASES = [pytest.param(n, marks=[pytest.mark.sim] + ([] if n in QUICK else [pytest.mark.slow])) for n in _cases()]


@pytest.mark.parametrize("name", SIM_CASES)
def test_icarus(name):
    _run("icarus", name)


@pytest.mark.parametrize("name", SIM_CASES)
def test_verilator(name):
    _run("verilator", name)


@pytest.mark.sim
def test_cocotb_catches_a_wrong_output():
    """The bench fails, naming the cycle, when one expected value of the trace is wrong."""
    reason = simulator_available("icarus")
    if reason is not None:
        pytest.skip(reason)
    case = _cases()["v2_ws_random"]
    stim = {k: np.array(v, copy=True) if isinstance(v, np.ndarray) else v for k, v in case.stimulus.items()}
    t = int(np.flatnonzero(stim["pv_out"][:, 1])[2])
    stim["p_out"][t, 1] -= 1
    res = run_case(replace(case, stimulus=stim, name="v2_mutant"), "icarus", BUILD)
    summary = json.loads((BUILD / "icarus" / case.top.name / "run_v2_mutant" / "summary.json").read_text())
    assert not res.passed and f"cycle {t}: p_out differs (lane 1" in summary["first_mismatch"]


@pytest.mark.sim
@pytest.mark.skipif(simulator_available("verilator") is not None, reason="Verilator not installed")
def test_verilator_lint_clean(tmp_path):
    for t in [array_top("ws2", 3, 2), array_top("ws2_port", 2, 3, "int4", 20), array_top("os2", 3, 2, "std", 20)]:
        assert lint(write_top(t, tmp_path), t.name) == []
