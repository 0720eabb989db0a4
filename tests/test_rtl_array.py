"""Amaranth-simulator tests of the PE arrays against the protocol, the cycle-stepped model and a direct product."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from qift_hw.core import formats
from qift_hw.core.errors import QiftError
from qift_hw.rtl.array import OSArray, WSArray, make_array
from qift_hw.verify.replay import replay_amaranth, unpack_rows
from qift_hw.verify.stimulus import assemble, gemm_trace, result_port
from qift_hw.verify.cases import direct_reference


def _gemm(rng, M, K, N, code_max=4):
    a = rng.integers(-8, 8, (M, K))
    a[0, 0] = -8
    return a, rng.integers(0, code_max, (N, K))


@pytest.mark.parametrize("dataflow,kind,R,C", [("ws", "pot_mnz", 3, 4), ("os", "pot_mnz", 4, 3), ("ws", "mnz", 2, 3),
                                               ("os", "std", 3, 2), ("ws", "int4", 2, 2), ("os", "pm12", 1, 3)])
def test_replay_model_trace(dataflow, kind, R, C):
    """Cycle for cycle equal to the model's trace (stalls with junk inputs, a reset mid-run), and the GEMM put
    back together from the RTL's output lanes equals the direct integer product."""
    rng = np.random.default_rng(R * 10 + C)
    a, w = _gemm(rng, 5, 7, 5, 16 if kind == "int4" else 4)
    gt = gemm_trace(dataflow, a, w, R, C, kind, 32, stall_prob=0.2, seed=1)
    dut = make_array(dataflow, R, C, kind, 32)
    obs, errors = replay_amaranth(dut, gt.trace, reset_at=len(gt.trace["en"]) // 2)
    assert not errors, errors
    n = len(gt.trace["en"])
    v, o, _ = result_port(dataflow)
    out, ovf = assemble(gt, unpack_rows(obs[v][-n:], v, dut.lanes()), unpack_rows(obs[o][-n:], o, dut.lanes()))
    ref, _ = direct_reference(a, w, kind, 32)
    assert np.array_equal(out, ref)
    assert not ovf.any()


@pytest.mark.parametrize("dataflow", ["ws", "os"])
def test_saturating_accumulation(dataflow):
    """A 10-bit accumulator saturates in ascending k, flags, and a sum can come back from the rail."""
    a = np.full((2, 24), -8)
    w = np.array([[3] * 24, [3] * 20 + [1] * 4])  # -4 * -8 = +32 each; then +4 * -8 = -32 back down
    gt = gemm_trace(dataflow, a, w, 2, 2, "pot_mnz", 10)
    dut = make_array(dataflow, 2, 2, "pot_mnz", 10)
    obs, errors = replay_amaranth(dut, gt.trace)
    assert not errors, errors
    v, o, _ = result_port(dataflow)
    out, ovf = assemble(gt, unpack_rows(obs[v], v, dut.lanes()), unpack_rows(obs[o], o, dut.lanes()))
    ref, ref_ovf = direct_reference(a, w, "pot_mnz", 10)
    assert np.array_equal(out, ref) and np.array_equal(ovf, ref_ovf)
    assert out[0, 0] == 511 and ovf[0, 0]
    assert out[0, 1] == 511 - 4 * 32 and ovf[0, 1]


@pytest.mark.parametrize("dataflow", ["ws", "os"])
def test_overflow_case_saturates_every_pe_both_ways(dataflow):
    """The suite's overflow GEMM (cases.overflow_gemm) makes an add saturate at every PE position of a 4x4 array,
    at the high and at the low rail; the RTL's results and flags for it equal the written-out saturating sum."""
    from qift_hw.verify.cases import overflow_gemm, saturation_sites

    a, w = overflow_gemm()
    sites = saturation_sites(a, w, "pot_mnz", 10, dataflow, 4, 4)
    assert sites.all(), np.argwhere(~sites)
    gt = gemm_trace(dataflow, a, w, 4, 4, "pot_mnz", 10)
    dut = make_array(dataflow, 4, 4, "pot_mnz", 10)
    obs, errors = replay_amaranth(dut, gt.trace)
    assert not errors, errors[:3]
    v, o, _ = result_port(dataflow)
    out, ovf = assemble(gt, unpack_rows(obs[v], v, dut.lanes()), unpack_rows(obs[o], o, dut.lanes()))
    ref, ref_ovf = direct_reference(a, w, "pot_mnz", 10)
    assert np.array_equal(out, ref) and np.array_equal(ovf, ref_ovf)
    assert {511, -512} <= set(out.ravel().tolist())


def test_saturation_sites_by_hand():
    """One chain of +32 adds on a 10-bit accumulator saturates from the 16th add (k = 15) on: WS row k mod R."""
    from qift_hw.verify.cases import saturation_sites

    a, w = np.full((1, 18), -8), np.full((1, 18), 3)
    ws = saturation_sites(a, w, "pot_mnz", 10, "ws", 4, 2)
    assert ws[:, 0, 0].tolist() == [True, True, False, True] and not ws[:, :, 1].any() and not ws[:, 1].any()
    os_ = saturation_sites(a, w, "pot_mnz", 10, "os", 4, 2)
    assert os_.sum() == 1 and os_[0, 0, 0]


@pytest.mark.parametrize("dataflow", ["ws", "os"])
def test_outputs_during_a_stall(dataflow):
    """In a stall (en = 0) every output register holds: WS p_out/ovf_out/pv_out repeat the previous cycle, so a
    consumer takes an output only in a cycle with en = 1. OS out/ovf_out hold too, but out_valid = drain & en is
    combinational and is 0 in every stalled cycle. (Outputs during cycle t are the registers written at the edge
    ending t-1: a stall at t shows the same outputs in t and t+1.)"""
    rng = np.random.default_rng(5)
    a, w = _gemm(rng, 5, 6, 5)
    gt = gemm_trace(dataflow, a, w, 2, 3, "pot_mnz", 32, stall_prob=0.3, seed=2)
    dut = make_array(dataflow, 2, 3, "pot_mnz", 32)
    obs, errors = replay_amaranth(dut, gt.trace)
    assert not errors, errors[:3]
    en = np.asarray(gt.trace["en"], dtype=bool)
    stalled = np.flatnonzero(~en[:-1])
    assert len(stalled) > 10
    names = ["p_out", "ovf_out", "pv_out"] if dataflow == "ws" else ["out", "ovf_out"]
    for k in names:
        rows = unpack_rows(obs[k], k, dut.lanes())
        assert np.array_equal(rows[stalled + 1], rows[stalled]), k
    if dataflow == "os":
        valid = unpack_rows(obs["out_valid"], "out_valid", dut.lanes())[:, 0]
        drain = np.asarray(gt.trace["drain"], dtype=bool)
        assert not valid[~en].any() and np.array_equal(valid[en].astype(bool), drain[en])
        assert drain[~en].any(), "some stall must fall inside a drain"


def test_ws_inputs_outside_their_slots_are_ignored():
    """WS: junk on a_in/p_in/ovf_in/pv_in during the load phase, on w_in while streaming, on p_in/ovf_in where
    pv_in = 0 and on a_in outside its slots (u = m + r) changes no valid output: pv_out every cycle and
    p_out/ovf_out where pv_out = 1 still equal the clean trace."""
    rng = np.random.default_rng(9)
    a, w = _gemm(rng, 3, 7, 5)
    R, C = 3, 2
    gt = gemm_trace("ws", a, w, R, C, "pot_mnz", 12)
    tr = {k: np.array(v, copy=True) for k, v in gt.trace.items()}
    load = np.asarray(tr["w_load"], dtype=bool)
    n = len(load)
    junk = np.random.default_rng(1)
    tr["a_in"][load] = junk.integers(-8, 8, tr["a_in"][load].shape)
    for k, hi in (("p_in", 2000), ("ovf_in", 2), ("pv_in", 2)):
        tr[k][load] = junk.integers(-hi if k == "p_in" else 0, hi, tr[k][load].shape)
    tr["w_in"][~load] = junk.integers(0, 4, tr["w_in"][~load].shape)
    idle = ~load[:, None] & (tr["pv_in"] == 0)
    tr["p_in"][idle] = junk.integers(-2000, 2000, int(idle.sum()))
    tr["ovf_in"][idle] = junk.integers(0, 2, int(idle.sum()))
    starts = [t for t in range(n) if not load[t] and load[t - 1]]
    for s in starts:
        m_rows = int(tr["pv_in"][s:s + C + 8, 0].sum())
        end = next((t for t in range(s, n) if load[t]), n)
        for u in range(end - s):
            for r in range(R):
                if not 0 <= u - r < m_rows:
                    tr["a_in"][s + u, r] = junk.integers(-8, 8)
    assert not np.array_equal(tr["a_in"], gt.trace["a_in"])
    dut = WSArray(R, C, "pot_mnz", 12)
    obs, _ = replay_amaranth(dut, tr)
    got = {k: unpack_rows(obs[k], k, dut.lanes()) for k in ("p_out", "ovf_out", "pv_out")}
    assert np.array_equal(got["pv_out"], gt.trace["pv_out"])
    valid = gt.trace["pv_out"].astype(bool)
    assert valid.sum() == 3 * (-(-5 // C) * C) * -(-7 // R)  # M x padded N x K tiles
    for k in ("p_out", "ovf_out"):
        assert np.array_equal(got[k][valid], gt.trace[k][valid]), k
    assert not np.array_equal(got["p_out"], gt.trace["p_out"]), "the junk must show where pv_out = 0"


def test_trace_mismatch_is_caught():
    """The checker is live: one corrupted expected output value is reported at its cycle."""
    rng = np.random.default_rng(0)
    a, w = _gemm(rng, 3, 4, 3)
    gt = gemm_trace("ws", a, w, 2, 3)
    t = int(np.flatnonzero(gt.trace["pv_out"][:, 1])[0])
    gt.trace["p_out"][t, 1] += 1
    _, errors = replay_amaranth(WSArray(2, 3), gt.trace)
    assert errors and f"cycle {t}: p_out" in errors[0]


def test_ws_protocol_written_out():
    """The WS pass driven straight from docs/array_protocol.md (not from the model), lane by lane through the
    ports' array layouts: weights loaded bottom row first in R cycles, activations skewed by row, the result for
    (m, c) on p_out[c] at stream cycle m + R + c."""
    R, C, M, K = 3, 4, 5, 3
    rng = np.random.default_rng(7)
    A, W = rng.integers(-8, 8, (M, K)), rng.integers(0, 4, (C, K))
    ref = A @ formats.weight_int_values("pot_mnz")[W].T
    dut = WSArray(R, C, "pot_mnz", 16)
    got = {}

    async def bench(ctx):
        ctx.set(dut.en, 1)
        for t in range(R):
            ctx.set(dut.w_load, 1)
            ctx.set(dut.w_in, [int(W[c, R - 1 - t]) for c in range(C)])
            await ctx.tick()
        ctx.set(dut.w_load, 0)
        for u in range(M + R + C - 1):
            ctx.set(dut.a_in, [int(A[u - r, r]) if 0 <= u - r < M else 0 for r in range(R)])
            ctx.set(dut.pv_in, [1 if 0 <= u - c < M else 0 for c in range(C)])
            pv, p = ctx.get(dut.pv_out), ctx.get(dut.p_out)
            for c in range(C):
                if pv[c]:
                    got[(u - R - c, c)] = p[c]
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert sorted(got) == [(m, c) for m in range(M) for c in range(C)]
    assert all(got[m, c] == ref[m, c] for m in range(M) for c in range(C))


def test_os_protocol_written_out():
    """OS pass from the protocol: MAC for k at t = k + r + c, drain bottom row first with out_valid."""
    R, C, K = 2, 3, 5
    rng = np.random.default_rng(8)
    A, W = rng.integers(-8, 8, (R, K)), rng.integers(0, 4, (C, K))
    ref = A @ formats.weight_int_values("pot_mnz")[W].T
    dut = OSArray(R, C, "pot_mnz", 16)
    drained = []

    async def bench(ctx):
        ctx.set(dut.en, 1)
        for t in range(K + R + C - 2):
            ctx.set(dut.a_in, [int(A[r, t - r]) if 0 <= t - r < K else 0 for r in range(R)])
            ctx.set(dut.w_in, [int(W[c, t - c]) if 0 <= t - c < K else 0 for c in range(C)])
            assert ctx.get(dut.out_valid) == 0
            await ctx.tick()
        ctx.set(dut.drain, 1)
        for _ in range(R):
            assert ctx.get(dut.out_valid) == 1
            out = ctx.get(dut.out)
            drained.append([out[c] for c in range(C)])
            await ctx.tick()
        out = ctx.get(dut.out)
        assert [out[c] for c in range(C)] == [0] * C

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert drained == [list(ref[R - 1 - d]) for d in range(R)]


def test_bad_array_configurations():
    with pytest.raises(QiftError, match="dataflow"):
        make_array("rs", 2, 2)
    with pytest.raises(QiftError, match="rows"):
        make_array("ws", 0, 2)
