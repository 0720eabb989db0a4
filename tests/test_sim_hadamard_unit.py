"""Integer Hadamard unit against qift_hw.core.hadamard (independent reference), bit growth, and the INT4 quantizer."""

import numpy as np
import pytest
import torch

from qift_hw.core import formats
from qift_hw.core.hadamard import hadamard_matrix, hadamard_transform, split_order
from qift_hw.sim.hadamard_unit import hadamard_int, hadamard_quantize


@pytest.mark.parametrize("n", [1, 2, 8, 64, 12, 20, 576, 1536])
def test_integer_transform_is_exact(n):
    rng = np.random.default_rng(n)
    m = rng.integers(-formats.HAD_IN_MAX, formats.HAD_IN_MAX + 1, (5, n))
    ref = torch.from_numpy(m) @ hadamard_matrix(n).T
    assert np.array_equal(hadamard_int(m), ref.numpy())


@pytest.mark.parametrize("n", [64, 12, 576, 1536])
def test_bit_growth_bound_is_reached_and_respected(n):
    K, p = split_order(n)
    H = hadamard_matrix(n).numpy()
    m = (H[0] * formats.HAD_IN_MAX).astype(np.int64)[None, :]  # row 0 of H: output 0 = n * max
    y = hadamard_int(m)
    bits = formats.had_out_bits(K, p)
    assert int(np.abs(y).max()) == n * formats.HAD_IN_MAX
    assert int(np.abs(y).max()) < 2 ** (bits - 1)
    assert n * formats.HAD_IN_MAX >= 2 ** (bits - 2)  # one bit fewer would not do
    with pytest.raises(AssertionError, match="bit-growth"):
        hadamard_int(m * 2)


@pytest.mark.parametrize("n", [64, 576, 1536])
def test_quantizer_agrees_with_float_pipeline(n):
    torch.manual_seed(n)
    x = torch.randn(64, n) * torch.rand(64, 1) * 10
    x[0] = 0.0
    q, s = hadamard_quantize(x)
    qr, sr = formats.quantize_act(hadamard_transform(x, normalize=True))
    assert q.dtype == torch.int8 and int(q.min()) >= -8 and int(q.max()) <= 7
    # only codes sitting on a rounding boundary (within the 16-bit input error) may differ, by one step
    diff = (q.long() - qr.long()).abs()
    assert int(diff.max()) <= 1 and diff.float().mean() < 1e-3
    t = hadamard_transform(x, normalize=True) / sr
    frac = (t - t.floor())[diff > 0]
    assert torch.all((frac - 0.5).abs() < 2e-3)  # every moved code sat on a rounding boundary
    rel = ((s - sr).abs() / sr)[1:]
    assert float(rel.max()) < 2e-4
    assert torch.all(q[0] == 0)


def test_input_format():
    x = torch.tensor([[0.0, 1.5, -3.25, 100.0], [0.0, 0.0, 0.0, 0.0], [1e-30, -2e-30, 0, 0]])
    m, e = formats.had_input_fixed(x)
    assert int(m.abs().max()) <= formats.HAD_IN_MAX
    back = torch.ldexp(m.double(), e.double())
    assert torch.all((back - x.double()).abs() <= torch.ldexp(torch.ones(3, 1, dtype=torch.float64), e.double()) / 2)
    assert torch.all(m[1] == 0) and int(e[1]) == 0
    assert int(m[0].abs().max()) >= 2 ** (formats.HAD_IN_BITS - 2)  # full use of the mantissa range
