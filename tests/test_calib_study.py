"""Calibration-size study helpers against independent numpy/direct computations on small random matrices."""

import math

import numpy as np
import pytest
import torch

from qift_hw.algo.gptq import gptq_quantize
from qift_hw.core.errors import QiftError
from qift_hw.core.levels import get_level_set
from qift_hw.study.calib_study import clip_stats, feedback_weights, hessian_spectrum, layer_output_error


def _hessian(tokens: int, k: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((tokens, k)) * np.linspace(0.1, 3.0, k)
    return 2.0 / tokens * X.T @ X


def test_spectrum_matches_numpy_full_rank():
    H = _hessian(200, 12)
    got = hessian_spectrum(torch.from_numpy(H), damp=0.01)
    ev = np.linalg.eigvalsh(H)
    shift = 0.01 * np.mean(np.diag(H))
    assert got["lambda_max"] == pytest.approx(ev.max(), rel=1e-10)
    assert got["lambda_min"] == pytest.approx(ev.min(), rel=1e-8)
    assert got["cond"] == pytest.approx(np.linalg.cond(H), rel=1e-6)
    assert got["cond_damped"] == pytest.approx(np.linalg.cond(H + shift * np.eye(12)), rel=1e-6)
    assert got["n_below_damp"] == int(np.sum(ev < shift))
    assert got["n_near_zero"] == 0


def test_spectrum_counts_rank_deficiency():
    H = _hessian(5, 12, seed=1)  # 5 tokens in 12 dimensions: rank 5, seven zero eigenvalues
    got = hessian_spectrum(torch.from_numpy(H), damp=0.01, rel_tol=1e-9)
    assert got["n_near_zero"] == 12 - np.linalg.matrix_rank(H) == 7
    assert got["cond_damped"] == pytest.approx(np.linalg.cond(H + 0.01 * np.mean(np.diag(H)) * np.eye(12)),
                                               rel=1e-6)


def test_spectrum_rejects_non_square():
    with pytest.raises(QiftError, match="square"):
        hessian_spectrum(torch.zeros(3, 4))


def test_layer_error_is_the_direct_relative_norm():
    rng = np.random.default_rng(2)
    W, Wq, X = rng.standard_normal((6, 9)), rng.standard_normal((6, 9)), rng.standard_normal((40, 9))
    ref = np.sqrt(sum(((W[n] - Wq[n]) @ X[t]) ** 2 for n in range(6) for t in range(40))
                  / sum((W[n] @ X[t]) ** 2 for n in range(6) for t in range(40)))
    got = layer_output_error(torch.from_numpy(W).float(), torch.from_numpy(Wq).float(), torch.from_numpy(X).float())
    assert got == pytest.approx(ref, rel=1e-5)
    assert layer_output_error(torch.from_numpy(W), torch.from_numpy(W), torch.from_numpy(X)) == 0.0


def _stepped_gptq(W: np.ndarray, H: np.ndarray, damp: float, quant) -> tuple[np.ndarray, np.ndarray]:
    """GPTQ one column at a time from its definition (blocksize 1): returns the pre-rounding weights and Q."""
    K = W.shape[1]
    Hinv = np.linalg.inv(H + damp * np.eye(K))
    U = np.linalg.cholesky(Hinv).T
    W = W.copy()
    pre, Q = np.zeros_like(W), np.zeros_like(W)
    for i in range(K):
        pre[:, i] = W[:, i]
        Q[:, i] = quant(W[:, i])
        err = (W[:, i] - Q[:, i]) / U[i, i]
        W[:, i:] -= np.outer(err, U[i, i:])
    return pre, Q


def test_feedback_weights_recover_the_stepped_gptq_columns():
    rng = np.random.default_rng(3)
    K, N = 10, 5
    H = _hessian(60, K, seed=4)
    W = rng.standard_normal((N, K)).astype(np.float32).astype(np.float64)
    ls = get_level_set("std")
    res = gptq_quantize(torch.from_numpy(W), torch.from_numpy(H), ls, blocksize=4,
                        compute_dtype=torch.float64)
    scale = res.params.scale.double().numpy()
    levels = ls.levels

    def quant(col):
        u = col / scale[:, 0]
        return levels[np.argmin(np.abs(u[:, None] - levels[None]), axis=1)] * scale[:, 0]

    pre, Q = _stepped_gptq(W, H, res.damp_used, quant)
    np.testing.assert_allclose(res.deq.double().numpy(), Q, atol=1e-9)
    got = feedback_weights(torch.from_numpy(W), res.deq, torch.from_numpy(H), res.damp_used).numpy()
    np.testing.assert_allclose(got, pre, rtol=1e-7, atol=1e-9)


def test_clip_stats_counts_weights_beyond_the_outer_levels():
    ls = get_level_set("std")  # levels -2..1
    W = torch.tensor([[3.0, 1.2, -0.4, -2.5]], dtype=torch.float64)
    s = clip_stats(W, torch.ones(1, 1, dtype=torch.float64), ls)
    assert s["above_top"] == 0.5 and s["below_bottom"] == 0.25
    err2 = [(3 - 1) ** 2, 0.2**2, 0.4**2, 0.5**2]
    assert s["clip_err_share"] == pytest.approx((err2[0] + err2[1] + err2[3]) / sum(err2))
    assert s["rounding_rel_err"] == pytest.approx(math.sqrt(sum(err2) / (9 + 1.44 + 0.16 + 6.25)))


def test_capture_snapshots_are_the_hessians_of_the_first_windows():
    from qift_hw.algo.capture import capture_linear_inputs
    from qift_hw.algo.config import QuantConfig
    from qift_hw.algo.models import tiny_llama
    from qift_hw.algo.prepare import prepare_model
    from qift_hw.study.calib_study import capture_study_inputs, pick_linears

    model = tiny_llama(seed=2, layers=2)
    prepare_model(model, QuantConfig(a_bits=4, kv_bits=4))
    gen = torch.Generator().manual_seed(5)
    calib, held = torch.randint(0, 256, (3, 16), generator=gen), torch.randint(0, 256, (2, 16), generator=gen)
    lins = pick_linears(model, [1, 0], ["down_proj", "q_proj"])
    assert [lin.name for lin in lins] == [f"model.layers.{i}.{k}" for i in (0, 1)
                                         for k in ("self_attn.q_proj", "mlp.down_proj")]
    got = capture_study_inputs(model, lins, calib, held, [1, 3])
    for c, lin in zip(got, lins):
        for n in (1, 3):
            X = capture_linear_inputs(model, lin, calib[:n]).double()
            torch.testing.assert_close(c.hessians[n], 2.0 / X.shape[0] * X.T @ X)
        torch.testing.assert_close(c.held_out, capture_linear_inputs(model, lin, held).float())
    with pytest.raises(QiftError, match="calibration sizes"):
        capture_study_inputs(model, lins, calib, held, [4])
    with pytest.raises(QiftError, match="layer 5"):
        pick_linears(model, [5], ["q_proj"])
    with pytest.raises(QiftError, match="unknown linear"):
        pick_linears(model, [0], ["qproj"])
