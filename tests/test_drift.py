"""Drift of a quantized model from its own float weights: per-layer residual-stream distance against the
hidden states transformers returns, NLLs against the evaluator, and the error's per-channel offset share against
a direct float64 computation from hooked inputs."""

import copy

import pytest
import torch

from qift_hw.algo.config import QuantConfig
from qift_hw.algo.evaluate import window_nlls
from qift_hw.algo.models import tiny_llama
from qift_hw.algo.qmodel import iter_qlinears
from qift_hw.algo.quantize import quantize_model
from qift_hw.core.errors import QiftError
from qift_hw.study.drift import float_weights, layer_drift, offset_share, quantized_linears

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def quantized():
    model = tiny_llama(seed=5, layers=3)
    cfg = QuantConfig(levels="std", method="rtn", w2_layers="all", a_bits=4, kv_bits=4, scale_method="maxabs")
    quantize_model(model, None, cfg, progress=False)
    windows = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(3))
    return model, windows


def _hidden(model, windows):
    """Decoder-layer outputs from transformers' own output_hidden_states (all but the last, which is normed)."""
    with torch.no_grad():
        return [torch.cat([model(w[None], output_hidden_states=True).hidden_states[i + 1] for w in windows])
                for i in range(len(model.model.layers) - 1)]


def test_layer_drift_matches_transformers_hidden_states(quantized):
    model, windows = quantized
    got = layer_drift(model, windows)
    reference = copy.deepcopy(model)
    for lin in quantized_linears(reference):
        lin.set_qweight(None)
    hq, hf = _hidden(model, windows), _hidden(reference, windows)
    for i, (q, f) in enumerate(zip(hq, hf)):
        want = float((q.double() - f.double()).norm() / f.double().norm())
        assert want > 1e-3 and got["drift"][i] == pytest.approx(want, rel=1e-5)
    assert got["nll_quant"] == pytest.approx(window_nlls(model, windows, progress=False).tolist(), rel=1e-9)
    assert got["nll_float"] == pytest.approx(window_nlls(reference, windows, progress=False).tolist(), rel=1e-9)
    assert got["nll_float"] != got["nll_quant"]
    assert all(lin.qweight is not None for lin in quantized_linears(model))  # restored after float_weights


def test_offset_share_matches_a_direct_computation(quantized):
    model, windows = quantized
    got = offset_share(model, windows)
    inputs: dict[str, list[torch.Tensor]] = {}
    hooks = [lin.register_forward_pre_hook(lambda m, a: inputs.setdefault(m.name, []).append(
        m.transform_input(a[0]).reshape(-1, m.in_features))) for lin in quantized_linears(model)]
    try:
        with torch.no_grad():
            for w in windows:
                model(w[None])
    finally:
        for h in hooks:
            h.remove()
    assert set(got) == set(inputs)
    for lin in quantized_linears(model):
        x = torch.cat(inputs[lin.name]).double()
        err = (x @ (lin.qweight.double() - lin.weight.double()).T).detach().numpy()
        want = err.shape[0] * (err.mean(0) ** 2).sum() / (err ** 2).sum()
        assert 0 < want < 1 and got[lin.name] == pytest.approx(want, rel=1e-6)


def test_a_pure_offset_error_has_share_one(quantized):
    """A weight error on the constant input of a bias-like column: every token sees the same error, share 1."""
    model, windows = quantized
    m = copy.deepcopy(model)
    lin = quantized_linears(m)[0]
    x_const = torch.ones(lin.in_features)
    lin.transform_input = lambda x: x_const.expand_as(x).clone()
    lin.qweight = lin.weight + 0.01 * torch.randn(lin.weight.shape, generator=torch.Generator().manual_seed(0))
    assert offset_share(m, windows)[lin.name] == pytest.approx(1.0, rel=1e-9)


def test_models_without_float_weights_are_refused(quantized):
    model, windows = quantized
    plain = copy.deepcopy(model)
    for lin in quantized_linears(plain):
        lin.set_qweight(None)
    with pytest.raises(QiftError, match="no quantized linear"):
        layer_drift(plain, windows)
    loaded_like = copy.deepcopy(model)
    for lin in quantized_linears(loaded_like):
        lin.weight.data.copy_(lin.qweight)
    with pytest.raises(QiftError, match="no float weights"):
        offset_share(loaded_like, windows)
    with float_weights(model):
        assert all(lin.qweight is None for _, lin in iter_qlinears(model))
