"""The fast exact kernels (byte dot products, bit planes) against an independent integer reference.

Reference: torch int64 matmul of the integer weights decoded from the level set's own levels (levels / unit), and
the hardware's rule written out (sequential saturating accumulation) where saturation is possible.
"""

import numba
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qift_hw.core import formats
from qift_hw.core.errors import QiftError
from qift_hw.core.levels import get_level_set, pack_codes
from qift_hw.sim import bytedot, matmul, prepare_weights

SHIFT_ADD = ["pot_mnz", "mnz", "pm12", "std"]
MULTIPLIER = ["int3", "int4", "int8"]
HYP = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def int_weights(codes: np.ndarray, level_set: str) -> np.ndarray:
    ls = get_level_set(level_set)
    lv = ls.decode(torch.from_numpy(codes)).numpy().astype(np.float64) / formats.weight_unit(ls)
    assert np.all(lv == np.round(lv))
    return lv.astype(np.int64)


def reference(acts: np.ndarray, codes: np.ndarray, level_set: str) -> np.ndarray:
    w = torch.from_numpy(int_weights(codes, level_set))
    return (torch.from_numpy(acts.astype(np.int64)) @ w.T).numpy()


def saturating_reference(acts, codes, level_set, bits):
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    prods = acts.astype(np.int64)[:, None, :] * int_weights(codes, level_set)[None, :, :]
    out = np.zeros(prods.shape[:2], dtype=np.int64)
    flag = np.zeros(out.shape, dtype=bool)
    for k in range(prods.shape[2]):
        x = out + prods[:, :, k]
        out = np.clip(x, lo, hi)
        flag |= out != x
    return out, flag


def random_case(rng, M, K, N, level_set):
    ls = get_level_set(level_set)
    acts = rng.integers(-8, 8, (M, K)).astype(np.int8)
    codes = rng.integers(0, 2**ls.bits, (N, K)).astype(np.uint8)
    return acts, codes


@given(M=st.sampled_from([0, 1, 2, 3, 5, 6, 7, 12, 13]), K=st.integers(0, 300), N=st.integers(0, 140),
       level_set=st.sampled_from(SHIFT_ADD + MULTIPLIER), seed=st.integers(0, 2**31))
@HYP
def test_byte_kernel_exact_on_ragged_shapes(M, K, N, level_set, seed):
    """Every row-tile remainder (1..6 rows), K not a multiple of 4/16/64, N not a multiple of the 64-channel panel;
    the AVX-512 VNNI tile (where the CPU has it) and the portable tile."""
    acts, codes = random_case(np.random.default_rng(seed), M, K, N, level_set)
    ref = reference(acts, codes, level_set)
    pw = prepare_weights(codes, level_set)
    out = matmul(acts, pw, level_set, kernel="bytes")
    assert out.dtype == np.int64 and out.shape == (M, N) and np.array_equal(out, ref)
    assert np.array_equal(bytedot.gemm(acts, pw.byte_panels, portable=True), ref)
    assert np.array_equal(bytedot.gemm(acts, pw.byte_panels, per=1), ref)  # one panel per group
    assert np.array_equal(bytedot.gemm(acts, pw.byte_panels, per=2), ref)  # groups with a short last one


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two Numba threads")
def test_byte_kernel_threads():
    """Above PARALLEL_MIN_MACS the panel groups run over threads (prange); same values."""
    rng = np.random.default_rng(11)
    M, K, N = 64, 1031, 1030
    assert M * K * N >= bytedot.PARALLEL_MIN_MACS
    acts, codes = random_case(rng, M, K, N, "pot_mnz")
    pw = prepare_weights(codes, "pot_mnz")
    threads = numba.get_num_threads()
    numba.set_num_threads(2)
    try:
        G = pw.byte_panels.panels.shape[1]
        per = bytedot.panels_per_group(G, 17, 2)
        assert 1 <= per <= 9 and per * G * bytedot.GROUP * bytedot.PANEL <= bytedot.GROUP_BYTES
        assert np.array_equal(matmul(acts, pw, kernel="bytes"), reference(acts, codes, "pot_mnz"))
    finally:
        numba.set_num_threads(threads)


@pytest.mark.parametrize("level_set", SHIFT_ADD + MULTIPLIER)
def test_extreme_values_every_code(level_set):
    """acts at -8 and 7 against every code, K long enough that the int32 lanes carry large sums."""
    ls = get_level_set(level_set)
    K = 4099
    codes = np.stack([np.full(K, c, dtype=np.uint8) for c in range(2**ls.bits)])
    acts = np.stack([np.full(K, -8, dtype=np.int8), np.full(K, 7, dtype=np.int8),
                     np.resize(np.array([-8, 7], dtype=np.int8), K)])
    ref = reference(acts, codes, level_set)
    for kernel in ("auto", "bytes", "pe") + (("bitplane",) if level_set in SHIFT_ADD else ()):
        assert np.array_equal(matmul(acts, codes, level_set, kernel=kernel), ref), kernel
    assert np.array_equal(bytedot.gemm(acts, prepare_weights(codes, level_set).byte_panels, portable=True), ref)


