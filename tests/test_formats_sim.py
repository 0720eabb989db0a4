"""The parts of qift_hw.core.formats that the bit-accurate model adds: accumulation rule, Hadamard format, dequant."""

import numpy as np
import pytest
import torch

from qift_hw.core import formats
from qift_hw.core.errors import QiftError


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
