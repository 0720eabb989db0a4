"""The quantized forward pass: every decoder linear becomes a QLinear, every attention gets KV-cache quantization.

QLinear keeps the float weight and adds, in this order on its input: the online Hadamard (down_proj after the
rotation, R4), INT4 per-token symmetric fake quantization (`formats.fake_quant_act`), an optional capture callback
(GPTQ collects Hessians from exactly what the weight sees), then the product with either the float weight or a
replacement (fake-quantized, dequantized) weight. lm_head stays a plain float nn.Linear, never act-quantized.

Attention runs through the "qift_sdpa" attention function (registered with transformers): after RoPE it applies
the online Hadamard over head_dim to queries and keys (R3, exact in float because both sides turn), then fake-
quantizes keys and values per token and head (`formats.fake_quant_kv`, asymmetric, one group per head), then
calls PyTorch SDPA. With a cache the stored keys/values stay float and are quantized on every use, which gives
the same values as quantizing on insertion because every group is one token of one head.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from qift_hw.core.errors import QiftError
from qift_hw.core.formats import (ACT_CLIP, KV_CLIP, dequantize_acc, exact_float_products, fake_quant_act, fake_quant_kv,
                             quantize_act)
from qift_hw.core.hadamard import hadamard_transform
from qift_hw.core.levels import LevelSet, get_level_set
from qift_hw.algo.models import iter_linears

ATTN_IMPLEMENTATION = "qift_sdpa"
FLOAT_BITS = 16
"""Bit width meaning "not quantized" (A16 / KV16)."""


def _check_bits(what: str, bits: int) -> None:
    if not (2 <= bits <= 8 or bits == FLOAT_BITS):
        raise QiftError(f"{what} width must be 2..8 bits or {FLOAT_BITS} (float), got {bits}")


def check_act_quant(a_bits: int, kv_bits: int, a_clip: float, kv_clip: float) -> None:
    """QiftError unless the activation and KV-cache quantizer settings can work (bits 2..8 or 16, clips in (0, 1])."""
    _check_bits("activation", a_bits)
    _check_bits("KV cache", kv_bits)
    for what, clip in (("activation clip", a_clip), ("KV clip", kv_clip)):
        if not 0.0 < clip <= 1.0:
            raise QiftError(f"{what} ratio must be in (0, 1], got {clip}")


SHARED_INPUT_GROUPS = (("self_attn", ("q_proj", "k_proj", "v_proj")), ("mlp", ("gate_proj", "up_proj")))
"""Linears of one decoder layer that the forward calls on the same input tensor, in call order."""


class SharedInput:
    """The last input of a group of QLinears that read one tensor, with its transformed value: the online Hadamard
    and activation quantizer run once per group instead of once per linear (same function, same values).

    A member reuses the value only if it gets the very same tensor object, unmodified since (version counters of
    input and value), with the same transform settings; the entry is dropped once every other member used it.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.clear()

    def clear(self) -> None:
        self.src: torch.Tensor | None = None
        self.out: torch.Tensor | None = None
        self.key: tuple = ()
        self.versions: tuple[int, ...] = ()
        self.left = 0

    @staticmethod
    def _versions(x: torch.Tensor, out) -> tuple[int, ...]:
        return (x._version, *(t._version for t in (out if isinstance(out, tuple) else (out,))))

    def get(self, x: torch.Tensor, key: tuple):
        """The value put for this very input and key (a tensor or a tuple of tensors), or None."""
        if self.src is not x or self.key != key or self.versions != self._versions(x, self.out):
            return None
        out = self.out
        self.left -= 1
        if self.left <= 0:
            self.clear()
        return out

    def put(self, x: torch.Tensor, key: tuple, out) -> None:
        self.src, self.out, self.key, self.left = x, out, key, self.size - 1
        self.versions = self._versions(x, out)


