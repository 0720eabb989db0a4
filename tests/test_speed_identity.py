"""Speed rewrites that must compute the same floats as the code they replaced.

Each test compares the rewritten function with (a) an independent formula (a dense float64 product, a plain sum)
within rounding, and (b) the previous code path, kept here as a reference function, with torch.equal: the rewrite
claims identical values, not merely close ones.
"""

from __future__ import annotations

import math

import pytest
import torch

from qift_hw.core.hadamard import _k_tensor, hadamard_matrix_float, hadamard_transform, split_order


def _old_walsh_hadamard(x: torch.Tensor) -> torch.Tensor:
    """The previous butterfly: over dim 1 of (rows, m, inner), top half + / - bottom half, result as lowest bit."""
    rows, m, inner = x.shape
    if m == 1:
        return x.clone(memory_format=torch.contiguous_format)
    for _ in range(m.bit_length() - 1):
        top, bottom = x[:, : m // 2], x[:, m // 2 :]
        out = torch.empty(rows, m // 2, 2, inner, dtype=x.dtype, device=x.device)
        torch.add(top, bottom, out=out[:, :, 0])
        torch.sub(top, bottom, out=out[:, :, 1])
        x = out.view(rows, m, inner)
    return x


def _old_hadamard_transform(x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """The previous hadamard_transform (rows-major layout) for float and small-integer tensors."""
    n = x.shape[-1]
    k, m = split_order(n)
    rows = x.numel() // n
    if k == 1:
        y = _old_walsh_hadamard(x.reshape(rows, m, 1))
        if normalize:
            y.mul_(1.0 / math.sqrt(n))
        return y.view(x.shape)
    hk = _k_tensor(k, x.dtype, x.device)
    if normalize:
        hk = hk * (1.0 / math.sqrt(n))
    z = _old_walsh_hadamard(x.reshape(rows, k, m).transpose(1, 2))
    if z.is_floating_point():
        mixed = (z.reshape(rows * m, k) @ hk.T).view(rows, m, k)
    else:
        mixed = (z.reshape(rows * m, k).to(torch.float64) @ hk.to(torch.float64).T).to(z.dtype).view(rows, m, k)
    return mixed.transpose(1, 2).reshape(x.shape)


SHAPES = [(1, 64), (3, 1, 64), (5, 1536), (37, 576), (2, 9, 33, 64), (513, 1536), (4096, 1536), (1, 9, 2048, 64),
          (7, 12), (3, 20), (4, 28), (6, 8), (2, 1), (1, 2), (0, 576)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hadamard_transform_equals_previous_code(shape, dtype):
    gen = torch.Generator().manual_seed(sum(shape))
    x = (torch.randn(shape, generator=gen) * 3).to(dtype)
    x_before = x.clone()
    for normalize in (True, False):
        new = hadamard_transform(x, normalize=normalize)
        assert torch.equal(new, _old_hadamard_transform(x, normalize=normalize))
        assert torch.equal(x, x_before), "the input must not be modified"
        assert new.data_ptr() != x.data_ptr() or x.numel() == 0
        n = shape[-1]
        dense = x.double() @ hadamard_matrix_float(n, torch.float64, normalize=normalize).T
        tol = 1e-4 if dtype == torch.float32 else 1e-11
        assert torch.allclose(new.double(), dense, rtol=tol, atol=tol * math.sqrt(n) * 3)


@pytest.mark.parametrize("shape", [(5, 1536), (4, 64), (3, 12)])
def test_hadamard_transform_integers_equal_previous_code(shape):
    x = torch.randint(-30000, 30000, shape, generator=torch.Generator().manual_seed(1), dtype=torch.int64)
    new = hadamard_transform(x, normalize=False)
    assert torch.equal(new, _old_hadamard_transform(x, normalize=False))
    assert torch.equal(new, x @ hadamard_matrix_float(shape[-1], torch.float64).long().T)


def test_hadamard_transform_non_contiguous_input():
    x = torch.randn(64, 40).t()  # (40, 64) transposed view
    assert torch.equal(hadamard_transform(x), _old_hadamard_transform(x.contiguous()))


def test_hadamard_transform_keeps_gradients():
    x = torch.randn(3, 1536, dtype=torch.float64, requires_grad=True)
    y = hadamard_transform(x)
    y.sum().backward()
    h = hadamard_matrix_float(1536, torch.float64, normalize=True)
    assert torch.allclose(x.grad, h.sum(0).expand(3, -1), atol=1e-12)
    assert torch.equal(y.detach(), _old_hadamard_transform(x.detach()))


def _tiny_quantized_model(rotated: bool):
    from qift_hw.algo.models import tiny_llama
    from qift_hw.algo.qmodel import quantize_model_forward
    from qift_hw.algo.rotation import rotate_model

    model = tiny_llama(seed=5, hidden=48, intermediate=96, heads=4, kv_heads=2, layers=2)
    if rotated:
        rotate_model(model, seed=0)
    quantize_model_forward(model, a_bits=4, kv_bits=4)
    return model


@pytest.mark.parametrize("rotated", [False, True])
def test_shared_input_transform_gives_the_same_logits_with_fewer_transforms(rotated, monkeypatch):
    from qift_hw.algo.qmodel import QLinear, iter_qlinears

    model = _tiny_quantized_model(rotated)
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    calls = []
    plain = QLinear.transform_input
    monkeypatch.setattr(QLinear, "transform_input", lambda self, x: (calls.append(self.name), plain(self, x))[1])
    with torch.no_grad():
        shared = model(input_ids=ids, use_cache=False).logits
        n_shared = len(calls)
        kept = {name: q.shared_input for name, q in iter_qlinears(model)}
        for _, q in iter_qlinears(model):
            q.shared_input = None  # the previous behaviour: every linear transforms its own input
        calls.clear()
        alone = model(input_ids=ids, use_cache=False).logits
    assert torch.equal(shared, alone)
    assert len(calls) == 14 and n_shared == 2 * 4  # per layer q/k/v once, o, gate/up once, down
    grouped = [s for name, s in kept.items() if not name.endswith(("o_proj", "down_proj"))]
    assert len(grouped) == 10 and all(s is not None and s.src is None for s in grouped), "dropped after last use"


def test_shared_input_is_not_reused_after_an_in_place_change():
    from qift_hw.algo.qmodel import SharedInput

    shared = SharedInput(3)
    x = torch.randn(4, 8)
    out = x * 2
    shared.put(x, ("k",), out)
    assert shared.get(x.clone(), ("k",)) is None  # another tensor with the same values
    assert shared.get(x, ("other settings",)) is None
    x.add_(1)
    assert shared.get(x, ("k",)) is None
    shared.put(x, ("k",), out)
    assert shared.get(x, ("k",)) is out and shared.get(x, ("k",)) is out
    assert shared.src is None  # used by both other members: dropped


@pytest.mark.parametrize("shape", [(7, 1536), (3, 576), (5, 64), (4, 12), (0, 1536)])
def test_unit_quantize_equals_the_hadamard_unit(shape):
    from qift_hw.bridge.sim_backend import unit_quantize
    from qift_hw.sim.hadamard_unit import hadamard_quantize

    gen = torch.Generator().manual_seed(shape[-1])
    x = torch.randn(shape, generator=gen) * torch.logspace(-3, 3, shape[0]).reshape(-1, 1)
    if shape[0] > 2:
        x[1] = 0.0
        x[2, ::3] = 0.0
    q_new, s_new = unit_quantize(x, 4, 0.9)
    q_ref, s_ref = hadamard_quantize(x, 4, 0.9)
    assert torch.equal(q_new, q_ref) and torch.equal(s_new, s_ref)


def _simlinear_forward(q, sim):
    """The previous backend forward: capture, then SimLinear.__call__ on every linear separately."""
    def forward(x):
        if q.capture is not None:
            q.capture(q.transform_input(x).reshape(-1, x.shape[-1]))
        return sim(x)
    return forward


@pytest.mark.parametrize("hadamard", ["unit", "float"])
def test_sim_backend_forward_equals_simlinear_calls(hadamard):
    from qift_hw.algo.config import QuantConfig
    from qift_hw.algo.models import tiny_llama
    from qift_hw.algo.qmodel import iter_qlinears
    from qift_hw.algo.quantize import quantize_model
    from qift_hw.bridge.sim_backend import SIM_ATTR, install_sim_backend, remove_sim_backend

    model = tiny_llama(seed=6, layers=2, hidden=48, intermediate=96)
    qm = quantize_model(model, None, QuantConfig(levels="pot_mnz", method="rtn"), progress=False)
    ids = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert len(install_sim_backend(model, qm.weights, hadamard=hadamard)) == 14
        sims = {name: getattr(q, SIM_ATTR) for name, q in iter_qlinears(model)}
        new = model(input_ids=ids, use_cache=False).logits
        for _, q in iter_qlinears(model):
            q.forward = _simlinear_forward(q, getattr(q, SIM_ATTR))
        old = model(input_ids=ids, use_cache=False).logits
        assert remove_sim_backend(model) == 14
        install_sim_backend(model, qm.weights, hadamard=hadamard)
        assert all(getattr(q, SIM_ATTR) is sims[name] for name, q in iter_qlinears(model)), "prepared once"
        remove_sim_backend(model)
        ql = qm.weights["model.layers.0.self_attn.q_proj"]
        ql.params.scale.mul_(2)
        install_sim_backend(model, qm.weights, hadamard=hadamard)
        assert getattr(model.model.layers[0].self_attn.q_proj, SIM_ATTR) is not sims["model.layers.0.self_attn.q_proj"]
        remove_sim_backend(model)
    assert torch.equal(new, old)


@pytest.mark.parametrize("shape", [(4096, 1536), (1000, 576), (300, 700), (50, 385)])
def test_gram_equals_the_full_product(shape):
    from qift_hw.algo import gptq

    x = torch.randn(*shape, generator=torch.Generator().manual_seed(shape[1]))
    g = gptq.gram(x)
    assert torch.equal(g, x.T @ x)
    ref = x.double().T @ x.double()
    tol = dict(rtol=1e-4, atol=1e-3 * shape[0] ** 0.5)
    assert torch.allclose(g.double(), ref, **tol)
    blocked = gptq._gram_blocked(x, 128)
    assert torch.allclose(blocked.double(), ref, **tol) and torch.equal(blocked, blocked.T)


def test_gram_falls_back_to_the_full_product_when_the_blocks_differ(monkeypatch):
    from qift_hw.algo import gptq

    calls = []

    def off_by_one_ulp(x, block):
        calls.append(block)
        out = x.T @ x
        out[0, -1] = torch.nextafter(out[0, -1], torch.tensor(float("inf")))
        return out

    monkeypatch.setattr(gptq, "_gram_blocked", off_by_one_ulp)
    monkeypatch.setattr(gptq, "_gram_blocked_ok", {})
    x = torch.randn(97, 500, generator=torch.Generator().manual_seed(1))
    assert torch.equal(gptq.gram(x), x.T @ x)
    assert torch.equal(gptq.gram(x), x.T @ x)
    assert len(calls) == 1
    assert list(gptq._gram_blocked_ok.values()) == [False]


def _old_gptq_columns(W, Hinv, quant, blocksize):
    """The previous column loop: columns of W as columns, strided."""
    N, K = W.shape
    codes = torch.zeros(N, K, dtype=torch.uint8)
    loss = torch.zeros(N, dtype=W.dtype)
    for i1 in range(0, K, blocksize):
        i2 = min(i1 + blocksize, K)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            w = W1[:, i]
            d = Hinv1[i, i]
            c, q = quant(w)
            codes[:, i1 + i] = c
            err = (w - q) / d
            loss += (w - q) ** 2 / d**2 / 2
            W1[:, i:] -= err.unsqueeze(1) * Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return codes, loss


@pytest.mark.parametrize("level_set,N,K,blocksize", [("mnz", 96, 200, 64), ("asym", 40, 130, 128),
                                                     ("pot_mnz", 33, 77, 16)])
def test_gptq_column_loop_equals_previous_code(level_set, N, K, blocksize):
    from qift_hw.algo import gptq
    from qift_hw.core.levels import fit_params, get_level_set

    gen = torch.Generator().manual_seed(K)
    W = torch.randn(N, K, generator=gen)
    X = torch.randn(3 * K, K, generator=gen) * torch.rand(K, generator=gen)
    H = (X.T @ X).double() * 2 / X.shape[0] + 0.01 * torch.eye(K, dtype=torch.float64)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True).float()
    ls = get_level_set(level_set)
    quant = gptq._ColumnQuantizer(ls, fit_params(W, ls), torch.float32, "cpu")
    W_old, W_new = W.clone(), W.clone()
    codes_old, loss_old = _old_gptq_columns(W_old, Hinv, quant, blocksize)
    codes_new, loss_new = gptq._gptq_columns(W_new, Hinv, quant, blocksize)
    assert torch.equal(codes_new, codes_old) and torch.equal(loss_new, loss_old) and torch.equal(W_new, W_old)
    assert codes_new.is_contiguous() and codes_new.shape == (N, K)


@pytest.mark.parametrize("shape", [(1, 2048, 576), (7, 1536), (1, 3, 50, 64), (4, 0, 8)])
def test_fake_quant_equals_the_aminmax_version(shape):
    """formats' per-row min/max: two reductions instead of torch.aminmax (which was much slower on CPU)."""
    from qift_hw.core import formats

    gen = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(*shape, generator=gen) * torch.rand(*shape[:-1], 1, generator=gen) * 5
    if x.numel():
        x.view(-1, shape[-1])[0] = 0.0

    def old_act(x, bits, clip):
        qmax = 2 ** (bits - 1) - 1
        lo, hi = torch.aminmax(x, dim=-1, keepdim=True) if x.numel() else (x.amin(-1, True), x.amax(-1, True))
        scale = formats._amax_scale(torch.maximum(hi, lo.neg_()), qmax, clip)
        return torch.div(x, scale).round_().clamp_(-qmax - 1, qmax).mul_(scale)

    def old_kv(x, bits, clip):
        qmax = 2**bits - 1
        lo, hi = torch.aminmax(x, dim=-1, keepdim=True) if x.numel() else (x.amin(-1, True), x.amax(-1, True))
        xmax, xmin = hi.clamp_(min=0).mul_(clip), lo.clamp_(max=0).mul_(clip)
        scale = (xmax - xmin) / qmax
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero = torch.round(-xmin / scale)
        q = torch.div(x, scale).round_().add_(zero).clamp_(0, qmax)
        return q.sub_(zero).mul_(scale)

    assert torch.equal(formats.fake_quant_act(x, 4, 0.9), old_act(x, 4, 0.9))
    assert torch.equal(formats.fake_quant_kv(x, 4, 0.95), old_kv(x, 4, 0.95))
    if x.numel():
        lo, hi = formats._row_min_max(x)
        assert torch.equal(torch.maximum(hi, -lo), x.abs().amax(-1, keepdim=True))
