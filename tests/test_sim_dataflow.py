"""v2 dataflows: the stepped array (sim/array.py) against a direct integer product with sequential saturation and
against `matmul`, its cycles and edge words against the closed forms (sim/dataflow.py), the tightness of each
initiation interval, and properties the closed forms must have (never slower than v1, decode bound by the weight
stream, utilisation near 1 for large GEMMs)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qift_hw.core import formats
from qift_hw.core.errors import QiftError
from qift_hw.core.levels import get_level_set
from qift_hw.sim.array import (OS2Array, WS2Array, _os2, _ws_family, array_gemm, gemm_v2, os2_gemm, os_pass_cycles,
                               stream_gemm, ws2_gemm, ws_pass_cycles)
from qift_hw.sim.dataflow import DATAFLOWS, Compute, gemm_compute

SETS = ["pot_mnz", "mnz", "std", "pm12"]
WORDS = ("weight_words", "act_words", "psum_in_words", "out_words")


def int_weights(codes, level_set):
    ls = get_level_set(level_set)
    w = ls.decode(np.asarray(codes, dtype=np.uint8)).numpy()
    return np.rint(w / (formats.weight_unit(ls) if ls.kind != "integer" else 1)).astype(np.int64)


def ref(acts, codes, level_set="pot_mnz", acc_bits=formats.ACC_BITS):
    """Direct integer product; with a narrow accumulator, the sequential saturating sum in ascending k."""
    acts, w = np.asarray(acts, dtype=np.int64), int_weights(codes, level_set)
    if acc_bits >= 40:
        return acts @ w.T, np.zeros((acts.shape[0], w.shape[0]), dtype=bool)
    out = np.zeros((acts.shape[0], w.shape[0]), dtype=np.int64)
    ovf = np.zeros(out.shape, dtype=bool)
    for m in range(out.shape[0]):
        for n in range(out.shape[1]):
            out[m, n], ovf[m, n] = formats.saturating_dot(acts[m] * w[n], acc_bits)
    return out, ovf


def v1_cycles(dataflow, M, K, N, R, C, m_tile=None):
    """Back-to-back v1 passes, summed pass by pass from the v1 pass lengths."""
    if dataflow == "os":
        return math.ceil(M / R) * math.ceil(N / C) * os_pass_cycles(K, R, C)
    mt = min(M, m_tile) if m_tile else M
    ms = [min(mt, M - m0) for m0 in range(0, M, mt)]
    return math.ceil(N / C) * math.ceil(K / R) * sum(ws_pass_cycles(m, R, C) for m in ms)


def random_gemm(rng, M, K, N, code_max=4):
    return rng.integers(-8, 8, (M, K)), rng.integers(0, code_max, (N, K)).astype(np.uint8)


@given(M=st.integers(1, 9), K=st.integers(1, 11), N=st.integers(1, 9), R=st.integers(1, 4), C=st.integers(1, 4),
       dataflow=st.sampled_from(DATAFLOWS), m_tile=st.integers(0, 4), level_set=st.sampled_from(SETS),
       seed=st.integers(0, 2**31))
@settings(max_examples=30, deadline=None)
def test_v2_results_cycles_and_words_match(M, K, N, R, C, dataflow, m_tile, level_set, seed):
    acts, codes = random_gemm(np.random.default_rng(seed), M, K, N)
    run = gemm_v2(acts, codes, R, C, dataflow, level_set, m_tile=m_tile or None)
    want, _ = ref(acts, codes, level_set)
    assert np.array_equal(run.acc, want) and not run.ovf.any()
    cf = gemm_compute(dataflow, M, K, N, R, C, m_tile or None)
    assert run.cycles == cf.cycles
    assert run.words == {k: getattr(cf, k) for k in WORDS}
    assert len(run.starts) == cf.tiles
    gaps = np.diff(run.starts)
    if dataflow == "os":
        assert (gaps == cf.ii).all()
    elif len(gaps) and (dataflow == "ws" or N > C):
        assert gaps[0] == cf.ii  # the first two tiles: same chunk (ws) or same K round (stream)
    assert run.cycles <= v1_cycles(dataflow, M, K, N, R, C, m_tile or None)


@pytest.mark.parametrize("dataflow", DATAFLOWS)
@pytest.mark.parametrize("level_set", ["pot_mnz", "std"])
def test_v2_saturates_like_the_sequential_rule_and_matmul(dataflow, level_set):
    from qift_hw.sim.matmul import matmul

    rng = np.random.default_rng(5)
    M, K, N = 5, 13, 5
    acts = rng.choice([-8, 7], (M, K))
    codes = rng.integers(0, 4, (N, K)).astype(np.uint8)
    acts[0], codes[0] = -8, 2  # a sure overflow: +8 or +16 per MAC
    run = gemm_v2(acts, codes, 3, 2, dataflow, level_set, acc_bits=7, m_tile=2)
    want, want_ovf = ref(acts, codes, level_set, 7)
    assert np.array_equal(run.acc, want) and np.array_equal(run.ovf, want_ovf) and run.ovf.any()
    got, ovf = matmul(acts.astype(np.int8), codes, level_set, acc_bits=7, return_overflow=True, kernel="pe")
    assert np.array_equal(run.acc, got) and np.array_equal(run.ovf, ovf)


def test_wrappers_and_multiplier_baseline():
    rng = np.random.default_rng(2)
    acts, codes = random_gemm(rng, 5, 7, 3, code_max=16)
    want, _ = ref(acts, codes, "int4")
    for fn in (ws2_gemm, os2_gemm, stream_gemm):
        acc, ovf, cycles = fn(acts, codes, 2, 3, "int4")
        assert np.array_equal(acc, want) and not ovf.any() and cycles > 0


@pytest.mark.parametrize("dataflow,M,K,N,broken", [
    ("ws", 2, 12, 5, "drives one lane twice"),  # m < R: the shadow chain (w_in, sh_in) still loading
    ("ws", 6, 9, 5, "drives one lane twice"),  # m > R: the activation lanes
    ("os", 9, 2, 5, "wrong"),  # K < R: the output chain overwrites results still draining
    ("os", 5, 6, 5, "drives one lane twice"),
    ("stream", 1, 12, 3, "is not back"),  # n_t * m < R: a partial sum needed before it leaves the array
    ("stream", 2, 8, 5, "drives one lane twice"),
])
def test_one_cycle_less_than_the_initiation_interval_breaks(dataflow, M, K, N, broken):
    """Starting tiles one cycle earlier than the schedule allows gives wrong results or an illegal schedule."""
    rng = np.random.default_rng(M * 100 + K)
    acts, codes = random_gemm(rng, M, K, N)
    want, _ = ref(acts, codes)
    R, C = 4, 3

    def run(cut):
        if dataflow == "os":
            return _os2(acts, codes, R, C, "pot_mnz", 32, False, cut)
        return _ws_family(acts, codes, R, C, dataflow == "stream", "pot_mnz", 32, None, False, cut)

    assert np.array_equal(run(0).acc, want)
    if broken == "wrong":
        assert not np.array_equal(run(1).acc, want)
    else:
        with pytest.raises(QiftError, match=broken):
            run(1)


REPLAY = {"ws": (("a_in", "sw_in", "sh_in", "w_in", "wp_in", "wp_we", "p_in", "ovf_in", "pv_in"), "pv_out",
                  ("p_out", "ovf_out")),
          "os": (("a_in", "last_in", "osh_in", "w_in"), "out_valid", ("out", "ovf_out"))}


@pytest.mark.parametrize("dataflow", DATAFLOWS)
def test_trace_replays_on_a_fresh_array_with_stalls(dataflow):
    """What a bench does: drive the trace's inputs cycle by cycle (with junk stall cycles, en = 0, in between) and
    compare the outputs: valid bits on every cycle, values where valid; a stall changes no output."""
    rng = np.random.default_rng(9)
    R, C, M, K, N = 3, 2, 4, 7, 5
    acts, codes = random_gemm(rng, M, K, N)
    run = gemm_v2(acts, codes, R, C, dataflow, m_tile=3, trace=True)
    tr = run.trace
    inputs, valid, outs = REPLAY["os" if dataflow == "os" else "ws"]
    arr = OS2Array(R, C) if dataflow == "os" else WS2Array(R, C)
    assert len(tr["en"]) == run.cycles and tr[valid][-1].any()
    stalls = {int(t): int(rng.integers(1, 3)) for t in rng.choice(run.cycles, 5, replace=False)}
    for t in range(run.cycles):
        for _ in range(stalls.get(t, 0)):
            before = arr.outputs()
            arr.step(*(rng.integers(0, 4, tr[k][t].shape).astype(tr[k][t].dtype) for k in inputs), en=False)
            assert all(np.array_equal(before[k], v) for k, v in arr.outputs().items())
        out = arr.outputs()
        v = tr[valid][t]
        assert np.array_equal(out[valid], v)
        assert all(np.array_equal(out[k][v], tr[k][t][v]) for k in outs)
        arr.step(*(tr[k][t] for k in inputs))
    if dataflow == "os":
        assert tr[valid].sum() == math.ceil(M / R) * R * math.ceil(N / C) * C  # every PE's result, padded too
    else:
        assert tr[valid].sum() == math.ceil(K / R) * M * math.ceil(N / C) * C  # one per K tile, row and column


def test_os_trace_outputs_in_drain_order():
    rng = np.random.default_rng(4)
    R, C, K = 3, 2, 5
    acts, codes = random_gemm(rng, 2 * R, K, C)
    run = gemm_v2(acts, codes, R, C, "os", trace=True)
    want, _ = ref(acts, codes)
    tr = run.trace
    for j, s in enumerate(run.starts):
        for c in range(C):
            for r in range(R):
                t = s + K + 2 * R + c - 2 - r  # bottom row first, column c one cycle after column c-1
                assert tr["out_valid"][t, c] and tr["out"][t, c] == want[j * R + r, c]
    assert tr["out_valid"].sum() == 2 * R * C


@pytest.mark.parametrize("dataflow", DATAFLOWS)
def test_v2_matches_v1_results(dataflow):
    rng = np.random.default_rng(1)
    acts, codes = random_gemm(rng, 6, 9, 5)
    v1 = array_gemm(acts, codes, 3, 2, "os" if dataflow == "os" else "ws", m_tile=4)
    assert np.array_equal(gemm_v2(acts, codes, 3, 2, dataflow, m_tile=4).acc, v1[0])


@given(M=st.integers(0, 5000), K=st.integers(0, 5000), N=st.integers(0, 5000), R=st.integers(1, 256),
       C=st.integers(1, 256), m_tile=st.integers(0, 600), dataflow=st.sampled_from(DATAFLOWS))
@settings(max_examples=200, deadline=None)
def test_closed_forms_never_slower_than_v1_and_count_every_mac(M, K, N, R, C, m_tile, dataflow):
    cf = gemm_compute(dataflow, M, K, N, R, C, m_tile or None)
    if not (M and K and N):
        assert cf == Compute(0, 0, 0, 0, 0, 0, 0)
        return
    assert cf.cycles <= v1_cycles(dataflow, M, K, N, R, C, m_tile or None)
    assert cf.cycles * R * C >= M * K * N  # no more than one MAC per PE per cycle
    if dataflow == "stream":
        assert cf.cycles <= gemm_compute("ws", M, K, N, R, C, m_tile or None).cycles


@pytest.mark.parametrize("R,C", [(8, 8), (32, 32), (16, 64)])
def test_stream_decode_is_one_cycle_per_tile(R, C):
    K, N = 8 * R, 4 * R * C  # N / C >= R tiles per K round: the partial sums are back in time
    cf = gemm_compute("stream", 1, K, N, R, C)
    assert cf.tiles == (K // R) * (N // C) and cf.ii == 1
    assert cf.cycles == cf.tiles + R + C
    assert cf.weight_words == K * N
    ws = gemm_compute("ws", 1, K, N, R, C)
    assert ws.cycles > R // 2 * cf.cycles  # WS at M = 1 reloads R rows per tile


@pytest.mark.parametrize("dataflow,M,K,N", [("ws", 4096, 256, 256), ("os", 512, 8192, 256),
                                            ("stream", 4096, 256, 256)])
def test_utilisation_near_one_for_large_gemms(dataflow, M, K, N):
    R = C = 32
    cf = gemm_compute(dataflow, M, K, N, R, C, 1024)
    assert M * K * N / (cf.cycles * R * C) > 0.97


@pytest.mark.parametrize("args", [("xs", 1, 1, 1, 2, 2), ("ws", -1, 1, 1, 2, 2), ("ws", 1, 1.5, 1, 2, 2),
                                  ("os", 1, 1, 1, 0, 2), ("stream", 1, 1, 1, 2, True), ("ws", 2, 2, 2, 2, 2, -1)])
def test_bad_dims_raise(args):
    with pytest.raises(QiftError):
        gemm_compute(*args)


@pytest.mark.slow
@given(M=st.integers(1, 20), K=st.integers(1, 30), N=st.integers(1, 20), R=st.integers(1, 8), C=st.integers(1, 8),
       dataflow=st.sampled_from(DATAFLOWS), m_tile=st.integers(0, 9), acc_bits=st.sampled_from([8, 12, 32]),
       seed=st.integers(0, 2**31))
@settings(max_examples=300, deadline=None)
def test_v2_sweep(M, K, N, R, C, dataflow, m_tile, acc_bits, seed):
    acts, codes = random_gemm(np.random.default_rng(seed), M, K, N)
    run = gemm_v2(acts, codes, R, C, dataflow, acc_bits=acc_bits, m_tile=m_tile or None)
    want, want_ovf = ref(acts, codes, acc_bits=acc_bits)
    assert np.array_equal(run.acc, want) and np.array_equal(run.ovf, want_ovf)
    cf = gemm_compute(dataflow, M, K, N, R, C, m_tile or None)
    assert run.cycles == cf.cycles and run.words == {k: getattr(cf, k) for k in WORDS}
