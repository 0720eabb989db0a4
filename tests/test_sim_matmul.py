"""qift_hw.sim.matmul against a direct int64 matmul of the level set's decoded integer weights."""

import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qift_hw.core import formats
from qift_hw.core.errors import QiftError
from qift_hw.core.levels import get_level_set, pack_codes
from qift_hw.sim import SaturationWarning, matmul, prepare_weights
from qift_hw.sim.bitplane import mu_shift_add, signmag_mu
from qift_hw.sim.pe import MNZ, MULT, PM12, POT_MNZ, STD, pe_kind, pe_product

SETS = ["pot_mnz", "mnz", "pm12", "std"]
HYP = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def int_weights(codes: np.ndarray, level_set: str) -> np.ndarray:
    """Integer weights from the level set's own levels (levels / unit), not from the PE."""
    ls = get_level_set(level_set)
    lv = ls.decode(codes).numpy() / formats.weight_unit(ls)
    assert np.all(lv == np.round(lv))
    return lv.astype(np.int64)


def reference(acts, codes, level_set):
    return acts.astype(np.int64) @ int_weights(codes, level_set).T


def seq_saturating(acts, codes, level_set, bits):
    w = int_weights(codes, level_set)
    out = np.zeros((acts.shape[0], codes.shape[0]), dtype=np.int64)
    flag = np.zeros(out.shape, dtype=bool)
    for m in range(acts.shape[0]):
        for n in range(codes.shape[0]):
            out[m, n], flag[m, n] = formats.saturating_dot(acts[m].astype(np.int64) * w[n], bits)
    return out, flag


@pytest.mark.parametrize("level_set", SETS)
def test_pe_product_every_code_and_activation(level_set):
    w = formats.weight_int_values(level_set)
    kind = {"pot_mnz": POT_MNZ, "mnz": MNZ, "pm12": PM12, "std": STD}[level_set]
    assert pe_kind(level_set) == pe_kind(get_level_set(level_set)) == (kind, 2)
    for code in range(4):
        for a in range(-8, 8):
            assert pe_product(kind, code, a) == w[code] * a
    codes, acts = np.meshgrid(np.arange(4), np.arange(-8, 8))
    assert np.array_equal(pe_product(kind, codes, acts), w[codes] * acts)
    lo, hi = formats.PE_PRODUCT_RANGE[level_set]
    prods = w[codes] * acts
    assert prods.min() == lo and prods.max() == hi


@given(M=st.integers(0, 5), K=st.integers(0, 200), N=st.integers(0, 40), level_set=st.sampled_from(SETS),
       kernel=st.sampled_from(["auto", "bitplane", "pe"]), packed=st.booleans(), seed=st.integers(0, 2**31))
@HYP
def test_matmul_exact_random(M, K, N, level_set, kernel, packed, seed):
    rng = np.random.default_rng(seed)
    acts = rng.integers(-8, 8, (M, K)).astype(np.int8)
    codes = rng.integers(0, 4, (N, K)).astype(np.uint8)
    packed = packed and N * K > 0  # levels.pack_codes does not take empty tensors
    arg = pack_codes(torch.from_numpy(codes)).numpy() if packed else codes
    out = matmul(acts, arg, level_set, kernel=kernel, packed=packed, K=K if packed else None)
    assert out.dtype == np.int64 and out.shape == (M, N)
    assert np.array_equal(out, reference(acts, codes, level_set))


@pytest.mark.parametrize("level_set", SETS)
@pytest.mark.parametrize("K", [1, 63, 64, 65, 577, 1536])
def test_matmul_edge_values(level_set, K):
    codes_all = [np.full((3, K), c, dtype=np.uint8) for c in range(4)]
    for acts in (np.full((2, K), -8, dtype=np.int8), np.full((2, K), 7, dtype=np.int8),
                 np.tile(np.array([-8, 7], dtype=np.int8), (2, K))[:, :K]):
        for codes in codes_all:
            for kernel in ("bitplane", "pe"):
                assert np.array_equal(matmul(acts, codes, level_set, kernel=kernel), reference(acts, codes, level_set))


def test_prepared_weights_and_torch_inputs():
    rng = np.random.default_rng(3)
    acts = torch.from_numpy(rng.integers(-8, 8, (7, 300)).astype(np.int8))
    codes = torch.from_numpy(rng.integers(0, 4, (50, 300)).astype(np.uint8))
    pw = prepare_weights(codes, "mnz")
    ref = reference(acts.numpy(), codes.numpy(), "mnz")
    assert np.array_equal(matmul(acts, pw, "mnz"), ref)
    assert np.array_equal(matmul(acts[:1], pw, "mnz"), ref[:1])
    with pytest.raises(QiftError, match="prepared weights are"):
        matmul(acts, pw, "pot_mnz")


