"""What quantization produces: a quantized linear (codes and per-row params on a level set) and a quantized model."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from qift_hw.algo.config import QuantConfig
from qift_hw.core.levels import LevelSet, QParams, dequantize


@dataclass
class QuantizedLinear:
    """One quantized weight: its level set, codes [N, K] uint8 and per-row params."""

    level_set: LevelSet
    codes: torch.Tensor
    params: QParams

    def dequantized(self) -> torch.Tensor:
        return dequantize(self.codes, self.level_set, self.params)


@dataclass
class QuantizedModel:
    """Result of `quantize_model`: the model (quantized weights installed) and what was done to it.

    layer_level_sets: per decoder layer, the level set of its linears (None: float weights).
    """

    model: nn.Module
    config: QuantConfig
    w2_layers: list[int]
    layer_level_sets: list[LevelSet | None]
    weights: dict[str, QuantizedLinear]
    records: list[dict]
    rotation: dict | None
    sensitivity: list[float] | None = None
    timings: dict = field(default_factory=dict)
    resumed_layers: int = 0

    def layer_level_set_names(self) -> list[str | None]:
        """`layer_level_sets` by name (for results files)."""
        return [None if ls is None else ls.name for ls in self.layer_level_sets]

    def layer_errors(self) -> list[float | None]:
        """Mean relative output error ||WX-QX||/||WX|| of each layer's linears (None where not measured)."""
        out: list[float | None] = []
        for i in range(len(self.layer_level_sets)):
            errs = [r["rel_error"] for r in self.records if r["layer"] == i and r.get("rel_error") is not None]
            out.append(sum(errs) / len(errs) if errs else None)
        return out


def set_integer_products(model: nn.Module, weights: dict[str, QuantizedLinear], on: bool = True) -> list[str]:
    """Switch the W2 linears whose level set the hardware decodes (formats.HW_LEVEL_SETS) to the integer-product
    mode (`QLinear.set_int_weight`): INT4 codes times integer weights, then `formats.dequantize_acc`, as the
    integer model computes them. Other layers keep the fake-quant product. Returns the names switched."""
    from qift_hw.algo.qmodel import iter_qlinears
    from qift_hw.core.formats import HW_LEVEL_SETS, weight_ints

    done = []
    for name, q in iter_qlinears(model):
        ql = weights.get(name)
        if ql is None or ql.level_set.name not in HW_LEVEL_SETS:
            continue
        if on:
            q.set_int_weight(weight_ints(ql.codes, ql.level_set), ql.params.scale, ql.level_set)
        else:
            q.set_int_weight(None)
        done.append(name)
    return done
