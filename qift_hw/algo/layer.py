"""Quantize one decoder layer in place on its calibration inputs, group by group of linears that share an input.

Groups ({q,k,v}, {o}, {gate,up}, {down}) are quantized in forward order. True-sequential GPTQ (the default)
takes each group's Hessian from the layer run with the earlier groups already quantized; once o_proj is final
the attention output of every batch stands in for the attention in the later passes, and down_proj's input
(kept while its Hessian is accumulated) gives the layer output with one product, so no part of the layer is
computed twice. The tensors are the ones a full forward computes (same operations on the same values), so the
result is the same bit for bit. One-pass GPTQ takes every Hessian from one run of the float-weight layer; RTN
needs no calibration data.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import torch
from torch import nn
from torch.nn import functional as F

from qift_hw.algo.capture import Batch, capturing, layer_forward, until_stopped
from qift_hw.algo.config import QuantConfig
from qift_hw.algo.gptq import GPTQResult, HessianAccumulator, gptq_quantize, relative_output_error, rtn_quantize
from qift_hw.algo.quantized import QuantizedLinear
from qift_hw.core.levels import LevelSet, QParams

LINEAR_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("self_attn", ("q_proj", "k_proj", "v_proj")),
    ("self_attn", ("o_proj",)),
    ("mlp", ("gate_proj", "up_proj")),
    ("mlp", ("down_proj",)),
)
"""(owner module, linears reading the same input), in the order a decoder layer's forward reaches them."""

LayerResult = tuple[dict[str, QuantizedLinear], list[dict], list[Batch] | None]
"""Quantized weights by linear name, one record per linear, and the layer's outputs when they were computed."""


def group_linears(layer: nn.Module, owner: str, names: tuple[str, ...]) -> list[nn.Module]:
    return [getattr(getattr(layer, owner), n) for n in names]


def layer_linears(layer: nn.Module) -> list[nn.Module]:
    """Every quantized linear of a decoder layer, in LINEAR_GROUPS order."""
    return [lin for owner, names in LINEAR_GROUPS for lin in group_linears(layer, owner, names)]


def tick(timer: dict | None, key: str, t0: float) -> float:
    """Add the seconds since t0 to timer[key] (if there is a timer); returns now, the next step's t0."""
    t1 = time.perf_counter()
    if timer is not None:
        timer[key] = timer.get(key, 0.0) + t1 - t0
    return t1


def _hessian_dtype(cfg: QuantConfig) -> torch.dtype:
    return getattr(torch, cfg.hessian_dtype)


def _quantize_group(lins: list[nn.Module], H: torch.Tensor | None, level_set: LevelSet, cfg: QuantConfig,
                    prefix: str) -> tuple[list[QuantizedLinear], list[dict]]:
    """Quantize linears that share one input (GPTQ on their stacked rows: rows are independent given H) and
    install the dequantized weights."""
    W = torch.cat([lin.weight.detach() for lin in lins], dim=0).float()
    t0 = time.perf_counter()
    if cfg.method == "gptq":
        res: GPTQResult = gptq_quantize(W, H, level_set, scale_method=cfg.scale_method, blocksize=cfg.blocksize,
                                        act_order=cfg.act_order, damp=cfg.damp, name=prefix,
                                        compute_dtype=getattr(torch, cfg.gptq_dtype))
    else:
        res = rtn_quantize(W, level_set, cfg.scale_method)
    seconds = time.perf_counter() - t0
    outs, recs, r0 = [], [], 0
    for lin in lins:
        r1 = r0 + lin.out_features
        zero = None if res.params.zero is None else res.params.zero[r0:r1].clone()
        ql = QuantizedLinear(level_set, res.codes[r0:r1].clone(), QParams(res.params.scale[r0:r1].clone(), zero))
        deq = ql.dequantized()
        lin.set_qweight(deq)
        err = relative_output_error(lin.weight.detach().float(), deq, H) if H is not None else None
        outs.append(ql)
        recs.append({"name": lin.name, "level_set": level_set.name, "rel_error": err, "damp": res.damp_used,
                     "gptq_loss": res.loss, "seconds": seconds})
        r0 = r1
    return outs, recs


@contextmanager
def _forward_replaced(module: nn.Module, fn: Callable) -> Iterator[None]:
    """Run `fn` instead of `module.forward` inside the block (an instance attribute, removed afterwards)."""
    old = module.__dict__.get("forward")
    module.forward = fn
    try:
        yield
    finally:
        if old is None:
            del module.forward
        else:
            module.forward = old


@contextmanager
def _cached_parts(layer: nn.Module, attn_out: torch.Tensor | None, mlp_out: torch.Tensor | None) -> Iterator[None]:
    """Inside the block the layer's self-attention returns `attn_out` and its MLP `mlp_out` (each if not None).

    The attention result follows the transformers interface (output, attention weights).
    """
    with ExitStack() as stack:
        if attn_out is not None:
            stack.enter_context(_forward_replaced(layer.self_attn, lambda *a, **k: (attn_out, None)))
        if mlp_out is not None:
            stack.enter_context(_forward_replaced(layer.mlp, lambda *a, **k: mlp_out))
        yield


