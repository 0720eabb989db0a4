"""Where a quantized model's error grows, measured on held-out text against its own float weights.

A model quantized by the pipeline keeps its rotated float weight in each QLinear's ``weight`` and the
dequantized one in ``qweight``, so the same model with its qweights switched off (`float_weights`) is the exact
float reference with the same rotation and the same A4/KV4 forward. Two measures:

- `layer_drift`: the relative distance of each decoder layer's output (the residual stream) from the reference's,
  ``||h_q - h_f|| / ||h_f||``, and both models' per-window NLL: where the error grows and by how much.
- `offset_share`: for each quantized linear, on its inputs in the quantized model, the share of its weight error's
  output energy ``||X (Wq - W)^T||^2`` that is a constant per output channel (the mean over tokens):
  ``T ||mean_t E||^2 / ||E||^2``. A one-sided clip (all clipped weights on one side of their level) gives the
  error a systematic offset that a symmetric clip does not.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from qift_hw.algo.capture import capturing, decoder_layers, until_stopped
from qift_hw.algo.evaluate import window_nlls
from qift_hw.algo.qmodel import iter_qlinears
from qift_hw.core.errors import QiftError


def quantized_linears(model: nn.Module) -> list:
    """The model's QLinears that hold a quantized weight, in forward order; QiftError when there is none or when
    no linear kept a float weight apart from it (a model rebuilt from a checkpoint has only the quantized one)."""
    out = [lin for _, lin in iter_qlinears(model) if lin.qweight is not None]
    if not out:
        raise QiftError("the model has no quantized linear; quantize it first (quantize_model)")
    if all(torch.equal(lin.weight, lin.qweight) for lin in out):
        raise QiftError("the model keeps no float weights beside its quantized ones (a loaded checkpoint?); "
                        "quantize it in this process (quantize_model, or a run's per-layer checkpoints)")
    return out


@contextmanager
def float_weights(model: nn.Module) -> Iterator[None]:
    """Inside the block every QLinear multiplies by its float weight (activation and KV quantization stay)."""
    saved = [(lin, lin.qweight) for lin in quantized_linears(model)]
    for lin, _ in saved:
        lin.qweight = None
    try:
        yield
    finally:
        for lin, q in saved:
            lin.qweight = q


def _layer_outputs(model: nn.Module, sink) -> list:
    def hook(index: int):
        def record(_module, _args, out):
            sink(index, out[0] if isinstance(out, tuple) else out)
        return record

    return [layer.register_forward_hook(hook(i)) for i, layer in enumerate(decoder_layers(model))]


@torch.no_grad()
def layer_drift(model: nn.Module, windows: torch.Tensor) -> dict:
    """Per decoder layer, ``||h_q - h_f|| / ||h_f||`` over all tokens of `windows` [n, seqlen] (batch of one), and
    the per-window NLL of the quantized model and of its float reference."""
    n_layers = len(decoder_layers(model))
    ref: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]
    diff2 = torch.zeros(n_layers, dtype=torch.float64)
    ref2 = torch.zeros(n_layers, dtype=torch.float64)

    def keep(i: int, h: torch.Tensor) -> None:
        ref[i].append(h.detach().clone())

    def compare(i: int, h: torch.Tensor) -> None:
        r = ref[i].pop(0)
        diff2[i] += (h.double() - r.double()).pow(2).sum()
        ref2[i] += r.double().pow(2).sum()

    hooks = _layer_outputs(model, keep)
    try:
        with float_weights(model):
            nll_float = window_nlls(model, windows, progress=False)
    finally:
        for h in hooks:
            h.remove()
    hooks = _layer_outputs(model, compare)
    try:
        nll_quant = window_nlls(model, windows, progress=False)
    finally:
        for h in hooks:
            h.remove()
    return {"drift": (diff2 / ref2).sqrt().tolist(), "nll_float": [float(x) for x in nll_float],
            "nll_quant": [float(x) for x in nll_quant]}


@torch.no_grad()
def offset_share(model: nn.Module, windows: torch.Tensor) -> dict[str, float]:
    """Per quantized linear (by name), the share of its weight error's output energy that is a per-channel constant
    over the tokens of `windows`, on the inputs it sees in the quantized model."""
    linears = quantized_linears(model)
    sums = [torch.zeros(lin.out_features, dtype=torch.float64) for lin in linears]
    energy = torch.zeros(len(linears), dtype=torch.float64)
    tokens = [0]

    def sink(k: int):
        lin = linears[k]

        def add(x: torch.Tensor) -> None:
            err = (x.double() @ (lin.qweight.double() - lin.weight.double()).T)
            sums[k] += err.sum(0)
            energy[k] += err.pow(2).sum()
            if k == 0:
                tokens[0] += x.shape[0]
        return add

    with capturing(linears, [sink(k) for k in range(len(linears))]):
        for w in windows:
            until_stopped(model, w[None], use_cache=False)
    t = tokens[0]
    return {lin.name: float((s.pow(2).sum() / t) / e) if e > 0 else 0.0
            for lin, s, e in zip(linears, sums, energy)}
