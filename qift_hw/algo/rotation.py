"""QuaRot's rotation of a LLaMA-family model, in place, keeping its float outputs unchanged.

With T_n(x) the normalized Hadamard transform over a last dim of size n (T(x) = x M, M orthogonal) and Q a seeded
random Hadamard of the hidden size (a float64 orthogonal matrix):
1. Each RMSNorm's weight is folded into the columns of the linears that read it (q/k/v, gate/up, lm_head for the
   final norm); the norms keep a weight of ones. RMSNorm commutes with an orthogonal map, so step 2 is exact.
2. Residual stream x -> x Q: embedding rows E Q; inputs of q/k/v, gate/up, lm_head: W Q; outputs of o_proj and
   down_proj: Q^T W and b Q.
3. R4: down_proj's weight becomes T(W) row-wise and its input gets T online (QLinear.online_hadamard).
4. R2: each head of v_proj's output gets T_head_dim (weights and bias), and o_proj's input columns of each head
   the same transform, so attention outputs are rotated per head in between (exact for GQA: every head turns
   by the same matrix).
5. R3: queries and keys get T_head_dim online after RoPE (qmodel's attention), before the KV quantizer.
All weight arithmetic is done in float64 and cast back once to the model's dtype.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from qift_hw.core.errors import QiftError
from qift_hw.core.hadamard import hadamard_transform, is_supported, random_hadamard
from qift_hw.algo.models import check_supported, head_dim, untie_embeddings
from qift_hw.algo.qmodel import wrap_model


@dataclass(frozen=True)
class RotationInfo:
    """What rotate_model applied (stored with exported checkpoints)."""

    seed: int
    hidden_size: int
    intermediate_size: int
    head_dim: int
    num_layers: int
    norms_fused: bool = True
    residual: bool = True
    down_online_hadamard: bool = True
    ov_per_head_hadamard: bool = True
    qk_online_hadamard: bool = True

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RotationInfo:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def check_rotatable(model: nn.Module) -> tuple[int, int, int]:
    """(hidden, intermediate, head_dim) if Hadamard matrices exist for all three, else QiftError."""
    check_supported(model)
    hidden = model.model.embed_tokens.weight.shape[1]
    inter = model.model.layers[0].mlp.down_proj.in_features
    hd = head_dim(model)
    for what, n in (("hidden size", hidden), ("intermediate size", inter), ("head dim", hd)):
        if not is_supported(n):
            raise QiftError(f"{what} {n} has no known Hadamard matrix; this model cannot be rotated")
    return hidden, inter, hd


def _cols_scaled(w: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
    w = w.detach().to(torch.float64)
    return w if g is None else w * g.detach().to(device=w.device, dtype=torch.float64)


def _store(param: torch.Tensor, value: torch.Tensor) -> None:
    with torch.no_grad():
        param.copy_(value.to(dtype=param.dtype))


def _reset_norm(norm: nn.Module) -> None:
    with torch.no_grad():
        norm.weight.fill_(1.0)


def _per_head_rows(w: torch.Tensor, head_dim: int) -> torch.Tensor:
    """v_proj weight [heads*hd, in] -> each head block H^T W_h, i.e. T applied to the rows of W_h^T."""
    out_f, in_f = w.shape
    blocks = w.view(out_f // head_dim, head_dim, in_f).transpose(1, 2)
    return hadamard_transform(blocks, normalize=True).transpose(1, 2).reshape(out_f, in_f)


def _per_head_cols(w: torch.Tensor, head_dim: int) -> torch.Tensor:
    """o_proj weight [out, heads*hd] -> each head's column block W_h M (T over each head's columns)."""
    out_f, in_f = w.shape
    return hadamard_transform(w.view(out_f, in_f // head_dim, head_dim), normalize=True).reshape(out_f, in_f)


@torch.no_grad()
def fuse_norms(model: nn.Module) -> None:
    """Step 1 alone: fold RMSNorm weights into the following linears (for statistics of the un-rotated model)."""
    check_supported(model)
    untie_embeddings(model)
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        for norm, lins in ((layer.input_layernorm, (attn.q_proj, attn.k_proj, attn.v_proj)),
                           (layer.post_attention_layernorm, (mlp.gate_proj, mlp.up_proj))):
            for lin in lins:
                _store(lin.weight, _cols_scaled(lin.weight, norm.weight))
            _reset_norm(norm)
    _store(model.lm_head.weight, _cols_scaled(model.lm_head.weight, model.model.norm.weight))
    _reset_norm(model.model.norm)


@torch.no_grad()
def rotate_ends(model: nn.Module, q: torch.Tensor) -> None:
    """Steps 1-2 outside the decoder layers: embedding rows E Q, final norm folded into lm_head, lm_head W Q."""
    emb = model.model.embed_tokens.weight
    _store(emb, emb.detach().to(torch.float64) @ q)
    head = model.lm_head
    _store(head.weight, _cols_scaled(head.weight, model.model.norm.weight) @ q)
    _reset_norm(model.model.norm)


@torch.no_grad()
def rotate_layer(layer: nn.Module, q: torch.Tensor, hd: int) -> None:
    """Steps 1-5 on one wrapped decoder layer (q: the float64 residual rotation, hd: head dim), in place.

    rotate_model applies it to every layer; the streaming pipeline to each layer as it is loaded.
    """
    attn, mlp = layer.self_attn, layer.mlp
    g_attn, g_mlp = layer.input_layernorm.weight, layer.post_attention_layernorm.weight
    for lin in (attn.q_proj, attn.k_proj):
        _store(lin.weight, _cols_scaled(lin.weight, g_attn) @ q)
    _store(attn.v_proj.weight, _per_head_rows(_cols_scaled(attn.v_proj.weight, g_attn) @ q, hd))
    if attn.v_proj.bias is not None:
        b = attn.v_proj.bias.detach().to(torch.float64)
        _store(attn.v_proj.bias, hadamard_transform(b.view(-1, hd), normalize=True).reshape(-1))
    _store(attn.o_proj.weight, _per_head_cols(q.T @ attn.o_proj.weight.detach().to(torch.float64), hd))
    for lin in (mlp.gate_proj, mlp.up_proj):
        _store(lin.weight, _cols_scaled(lin.weight, g_mlp) @ q)
    down = q.T @ mlp.down_proj.weight.detach().to(torch.float64)
    _store(mlp.down_proj.weight, hadamard_transform(down, normalize=True))
    for lin in (attn.o_proj, mlp.down_proj):
        if lin.bias is not None:
            _store(lin.bias, lin.bias.detach().to(torch.float64) @ q)
    _reset_norm(layer.input_layernorm)
    _reset_norm(layer.post_attention_layernorm)
    mlp.down_proj.online_hadamard = True
    attn.qift_attn.online_hadamard = True


@torch.no_grad()
def rotate_model(model: nn.Module, seed: int = 0) -> RotationInfo:
    """Apply QuaRot's rotations in place (module docstring) and install the online Hadamards; returns the record.

    The float model computes the same logits afterwards, up to rounding. Raises QiftError for a model that is
    not LLaMA-family, a size without a Hadamard matrix, or a model that is already rotated.
    """
    if getattr(model, "qift_rotation", None) is not None:
        raise QiftError("this model is already rotated; load a fresh copy to rotate again")
    hidden, inter, hd = check_rotatable(model)
    untie_embeddings(model)
    wrap_model(model)
    device = model.model.embed_tokens.weight.device
    q = random_hadamard(hidden, seed).to(device=device, dtype=torch.float64)
    rotate_ends(model, q)
    for layer in model.model.layers:
        rotate_layer(layer, q, hd)

    info = RotationInfo(seed=seed, hidden_size=hidden, intermediate_size=inter, head_dim=hd,
                        num_layers=len(model.model.layers))
    model.qift_rotation = info
    return info


def rotation_of(model: nn.Module) -> RotationInfo | None:
    """The RotationInfo of a rotated model, or None."""
    return getattr(model, "qift_rotation", None)