@torch.no_grad()
def _collect_hessians(layer: nn.Module, batches: list[Batch], heads: list[nn.Module], cfg: QuantConfig,
                      attn_outs: list | None = None, keep: bool = False
                      ) -> tuple[list[HessianAccumulator], list[torch.Tensor]]:
    """Run every batch through `layer` up to the last of `heads` (first linears of groups, in forward order),
    add each head's input to its Hessian and stop the forward there.

    attn_outs: per-batch attention outputs that replace the self-attention (its weights are final);
    keep: also return each batch's input of the last head ([tokens, in_features], as the weight sees it).
    """
    accs = [HessianAccumulator(h.in_features, device=torch.device(cfg.device), product_dtype=_hessian_dtype(cfg))
            for h in heads]
    kept: list[torch.Tensor] = []

    def last_sink(x: torch.Tensor) -> None:
        accs[-1].add(x)
        if keep:
            kept.append(x)

    sinks = [acc.add for acc in accs[:-1]] + [last_sink]
    with capturing(heads, sinks):
        for j, (x, kw) in enumerate(batches):
            with _cached_parts(layer, attn_outs[j] if attn_outs is not None else None, None):
                until_stopped(layer_forward, layer, x, kw)
    return accs, kept


def _linear_out(lin: nn.Module, x2d: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The linear's output for its captured 2-D input, shaped like `like` ([..., any]) with out_features last."""
    return F.linear(x2d, lin.effective_weight(), lin.bias).view(*like.shape[:-1], lin.out_features)


def _record(weights: dict[str, QuantizedLinear], records: list[dict], lins: list[nn.Module],
            qls: list[QuantizedLinear], recs: list[dict], index: int) -> None:
    for lin, ql, rec in zip(lins, qls, recs):
        weights[lin.name] = ql
        records.append({"layer": index, **rec})


@torch.no_grad()
def _quantize_true_sequential(layer: nn.Module, batches: list[Batch], level_set: LevelSet, cfg: QuantConfig,
                              index: int, timer: dict | None) -> LayerResult:
    weights: dict[str, QuantizedLinear] = {}
    records: list[dict] = []
    attn_outs: list | None = None
    down_in: list[torch.Tensor] = []
    for owner, names in LINEAR_GROUPS:
        lins = group_linears(layer, owner, names)
        t0 = time.perf_counter()
        (acc,), kept = _collect_hessians(layer, batches, lins[:1], cfg, attn_outs,
                                         keep=names[0] in ("o_proj", "down_proj"))
        t0 = tick(timer, "hessian_s", t0)
        qls, recs = _quantize_group(lins, acc.hessian, level_set, cfg, f"layer {index} {'/'.join(names)}")
        tick(timer, "weights_s", t0)
        _record(weights, records, lins, qls, recs, index)
        if names[0] == "o_proj":
            t0 = time.perf_counter()
            attn_outs = [_linear_out(lins[0], xo, x) for xo, (x, _) in zip(kept, batches)]
            tick(timer, "hessian_s", t0)
        elif names[0] == "down_proj":
            down_in = kept
        del kept
    t0 = time.perf_counter()
    down = layer.mlp.down_proj
    outs = []
    for j, (x, kw) in enumerate(batches):
        with _cached_parts(layer, attn_outs[j], _linear_out(down, down_in[j], x)):
            outs.append((layer_forward(layer, x, kw), kw))
        down_in[j] = None
    tick(timer, "propagate_s", t0)
    return weights, records, outs


@torch.no_grad()
def _quantize_one_pass(layer: nn.Module, batches: list[Batch], level_set: LevelSet, cfg: QuantConfig,
                       index: int, timer: dict | None) -> LayerResult:
    weights: dict[str, QuantizedLinear] = {}
    records: list[dict] = []
    t0 = time.perf_counter()
    if cfg.method == "gptq":
        heads = [group_linears(layer, owner, names)[0] for owner, names in LINEAR_GROUPS]
        hessians = [acc.hessian for acc in _collect_hessians(layer, batches, heads, cfg)[0]]
    else:
        hessians = [None] * len(LINEAR_GROUPS)
    t0 = tick(timer, "hessian_s", t0)
    for (owner, names), H in zip(LINEAR_GROUPS, hessians):
        lins = group_linears(layer, owner, names)
        qls, recs = _quantize_group(lins, H, level_set, cfg, f"layer {index} {'/'.join(names)}")
        t0 = tick(timer, "weights_s", t0)
        _record(weights, records, lins, qls, recs, index)
    return weights, records, None


def quantize_layer(layer: nn.Module, batches: list[Batch], level_set: LevelSet, cfg: QuantConfig, index: int,
                   timer: dict | None = None) -> LayerResult:
    """Quantize decoder layer `index` in place onto `level_set` (see the module doc); RTN ignores `batches`.

    timer: optional dict that accumulates seconds under "hessian_s" (calibration forwards and X^T X),
    "weights_s" (scale fit and GPTQ/RTN) and "propagate_s" (the layer's outputs, true-sequential GPTQ only).
    """
    if cfg.method == "gptq" and cfg.true_sequential:
        return _quantize_true_sequential(layer, batches, level_set, cfg, index, timer)
    return _quantize_one_pass(layer, batches, level_set, cfg, index, timer)
