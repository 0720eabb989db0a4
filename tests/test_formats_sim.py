"""The parts of qift_hw.core.formats that the bit-accurate model adds: accumulation rule, Hadamard format, dequant."""

import numpy as np
import pytest
import torch

from qift_hw.core import formats
from qift_hw.core.errors import QiftError
from qift_hw.core.levels import get_level_set


def test_saturating_dot_rule():
    assert formats.saturating_dot([100, 100, -50], 8) == (77, True)
    assert formats.saturating_dot([60, 60, -60], 8) == (60, False)
    assert formats.saturating_dot([-200], 8) == (-128, True)
    assert formats.saturating_dot([], 8) == (0, False)


@pytest.mark.parametrize("level_set,mx", [("pot_mnz", 32), ("mnz", 24), ("pm12", 16), ("std", 16)])
def test_product_range_and_safe_width(level_set, mx):
    assert formats.max_abs_product(level_set) == mx
    lo, hi = formats.PE_PRODUCT_RANGE[level_set]
    assert max(-lo, hi) == mx
    K = 4096
    b = formats.acc_bits_needed(K, level_set)
    assert formats.cannot_overflow(K, level_set, b) and not formats.cannot_overflow(K, level_set, b - 2)


@pytest.mark.parametrize("K,p,growth", [(1, 64, 6), (12, 128, 11), (36, 16, 10), (1, 1, 0), (20, 1, 5)])
def test_hadamard_growth(K, p, growth):
    assert formats.had_growth_bits(K, p) == growth
    assert formats.had_out_bits(K, p) == formats.HAD_IN_BITS + growth
    assert 2 ** growth >= K * p  # a sum of K * p terms of magnitude < 2^15 fits


def test_hadamard_growth_rejects_bad_split():
    with pytest.raises(QiftError):
        formats.had_growth_bits(3, 12)


def test_dequantize_order_is_fp32_step_by_step():
    rng = np.random.default_rng(0)
    acc = torch.from_numpy(rng.integers(-2**30, 2**30, (6, 5)))
    sa = torch.rand(6, 1) * 0.1
    sw = torch.rand(5) * 0.01
    y = formats.dequantize_acc(acc, sa, sw, "mnz")
    a32 = acc.numpy().astype(np.float32)
    expect = (a32 * sa.numpy().astype(np.float32)) * (sw.numpy().astype(np.float32) * np.float32(0.5))
    assert y.dtype == torch.float32 and np.array_equal(y.numpy(), expect)
    assert formats.weight_unit("mnz") == 0.5 and formats.weight_unit("pot_mnz") == 1.0


# Written out by hand from docs/formats.md (not from the code): integer weight of codes 0..3, and the unit.
HAND_WEIGHTS = {
    "pot_mnz": ([1, 4, -1, -4], 1.0),
    "mnz": ([1, 3, -1, -3], 0.5),
    "pm12": ([1, 2, -1, -2], 1.0),
    "std": ([0, 1, -2, -1], 1.0),
}


def test_hardware_sets_and_int_weights_match_the_hand_table():
    assert formats.HW_LEVEL_SETS == ("pot_mnz", "mnz", "pm12", "std")
    assert formats.MULTIPLIER_LEVEL_SETS == ("int3", "int4", "int8")
    for name, (w, unit) in HAND_WEIGHTS.items():
        assert formats.weight_int_values(name).tolist() == w
        assert formats.weight_unit(name) == unit
        assert get_level_set(name).level_of_code.tolist() == [unit * x for x in w]
        codes = torch.tensor([[3, 0], [1, 2]], dtype=torch.uint8)
        assert formats.weight_ints(codes, name).tolist() == [[w[3], w[0]], [w[1], w[2]]]
    assert formats.HW_MAX_ABS_WEIGHT == 4


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_integer_grids_weigh_codes_as_twos_complement(bits):
    w = formats.weight_int_values(f"int{bits}").tolist()
    assert w == [c - 2**bits if c >= 2 ** (bits - 1) else c for c in range(2**bits)]
    assert formats.weight_unit(f"int{bits}") == 1.0