@pytest.mark.parametrize("bits", ["int3", "int4", "int8"])
def test_multiplier_baselines(bits):
    rng = np.random.default_rng(4)
    ls = get_level_set(bits)
    acts = rng.integers(-8, 8, (4, 90)).astype(np.int8)
    codes = rng.integers(0, 2**ls.bits, (6, 90)).astype(np.uint8)
    ref = acts.astype(np.int64) @ ls.decode(codes).numpy().astype(np.int64).T
    assert np.array_equal(matmul(acts, codes, bits), ref)


@given(M=st.integers(1, 3), K=st.integers(1, 60), N=st.integers(1, 4), level_set=st.sampled_from(SETS),
       bits=st.integers(4, 12), seed=st.integers(0, 2**31))
@HYP
def test_saturation_matches_sequential_rule(M, K, N, level_set, bits, seed):
    rng = np.random.default_rng(seed)
    acts = rng.choice(np.array([-8, -7, 7, 6], dtype=np.int8), (M, K))
    codes = rng.integers(0, 4, (N, K)).astype(np.uint8)
    out, ovf = matmul(acts, codes, level_set, acc_bits=bits, return_overflow=True)
    ref, flag = seq_saturating(acts, codes, level_set, bits)
    assert np.array_equal(out, ref) and np.array_equal(ovf, flag)


def test_overflow_is_reported_never_wrapped():
    K = 300
    acts = np.full((2, K), -8, dtype=np.int8)
    codes = np.full((3, K), 3, dtype=np.uint8)  # -4 x -8 = +32 per MAC: 9600 > 2^12
    with pytest.warns(SaturationWarning, match="saturated"):
        out = matmul(acts, codes, "pot_mnz", acc_bits=12)
    assert np.all(out == 2**11 - 1)
    with pytest.raises(QiftError, match="overflow 12 bits"):
        matmul(acts, codes, "pot_mnz", acc_bits=12, overflow="error")
    with pytest.raises(QiftError, match="cannot overflow"):
        matmul(acts, codes, "pot_mnz", acc_bits=12, kernel="bitplane")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.all(matmul(acts, codes, "pot_mnz", acc_bits=15) == 32 * K)


def test_bad_inputs():
    a = np.zeros((2, 8), dtype=np.int8)
    c = np.zeros((3, 8), dtype=np.uint8)
    with pytest.raises(QiftError, match=r"\[-8, 7\]"):
        matmul(a + 8, c)
    with pytest.raises(QiftError, match="uint8"):
        matmul(a, c.astype(np.int32))
    with pytest.raises(QiftError, match="exceeds 2 bits"):
        matmul(a, c + 4)
    with pytest.raises(QiftError, match="K=9 columns"):
        matmul(np.zeros((2, 9), dtype=np.int8), c)
    with pytest.raises(QiftError, match="no integer PE"):
        matmul(a, c, "lloyd")
    with pytest.raises(QiftError, match="overflow policy"):
        matmul(a, c, overflow="wrap")


def test_pe_kinds_of_the_baselines_and_refusals():
    assert len({POT_MNZ, MNZ, PM12, STD, MULT}) == 5
    assert [pe_kind(f"int{b}") for b in (3, 4, 8)] == [(MULT, 3), (MULT, 4), (MULT, 8)]
    for name in ("nf2", "asym", "ratio:0.25"):
        with pytest.raises(QiftError, match="no integer PE"):
            pe_kind(name)


def test_bitplane_mu_from_the_integer_weights():
    """weight = sgn * (1 + mu * b0): PoT-MNZ {1, 4} -> 3, MNZ {1, 3} -> 2, pm12 {1, 2} -> 1; std is two's complement."""
    assert [signmag_mu(n) for n in ("pot_mnz", "mnz", "pm12", "std")] == [3, 2, 1, None]
    assert [mu_shift_add(m) for m in (1, 2, 3, 4, 5)] == [(0, 0), (1, 0), (1, 1), (2, 0), (2, 1)]
    with pytest.raises(QiftError, match="no shift-add form"):
        mu_shift_add(6)
    with pytest.raises(QiftError, match="bit-plane kernel cannot"):
        signmag_mu("int4")
