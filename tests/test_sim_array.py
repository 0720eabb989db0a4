"""Cycle-stepped PE array: results against direct int64 matmul, cycles against the cycle model, the protocol's
output timing, stalls, and overflow against the sequential saturation rule."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qift_hw.core import formats
from qift_hw.core.levels import get_level_set
from qift_hw.sim.array import OSArray, WSArray, array_gemm, os_pass, ws_pass
from qift_hw.sim.cycle_model import os_gemm_cycles, ws_gemm_cycles

SETS = ["pot_mnz", "mnz", "std", "pm12"]


def ref(acts, codes, level_set):
    ls = get_level_set(level_set)
    w = np.rint(ls.decode(codes).numpy() / (formats.weight_unit(ls) if ls.kind != "integer" else 1))
    return np.asarray(acts, dtype=np.int64) @ w.astype(np.int64).T


@given(M=st.integers(1, 6), K=st.integers(1, 11), N=st.integers(1, 7), R=st.integers(1, 4), C=st.integers(1, 4),
       level_set=st.sampled_from(SETS), dataflow=st.sampled_from(["ws", "os"]), m_tile=st.integers(0, 4),
       seed=st.integers(0, 2**31))
@settings(max_examples=40, deadline=None)
def test_array_gemm_matches_matmul_and_cycle_model(M, K, N, R, C, level_set, dataflow, m_tile, seed):
    rng = np.random.default_rng(seed)
    acts = rng.integers(-8, 8, (M, K))
    codes = rng.integers(0, 4, (N, K)).astype(np.uint8)
    acc, ovf, cycles = array_gemm(acts, codes, R, C, dataflow, level_set, m_tile=m_tile or None)
    assert np.array_equal(acc, ref(acts, codes, level_set)) and not ovf.any()
    expect = ws_gemm_cycles(M, K, N, R, C, m_tile or None) if dataflow == "ws" else os_gemm_cycles(M, K, N, R, C)
    assert cycles == expect


@pytest.mark.parametrize("R,C,M", [(3, 4, 5), (4, 2, 1), (2, 2, 6)])
def test_ws_output_cycle_is_m_plus_2r_plus_c(R, C, M):
    rng = np.random.default_rng(R * 10 + C)
    acts, codes = rng.integers(-8, 8, (M, R)), rng.integers(0, 4, (C, R))
    res, _, tr = ws_pass(WSArray(R, C), acts, codes)
    m, c = np.meshgrid(np.arange(M), np.arange(C), indexing="ij")
    assert np.array_equal(tr["result_cycle"], m + 2 * R + c)
    assert np.array_equal(res, ref(acts, codes, "pot_mnz"))
    assert tr["pv_out"].sum() == M * C  # exactly one valid output per (m, c)
    assert len(tr["en"]) == 2 * R + M + C - 1


@pytest.mark.parametrize("R,C,K", [(3, 4, 5), (2, 3, 1), (4, 4, 9)])
def test_os_drain_order_and_cycles(R, C, K):
    rng = np.random.default_rng(K)
    acts, codes = rng.integers(-8, 8, (R, K)), rng.integers(0, 4, (C, K))
    arr = OSArray(R, C)
    res, _, tr = os_pass(arr, acts, codes)
    t_drain = K + R + C - 2
    assert np.array_equal(tr["result_cycle"][:, 0], t_drain + (R - 1 - np.arange(R)))
    assert np.array_equal(res, ref(acts, codes, "pot_mnz"))
    assert not arr.acc.any()  # the drain leaves every accumulator at 0 for the next pass
    res2, _, _ = os_pass(arr, acts, codes)
    assert np.array_equal(res2, res)


@pytest.mark.parametrize("dataflow", ["ws", "os"])
def test_stalls_change_timing_not_values(dataflow):
    rng = np.random.default_rng(7)
    R, C, M, K = 3, 3, 4, 3
    acts, codes = rng.integers(-8, 8, (M, K)), rng.integers(0, 4, (C, K))
    stalls = {0: 2, 4: 1, 7: 3}
    if dataflow == "ws":
        r0, _, t0 = ws_pass(WSArray(R, C), acts, codes)
        r1, _, t1 = ws_pass(WSArray(R, C), acts, codes, stalls=stalls, rng=rng)
        outs = ("p_out", "ovf_out", "pv_out")
    else:
        acts = rng.integers(-8, 8, (R, K))
        r0, _, t0 = os_pass(OSArray(R, C), acts, codes)
        r1, _, t1 = os_pass(OSArray(R, C), acts, codes, stalls=stalls, rng=rng)
        outs = ("out", "ovf_out")
    assert np.array_equal(r0, r1)
    en = t1["en"]
    assert (~en).sum() == 6 and en.sum() == len(t0["en"])
    for k in outs:
        assert np.array_equal(t1[k][en], t0[k])
        stalled = np.flatnonzero(~en)
        assert all(np.array_equal(t1[k][i], t1[k][i + 1]) for i in stalled)  # outputs hold through a stall


@pytest.mark.parametrize("dataflow", ["ws", "os"])
@pytest.mark.parametrize("level_set", ["pot_mnz", "std"])
def test_array_saturates_like_the_sequential_rule(dataflow, level_set):
    rng = np.random.default_rng(11)
    M, K, N = 3, 13, 3
    acts = rng.choice([-8, 7], (M, K))
    codes = rng.integers(0, 4, (N, K)).astype(np.uint8)
    acts[0], codes[0] = -8, 2  # a sure overflow: +8 or +16 per MAC
    acc, ovf, _ = array_gemm(acts, codes, 3, 2, dataflow, level_set, acc_bits=7)
    w = np.rint(get_level_set(level_set).decode(codes).numpy()).astype(np.int64)
    for m in range(M):
        for n in range(N):
            assert (acc[m, n], ovf[m, n]) == formats.saturating_dot(acts[m] * w[n], 7)
    assert ovf.any()


def test_multiplier_baseline_array():
    rng = np.random.default_rng(2)
    acts, codes = rng.integers(-8, 8, (5, 7)), rng.integers(0, 16, (3, 7)).astype(np.uint8)
    for df in ("ws", "os"):
        acc, _, _ = array_gemm(acts, codes, 2, 2, df, "int4")
        assert np.array_equal(acc, ref(acts, codes, "int4"))


def test_trace_cli(tmp_path):
    from typer.testing import CliRunner

    from qift_hw.cli.app import app

    res = CliRunner().invoke(app, ["sim", "trace", "--dataflow", "ws", "--array", "3x2", "--m", "4",
                                   "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    d = np.load(tmp_path / "trace.npz")
    assert np.array_equal(d["results"], ref(d["acts"], d["codes"], "pot_mnz"))
    assert d["p_out"].shape == (2 * 3 + 4 + 2 - 1, 2) and d["en"].all()