class QLinear(nn.Linear):
    """A decoder linear with online Hadamard, activation fake-quantization, capture hook and weight replacement.

    It shares the Parameters of the nn.Linear it wraps, so state_dict keys and values are unchanged.
    Attributes: `online_hadamard` (bool), `a_bits` (16 = float), `a_clip`, `qweight` (None or a dequantized weight
    used instead of `weight`; a non-persistent buffer, so it moves with `.to()`), `int_weight` / `int_scale` /
    `int_level_set` (set by `set_int_weight`: the integer-product mode), `capture` (None or a callable that
    receives the 2-D [tokens, in_features] input exactly as the weight sees it), `name`.
    """

    def __init__(self, linear: nn.Linear, name: str = "") -> None:
        nn.Module.__init__(self)
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self.name = name
        self.online_hadamard = False
        self.a_bits = FLOAT_BITS
        self.a_clip = ACT_CLIP
        self.capture: Callable[[torch.Tensor], None] | None = None
        self.shared_input: SharedInput | None = None
        self.register_buffer("qweight", None, persistent=False)
        self.register_buffer("int_weight", None, persistent=False)
        self.register_buffer("int_scale", None, persistent=False)
        self.int_level_set: LevelSet | None = None

    def set_int_weight(self, weight: torch.Tensor | None, scale: torch.Tensor | None = None,
                       level_set: str | LevelSet | None = None) -> None:
        """Integer-product mode: y = formats.dequantize_acc(q_act @ weight^T, s_act, scale, level_set, bias).

        `weight` holds the integer weight values [N, K] (e.g. PoT-MNZ -4..4), `scale` the per-row scale and
        `level_set` the level set (or its name), exactly as the hardware sees them. The INT4 activation codes are
        multiplied by the integer weights in FP32, which is exact here (checked: every partial sum is an integer below
        2^24), so the accumulators, and after `dequantize_acc` the outputs, equal the integer model's bit for bit.
        The float weight and any `qweight` are ignored while this is set; None switches it off.
        """
        if weight is None:
            self.int_weight, self.int_scale, self.int_level_set = None, None, None
            return
        if tuple(weight.shape) != tuple(self.weight.shape) or scale is None or scale.numel() != self.out_features:
            n_scales = None if scale is None else scale.numel()
            raise QiftError(f"{self.name}: integer weight {tuple(weight.shape)} with {n_scales} scales does not fit a "
                            f"{self.out_features}x{self.in_features} layer")
        if self.a_bits == FLOAT_BITS:
            raise QiftError(f"{self.name}: the integer-product mode needs quantized activations (a_bits < 16)")
        if not exact_float_products(self.in_features, self.a_bits, int(weight.abs().max())):
            raise QiftError(f"{self.name}: K={self.in_features} is too large for exact FP32 integer products")
        self.int_weight = weight.detach().to(device=self.weight.device, dtype=torch.float32)
        self.int_scale = scale.detach().reshape(-1).to(device=self.weight.device, dtype=torch.float32)
        self.int_level_set = get_level_set(level_set)

    def set_qweight(self, weight: torch.Tensor | None) -> None:
        """Use `weight` (dequantized, same shape) in place of the float weight; None restores the float weight."""
        if weight is None:
            self.qweight = None
            return
        if tuple(weight.shape) != tuple(self.weight.shape):
            raise QiftError(
                f"{self.name}: replacement weight has shape {tuple(weight.shape)}, expected {tuple(self.weight.shape)}"
            )
        self.qweight = weight.detach().to(device=self.weight.device, dtype=self.weight.dtype)

    def effective_weight(self) -> torch.Tensor:
        """The weight the forward pass multiplies by."""
        return self.weight if self.qweight is None else self.qweight

    def transform_input(self, x: torch.Tensor) -> torch.Tensor:
        """Online Hadamard then activation fake-quantization: what the weight is multiplied with."""
        if self.online_hadamard:
            x = hadamard_transform(x, normalize=True)
        if self.a_bits != FLOAT_BITS:
            x = fake_quant_act(x, self.a_bits, self.a_clip)
        return x

    def _shared_transform(self, x: torch.Tensor) -> torch.Tensor:
        """transform_input(x), taken from the group's SharedInput when another member just computed it."""
        shared = self.shared_input
        if shared is None:
            return self.transform_input(x)
        key = (self.online_hadamard, self.a_bits, self.a_clip)
        out = shared.get(x, key)
        if out is None:
            out = self.transform_input(x)
            shared.put(x, key, out)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.int_weight is not None:
            return self._int_forward(x)
        x = self._shared_transform(x)
        if self.capture is not None:
            self.capture(x.reshape(-1, x.shape[-1]))
        return F.linear(x, self.effective_weight(), self.bias)

    def _int_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.online_hadamard:
            x = hadamard_transform(x, normalize=True)
        q, s_a = quantize_act(x, self.a_bits, self.a_clip)
        if self.capture is not None:
            self.capture((q.to(torch.float32) * s_a).to(x.dtype).reshape(-1, x.shape[-1]))
        acc = F.linear(q.to(torch.float32), self.int_weight)
        y = dequantize_acc(acc, s_a, self.int_scale, self.int_level_set, self.bias)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, online_hadamard={self.online_hadamard}, a_bits={self.a_bits}, "
            f"quantized_weight={self.qweight is not None}"
        )


