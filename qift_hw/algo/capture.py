"""Calibration capture: run decoder layers on calibration batches and take the inputs a layer or linear sees.

A capture ends the forward pass as soon as the wanted input is in hand, by raising `StopForward` from the hook;
`until_stopped` runs a forward and absorbs it. Inputs of a linear come from its `QLinear.capture` hook, so they
are exactly what the weight is multiplied with (after the online Hadamard and the activation quantizer).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

Batch = tuple[torch.Tensor, dict]
"""A decoder layer's input: hidden states [batch, seq, hidden] and the keyword arguments of its forward."""


class StopForward(Exception):
    """Raised by a capture hook to end a forward pass once the wanted input was seen."""


def until_stopped(fn: Callable, *args, **kwargs):
    """fn(*args, **kwargs), or None if a capture hook stopped it."""
    try:
        return fn(*args, **kwargs)
    except StopForward:
        return None


@contextmanager
def capturing(linears: Sequence[nn.Module], sinks: Sequence[Callable[[torch.Tensor], None]]) -> Iterator[None]:
    """Inside the block each QLinear of `linears` hands its 2-D input to its sink; the last one then stops the
    forward (list the linears in the order the forward reaches them)."""
    last = len(linears) - 1

    def hook(i: int) -> Callable[[torch.Tensor], None]:
        def capture(x: torch.Tensor) -> None:
            sinks[i](x)
            if i == last:
                raise StopForward
        return capture

    for i, lin in enumerate(linears):
        lin.capture = hook(i)
    try:
        yield
    finally:
        for lin in linears:
            lin.capture = None


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    return model.model.layers


def layer_forward(layer: nn.Module, x: torch.Tensor, kw: dict) -> torch.Tensor:
    """The hidden states a decoder layer outputs for input x (transformers may return a tuple)."""
    out = layer(x, **kw)
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def propagate(layer: nn.Module, batches: list[Batch]) -> list[Batch]:
    """The next layer's inputs: this layer's outputs with the same keyword arguments."""
    return [(layer_forward(layer, x, kw), kw) for x, kw in batches]


class _Catcher(nn.Module):
    """Stands in for decoder layer 0 to record its input and keyword arguments, then stops the forward."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer
        if hasattr(layer, "attention_type"):
            self.attention_type = layer.attention_type
        self.seen: list[Batch] = []

    def forward(self, hidden_states, *args, **kwargs):
        kwargs = {k: v for k, v in kwargs.items() if k not in ("past_key_values", "past_key_value", "use_cache")}
        self.seen.append((hidden_states.detach(), kwargs))
        raise StopForward


@torch.no_grad()
def capture_layer_inputs(model: nn.Module, windows: torch.Tensor, batch_size: int, device) -> list[Batch]:
    """Inputs (hidden states and keyword arguments) of decoder layer 0 for each batch of windows."""
    layers = decoder_layers(model)
    catcher = _Catcher(layers[0])
    layers[0] = catcher
    try:
        for b0 in range(0, windows.shape[0], batch_size):
            until_stopped(model, input_ids=windows[b0 : b0 + batch_size].to(device), use_cache=False)
    finally:
        layers[0] = catcher.layer
    return catcher.seen


@torch.no_grad()
def capture_linear_inputs(model: nn.Module, linear: nn.Module, windows: torch.Tensor) -> torch.Tensor:
    """The 2-D inputs [tokens, in_features] of one QLinear of `model`, one window at a time, concatenated."""
    got: list[torch.Tensor] = []
    with capturing([linear], [lambda x: got.append(x.detach().clone())]):
        for w in windows:
            until_stopped(model, w[None])
    return torch.cat(got)
