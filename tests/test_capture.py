"""Calibration capture: a linear's captured input is what its weight is multiplied with, and the forward stops."""

import torch

from qift_hw.algo.capture import capture_linear_inputs, capturing, until_stopped
from qift_hw.algo.config import QuantConfig
from qift_hw.algo.models import tiny_llama
from qift_hw.algo.prepare import prepare_model

torch.set_num_threads(2)


def _model():
    model = tiny_llama(seed=2, layers=2, biases=True)
    prepare_model(model, QuantConfig(a_bits=4, kv_bits=4))
    return model


def _windows(n, seqlen=16):
    return torch.randint(0, 256, (n, seqlen), generator=torch.Generator().manual_seed(5))


def _count_calls(module, calls, key):
    return module.register_forward_pre_hook(lambda *_: calls.__setitem__(key, calls.get(key, 0) + 1))


def test_captured_inputs_equal_the_transformed_inputs_of_a_plain_forward():
    model, w = _model(), _windows(3)
    lin = model.model.layers[1].mlp.down_proj  # behind the online Hadamard and the INT4 quantizer
    seen = []
    hook = lin.register_forward_pre_hook(
        lambda m, args: seen.append(m.transform_input(args[0]).reshape(-1, m.in_features)))
    with torch.no_grad():
        for window in w:
            model(window[None])
    hook.remove()

    calls = {}
    handle = _count_calls(model.lm_head, calls, "lm_head")
    got = capture_linear_inputs(model, lin, w)
    handle.remove()
    assert got.shape == (3 * 16, lin.in_features)
    assert torch.equal(got, torch.cat(seen))
    assert calls == {} and lin.capture is None  # stopped before the head; hook removed


def test_capturing_hands_each_input_to_its_sink_and_stops_after_the_last():
    model = _model()
    layer = model.model.layers[0]
    q, gate, down = layer.self_attn.q_proj, layer.mlp.gate_proj, layer.mlp.down_proj
    order, calls = [], {}
    handle = _count_calls(down, calls, "down")
    with torch.no_grad(), capturing([q, gate], [lambda x: order.append(("q", x.shape)),
                                               lambda x: order.append(("gate", x.shape))]):
        assert until_stopped(model, _windows(1)) is None
    handle.remove()
    assert order == [("q", (16, q.in_features)), ("gate", (16, gate.in_features))]
    assert calls == {} and q.capture is None and gate.capture is None