@dataclass
class AttnQuant:
    """Per-attention-module settings read by the qift_sdpa attention function."""

    online_hadamard: bool = False
    kv_bits: int = FLOAT_BITS
    kv_clip: float = KV_CLIP


def qift_sdpa_attention(module: nn.Module, query, key, value, attention_mask, **kwargs):
    """Attention function: online Hadamard on Q/K over head_dim, KV fake-quantization, then SDPA.

    Arguments and result follow transformers' attention-function interface (tensors [batch, heads, seq, head_dim]).
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cfg = getattr(module, "qift_attn", None)
    if cfg is not None:
        if cfg.online_hadamard:
            query = hadamard_transform(query, normalize=True)
            key = hadamard_transform(key, normalize=True)
        if cfg.kv_bits != FLOAT_BITS:
            key = fake_quant_kv(key, cfg.kv_bits, cfg.kv_clip)
            value = fake_quant_kv(value, cfg.kv_bits, cfg.kv_clip)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def _register_attention() -> None:
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if ATTN_IMPLEMENTATION not in ALL_ATTENTION_FUNCTIONS._global_mapping:
        ALL_ATTENTION_FUNCTIONS.register(ATTN_IMPLEMENTATION, qift_sdpa_attention)
    if ATTN_IMPLEMENTATION not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_IMPLEMENTATION, sdpa_mask)


def _set_child(model: nn.Module, name: str, child: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name), attr, child)


def iter_attentions(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The attention module of every decoder layer, with its qualified name."""
    return [(f"model.layers.{i}.self_attn", layer.self_attn) for i, layer in enumerate(model.model.layers)]


def iter_qlinears(model: nn.Module) -> list[tuple[str, QLinear]]:
    """Every QLinear of the model in execution order (q, k, v, o, gate, up, down per layer)."""
    out = [(name, m) for name, m in iter_linears(model)]
    bad = [name for name, m in out if not isinstance(m, QLinear)]
    if bad:
        raise QiftError(f"{bad[0]} is not wrapped; call qmodel.wrap_model(model) (or rotate_model) first")
    return out


def wrap_model(model: nn.Module) -> list[tuple[str, QLinear]]:
    """Install QLinear and the qift attention in place, all in float pass-through; idempotent.

    The wrapped model computes the same function as before (same parameters, same state_dict keys).
    """
    _register_attention()
    for name, lin in iter_linears(model):
        if not isinstance(lin, QLinear):
            _set_child(model, name, QLinear(lin, name))
    for layer in model.model.layers:
        for owner, names in SHARED_INPUT_GROUPS:
            group = [getattr(getattr(layer, owner), n) for n in names]
            if group[0].shared_input is None:
                shared = SharedInput(len(group))
                for q in group:
                    q.shared_input = shared
    for _, attn in iter_attentions(model):
        if not isinstance(getattr(attn, "qift_attn", None), AttnQuant):
            attn.qift_attn = AttnQuant()
    model.config._attn_implementation = ATTN_IMPLEMENTATION
    return iter_qlinears(model)


def quantize_model_forward(
    model: nn.Module,
    a_bits: int = 4,
    kv_bits: int = 4,
    a_clip: float = ACT_CLIP,
    kv_clip: float = KV_CLIP,
) -> list[tuple[str, QLinear]]:
    """Set activation (every decoder linear input) and KV-cache fake quantization; wraps the model if needed.

    a_bits / kv_bits = 16 turns that quantizer off. Online Hadamards installed by the rotation are kept.
    Weight replacement is separate (QLinear.set_qweight). Returns iter_qlinears(model).
    """
    check_act_quant(a_bits, kv_bits, a_clip, kv_clip)
    qlinears = wrap_model(model)
    for _, q in qlinears:
        q.a_bits = a_bits
        q.a_clip = a_clip
    for _, attn in iter_attentions(model):
        attn.qift_attn.kv_bits = kv_bits
        attn.qift_attn.kv_clip = kv_clip
    return qlinears


def clear_weight_quantization(model: nn.Module) -> None:
    """Drop every replacement weight (back to the float weights)."""
    for _, q in iter_qlinears(model):
        q.set_qweight(None)