@pytest.mark.parametrize("name", ["pot_mnz", "mnz", "pm12", "std"])
def test_product_range_by_brute_force(name):
    prods = [w * a for w in HAND_WEIGHTS[name][0] for a in range(-8, 8)]
    assert formats.PE_PRODUCT_RANGE[name] == (min(prods), max(prods))
    assert formats.product_range(name) == (min(prods), max(prods))


@pytest.mark.parametrize("name,act_bits", [("int4", 4), ("int8", 8), ("int8", 4), ("int3", 4)])
def test_multiplier_product_range_by_brute_force(name, act_bits):
    bits = get_level_set(name).bits
    prods = [w * a for w in range(-(2 ** (bits - 1)), 2 ** (bits - 1))
             for a in range(-(2 ** (act_bits - 1)), 2 ** (act_bits - 1))]
    assert formats.product_range(name, act_bits) == (min(prods), max(prods))
    assert formats.max_abs_product(name, act_bits) == max(abs(p) for p in prods)


@pytest.mark.parametrize("name", ["nf2", "lloyd", "asym", "ratio:0.25"])
def test_sets_without_integer_decode_are_refused(name):
    with pytest.raises(QiftError, match="no integer hardware decode"):
        formats.weight_int_values(name)
    with pytest.raises(QiftError, match="no integer hardware decode"):
        formats.weight_unit(name)


def test_rtl_pe_formats_match_the_hand_table():
    from qift_hw.rtl.pe import PE_KINDS, pe_format

    assert PE_KINDS == ("pot_mnz", "mnz", "pm12", "std", "int4", "int8")
    # kind: (activation bits, weight port bits, signed weight port, product min, product max)
    want = {"pot_mnz": (4, 2, False, -32, 32), "mnz": (4, 2, False, -24, 24), "pm12": (4, 2, False, -16, 16),
            "std": (4, 2, False, -14, 16), "int4": (4, 4, True, -56, 64), "int8": (8, 8, True, -16256, 16384)}
    for kind, (ab, wb, sgn, lo, hi) in want.items():
        f = pe_format(kind)
        assert (f.act_bits, f.w_shape.width, f.w_shape.signed, f.prod_min, f.prod_max) == (ab, wb, sgn, lo, hi)
        assert f.multiplier_free == (kind in HAND_WEIGHTS)
        assert pe_format(get_level_set(kind)) == f
    assert pe_format("mnz").weight_values() == [1, 3, -1, -3]
    assert pe_format("int4").weight_values() == [0, 1, 2, 3, 4, 5, 6, 7, -8, -7, -6, -5, -4, -3, -2, -1]
    with pytest.raises(QiftError, match="unknown PE kind"):
        pe_format("int3")


def test_activation_scale_is_these_fp32_steps():
    """scale = fp32(fp32(max|x| * fp32(0.9)) / 7), each step rounded in FP32 (numpy float32 here, not torch): bit
    for bit on random maxima; reading 0.9 as a double gives other bits for a large share, and flips max 28, x = -27
    from -8 to -7."""
    rng = np.random.default_rng(12)
    maxima = np.concatenate([rng.uniform(0, 100, 4000), rng.integers(1, 2**24, 4000),
                             2.0 ** rng.uniform(-30, 30, 4000), np.arange(1, 1025)]).astype(np.float32)
    steps = (maxima * np.float32(formats.ACT_CLIP)) / np.float32(formats.ACT_QMAX)
    assert steps.dtype == np.float32
    _, scale = formats.quantize_act(torch.from_numpy(maxima)[:, None])
    assert np.array_equal(scale[:, 0].numpy().view(np.uint32), steps.view(np.uint32))
    as_double = (maxima.astype(np.float64) * formats.ACT_CLIP).astype(np.float32) / np.float32(formats.ACT_QMAX)
    assert (as_double.view(np.uint32) != steps.view(np.uint32)).mean() > 0.2
    q, _ = formats.quantize_act(torch.tensor([[28.0, -27.0]]))
    s28 = (np.float32(28) * np.float32(0.9)) / np.float32(7)
    s28_double = np.float32(28 * 0.9) / np.float32(7)
    assert q[0, 1] == -8 == np.rint(np.float32(-27) / s28)
    assert np.rint(np.float32(-27) / s28_double) == -7
