"""Per-layer W2 sensitivity for `--w2-layers sensitivity:L` (see `qift_hw.algo.mixed` for the selection)."""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from qift_hw.algo.capture import Batch, decoder_layers, layer_forward, propagate
from qift_hw.algo.config import QuantConfig
from qift_hw.algo.layer import layer_linears, quantize_layer


def first_windows(batches: list[Batch], n: int) -> list[Batch]:
    """Whole batches from the start until they hold at least `n` windows (whole, so the captured keyword
    arguments keep matching)."""
    kept, count = [], 0
    for x, kw in batches:
        if count >= n:
            break
        kept.append((x, kw))
        count += x.shape[0]
    return kept


@torch.no_grad()
def sensitivity_scores(model: nn.Module, batches: list[Batch], cfg: QuantConfig, progress: bool = True) -> list[float]:
    """Per-layer W2 cost: e(W2) - e(other), with e = ||layer(x; Wq) - layer(x; W)||^2 / ||layer(x; W)||^2.

    Each layer is quantized in isolation (one-pass GPTQ with its Hessians, or RTN) on the inputs of the
    float-weight model (activation/KV quantization as configured), measured, then restored to float.
    """
    one_pass = QuantConfig.from_dict({**cfg.to_dict(), "true_sequential": False})
    candidates = (cfg.level_set, cfg.other_level_set)
    scores = []
    layers = decoder_layers(model)
    for i in tqdm(range(len(layers)), desc="sensitivity", disable=not progress, leave=False):
        layer = layers[i]
        ref = propagate(layer, batches)
        errs = []
        for ls in candidates:
            if ls is None:
                errs.append(0.0)
                continue
            quantize_layer(layer, batches, ls, one_pass, i)
            num = den = 0.0
            for (x, kw), (y, _) in zip(batches, ref):
                yq = layer_forward(layer, x, kw)
                num += float(((yq - y).double() ** 2).sum())
                den += float((y.double() ** 2).sum())
            errs.append(num / max(den, 1e-300))
            for lin in layer_linears(layer):
                lin.set_qweight(None)
        scores.append(errs[0] - errs[1])
        batches = ref
    return scores