@pytest.mark.parametrize("M", [1, 4, 64])
@pytest.mark.parametrize("level_set", SHIFT_ADD)
def test_fast_kernels_agree_on_model_like_shapes(M, level_set):
    """M = 1 (decode) and a prefill block at a SmolLM2 shape, packed codes with a ragged K."""
    rng = np.random.default_rng(M)
    K, N = 575, 193
    acts, codes = random_case(rng, M, K, N, level_set)
    packed = pack_codes(torch.from_numpy(codes)).numpy()
    ref = reference(acts, codes, level_set)
    pw = prepare_weights(packed, level_set, packed=True, K=K)
    for kernel in ("auto", "bytes", "bitplane"):
        assert np.array_equal(matmul(acts, pw, level_set, kernel=kernel), ref), kernel
    assert np.array_equal(matmul(torch.from_numpy(acts.astype(np.int16)), codes, level_set), ref)


def test_auto_kernel_choice_follows_the_overflow_proof():
    """K * max|product| must fit the accumulator before a fast kernel runs; at K = 1023 a 16-bit accumulator holds
    1023 * 32 = 32736 exactly (fast kernel), at K = 1024 it saturates (PE kernel, flags set)."""
    acts = np.full((2, 1024), -8, dtype=np.int8)
    codes = np.full((3, 1024), 3, dtype=np.uint8)  # pot_mnz code 3 = -4: every product +32
    fast = "bytes" if bytedot.VNNI else "bitplane"
    assert prepare_weights(codes[:, :1023], "pot_mnz").fast_kernel(16) == fast
    out, ovf = matmul(acts[:, :1023], codes[:, :1023], "pot_mnz", acc_bits=16, return_overflow=True)
    assert np.all(out == 32736) and not ovf.any()
    pw = prepare_weights(codes, "pot_mnz")
    assert pw.fast_kernel(16) == "pe" and pw.fast_kernel(32) == fast
    out, ovf = matmul(acts, pw, "pot_mnz", acc_bits=16, return_overflow=True)
    ref, flag = saturating_reference(acts, codes, "pot_mnz", 16)
    assert np.array_equal(out, ref) and np.array_equal(ovf, flag) and ovf.all() and np.all(out == 2**15 - 1)
    for kernel in ("bytes", "bitplane"):
        with pytest.raises(QiftError, match="cannot overflow"):
            matmul(acts, pw, "pot_mnz", acc_bits=16, kernel=kernel)


@given(K=st.integers(1, 70), N=st.integers(1, 5), level_set=st.sampled_from(SHIFT_ADD + MULTIPLIER),
       bits=st.integers(4, 11), seed=st.integers(0, 2**31))
@HYP
def test_tiny_accumulators_saturate_exactly_as_the_hardware(K, N, level_set, bits, seed):
    rng = np.random.default_rng(seed)
    ls = get_level_set(level_set)
    acts = rng.choice(np.array([-8, -7, 7, 6], dtype=np.int8), (3, K))
    codes = rng.integers(0, 2**ls.bits, (N, K)).astype(np.uint8)
    out, ovf = matmul(acts, codes, level_set, acc_bits=bits, return_overflow=True)
    ref, flag = saturating_reference(acts, codes, level_set, bits)
    assert np.array_equal(out, ref) and np.array_equal(ovf, flag)


def test_byte_lane_bound_falls_back():
    """int8 weights: 15 * 128 * K must fit an int32 lane; past that (K = 1,118,496) ``auto`` runs the PE kernel
    although a 32-bit accumulator is still safe (K * 1024 < 2^31), and ``bytes`` refuses."""
    assert bytedot.fits(1_118_480, 128) and not bytedot.fits(1_118_496, 128)
    assert bytedot.fits(35_791_392, 4) and not bytedot.fits(35_791_408, 4)
    K = 1_118_496
    assert formats.cannot_overflow(K, "int8")
    rng = np.random.default_rng(7)
    acts, codes = random_case(rng, 1, K, 1, "int8")
    pw = prepare_weights(codes, "int8")
    assert pw.fast_kernel(32) == "pe"
    assert np.array_equal(matmul(acts, pw, "int8"), reference(acts, codes, "int8"))
    with pytest.raises(QiftError, match="wrap an int32 lane"):
        matmul(acts, pw, "int8", kernel="bytes")


def test_byte_kernel_rejects_out_of_range_acts_and_reports_no_overflow():
    codes = np.zeros((3, 8), dtype=np.uint8)
    with pytest.raises(QiftError, match=r"\[-8, 7\]"):
        matmul(np.full((2, 8), 8, dtype=np.int8), codes, kernel="bytes")
    with pytest.raises(QiftError, match=r"\[-8, 7\]"):
        matmul(np.full((2, 8), -9, dtype=np.int8), codes, kernel="bytes")
    out, ovf = matmul(np.full((2, 8), 7, dtype=np.int8), codes, kernel="bytes", return_overflow=True,
                      overflow="error")
    assert np.all(out == 7 * 8) and ovf.shape == (2, 3) and not ovf.any()
