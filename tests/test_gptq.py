"""GPTQ and RTN against independent references: a textbook unblocked OBQ loop, brute-force rounding, direct
matmuls for the output error, and permutation identities for act-order."""

import numpy as np
import pytest
import torch

from qift_hw.core.errors import QiftError
from qift_hw.algo.gptq import HessianAccumulator, gptq_quantize, relative_output_error, rtn_quantize
from qift_hw.core.levels import TWO_BIT_SETS, fit_params, get_level_set

ALL_SETS = list(TWO_BIT_SETS) + ["int3", "int4", "ratio:0.3"]


def correlated_layer(N=48, K=64, T=2048, seed=0, dtype=torch.float64):
    """A weight and inputs with strongly correlated features (as real activations are)."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(K, K, generator=g, dtype=dtype) / K**0.5
    scales = torch.logspace(-1, 0.5, K, dtype=dtype)
    X = (torch.randn(T, K, generator=g, dtype=dtype) * scales) @ mix + 0.05 * torch.randn(T, K, generator=g, dtype=dtype)
    W = torch.randn(N, K, generator=g, dtype=dtype) * 0.05
    return W, X


def brute_round(w_col: torch.Tensor, ls, params, row_idx=None) -> torch.Tensor:
    """Nearest level by exhaustive search over the level set (asym: index minus the row's zero)."""
    levels = torch.as_tensor(ls.levels, dtype=torch.float64)
    s = params.scale[:, 0].double()
    if ls.kind == "asym":
        cand = (levels[None, :] - params.zero.double()) * s[:, None]
    else:
        cand = levels[None, :] * s[:, None]
    i = torch.argmin((w_col[:, None] - cand).abs(), dim=1)
    return cand.gather(1, i[:, None])[:, 0]


def obq_reference(W, H, ls, params, damp=0.01, order=None):
    """Unblocked column-by-column error feedback with the explicit inverse Hessian (OBQ/GPTQ recurrence).

    After quantizing column i, the remaining weights move by -err * Hinv[i, :] / Hinv[i, i] and column i is
    eliminated from the inverse (Gaussian elimination), so no Cholesky factor is used.
    """
    W = W.double().clone()
    H = H.double().clone()
    K = W.shape[1]
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H = H + damp * torch.diag(H).mean() * torch.eye(K, dtype=torch.float64)
    Hinv = torch.linalg.inv(H)
    Q = torch.zeros_like(W)
    for i in order if order is not None else range(K):
        q = brute_round(W[:, i], ls, params)
        Q[:, i] = q
        err = (W[:, i] - q) / Hinv[i, i]
        W -= err[:, None] * Hinv[i, :][None, :]
        Hinv = Hinv - Hinv[:, i : i + 1] @ Hinv[i : i + 1, :] / Hinv[i, i]
    return Q


def hessian_of(X):
    acc = HessianAccumulator(X.shape[1])
    for chunk in X.split(300):
        acc.add(chunk)
    return acc.hessian


def test_hessian_accumulator_matches_direct_formula():
    _, X = correlated_layer(T=1000)
    H = hessian_of(X)
    torch.testing.assert_close(H, 2 * X.T @ X / X.shape[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ALL_SETS)
def test_gptq_output_error_below_rtn(name):
    ls = get_level_set(name)
    W, X = correlated_layer(dtype=torch.float32)
    H = hessian_of(X)
    g = gptq_quantize(W, H, ls)
    r = rtn_quantize(W, ls)
    direct = lambda Wq: float(torch.linalg.norm(X.double() @ (W - Wq).double().T) / torch.linalg.norm(X.double() @ W.double().T))
    e_g, e_r = direct(g.deq), direct(r.deq)
    assert e_g < 0.9 * e_r, (name, e_g, e_r)
    assert abs(relative_output_error(W, g.deq, H) - e_g) < 1e-6 * max(1.0, e_g)


@pytest.mark.parametrize("name", ALL_SETS)
@pytest.mark.parametrize("blocksize", [64, 5])
def test_gptq_equals_unblocked_obq_loop(name, blocksize):
    ls = get_level_set(name)
    W, X = correlated_layer(N=12, K=64, T=512, seed=1)
    H = hessian_of(X)
    params = fit_params(W, ls, "mse")
    ref = obq_reference(W, H, ls, params)
    out = gptq_quantize(W, H, ls, params=params, blocksize=blocksize, compute_dtype=torch.float64)
    torch.testing.assert_close(out.deq.double(), ref, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(out.deq.double(), rtn_from_codes(out.codes, ls, params), rtol=1e-6, atol=1e-12)


def rtn_from_codes(codes, ls, params):
    """Dequantize by looking each code up in the level set's published code table."""
    table = torch.as_tensor(ls.level_of_code, dtype=torch.float64)
    lv = table[codes.long()]
    if ls.kind == "asym":
        lv = lv - params.zero.double()
    return lv * params.scale.double()


def test_gptq_act_order_permutation_consistency():
    ls = get_level_set("mnz")
    W, X = correlated_layer(N=10, K=40, T=400, seed=2)
    H = hessian_of(X)
    params = fit_params(W, ls)
    perm = torch.argsort(torch.diag(H), descending=True)
    out = gptq_quantize(W, H, ls, params=params, act_order=True, blocksize=16, compute_dtype=torch.float64)
    ref = obq_reference(W, H, ls, params, order=perm.tolist())
    torch.testing.assert_close(out.deq.double(), ref, rtol=1e-6, atol=1e-9)
    manual = gptq_quantize(W[:, perm], H[perm][:, perm], ls, params=params, blocksize=16, compute_dtype=torch.float64)
    inv = torch.argsort(perm)
    assert torch.equal(out.codes, manual.codes[:, inv])


def test_gptq_dead_columns_are_zero():
    ls = get_level_set("int4")
    W, X = correlated_layer(N=8, K=32, T=300, seed=3)
    X[:, [3, 17]] = 0
    H = hessian_of(X)
    out = gptq_quantize(W, H, ls, compute_dtype=torch.float64)
    assert torch.all(out.deq[:, [3, 17]] == 0)
    ref = obq_reference(W, H, ls, out.params)
    torch.testing.assert_close(out.deq.double(), ref, rtol=1e-6, atol=1e-9)


def test_gptq_singular_hessian_retries_with_warning():
    ls = get_level_set("mnz")
    W, _ = correlated_layer(N=6, K=16, seed=4)
    H = torch.ones(16, 16, dtype=torch.float64)  # rank one: Cholesky fails without damping
    with pytest.warns(RuntimeWarning, match="not positive definite"):
        out = gptq_quantize(W, H, ls, damp=0.0)
    assert out.damp_used > 0
    assert torch.isfinite(out.deq).all()


def test_gptq_indefinite_hessian_raises_after_retries():
    ls = get_level_set("mnz")
    W = torch.randn(4, 2, dtype=torch.float64)
    H = torch.tensor([[1.0, 1000.0], [1000.0, 1.0]], dtype=torch.float64)
    with pytest.warns(RuntimeWarning):
        with pytest.raises(QiftError, match="Cholesky"):
            gptq_quantize(W, H, ls)


def test_gptq_bad_shapes():
    ls = get_level_set("mnz")
    with pytest.raises(QiftError):
        gptq_quantize(torch.randn(4, 8), torch.eye(7), ls)


@pytest.mark.parametrize("name", ALL_SETS)
def test_rtn_is_nearest_level(name):
    ls = get_level_set(name)
    W, _ = correlated_layer(N=16, K=24, seed=5)
    r = rtn_quantize(W, ls, "maxabs")
    ref = torch.stack([brute_round(W[:, k], ls, r.params) for k in range(W.shape[1])], dim=1)
    torch.testing.assert_close(r.deq.double(), ref, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("name", ALL_SETS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_column_quantizer_matches_levels_quantize(name, dtype):
    from qift_hw.algo.gptq import _ColumnQuantizer
    from qift_hw.core.levels import quantize

    ls = get_level_set(name)
    W = torch.randn(64, 40, dtype=dtype, generator=torch.Generator().manual_seed(6))
    params = fit_params(W, ls)
    codes, deq = quantize(W, ls, params)
    cq = _ColumnQuantizer(ls, params, dtype, W.device)
    for k in range(W.shape[1]):
        c, q = cq(W[:, k])
        assert torch.equal(c, codes[:, k]) and torch.equal(q, deq[:, k])
