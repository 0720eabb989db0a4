"""A minimal LLaMA-style decoder with random weights of a real model's shapes, for decode throughput.

One decode step for a batch of B tokens at a fixed position: RMSNorm, q/k/v projections, rotary embedding,
attention over a static KV cache, o projection, SwiGLU MLP, LM head. Every linear is a callable, so the same
stack runs with FP16 weights (cuBLAS) or packed W2 weights (the Triton kernel). A fixed position keeps every
shape static, so a whole step can be captured as one CUDA graph, as serving stacks do.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from qift_hw.gpu.packed import PackedW2, random_packed
from qift_hw.core.shapes import ModelShape

Linear = Callable[[torch.Tensor], torch.Tensor]


def fp16_linear(N: int, K: int, device: str, gen: torch.Generator) -> Linear:
    w = torch.randn(N, K, device=device, dtype=torch.float16, generator=gen) * 0.02
    return lambda x, w=w: F.linear(x, w)


def w2_weight(N: int, K: int, device: str, seed: int) -> PackedW2:
    pw = random_packed(N, K, device=device, seed=seed)
    return PackedW2(pw.packed, (pw.scale.float() * 0.2).half(), pw.table, pw.K, pw.level_set)  # rms ~0.02 like fp16


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * w


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def _add_rms(h: torch.Tensor, delta: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    h = h + delta
    return h, _rms(h, w)


def _rope_qk(q, k, cos, sin):
    return _rope(q, cos, sin), _rope(k, cos, sin)


def _silu_mul(g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    return F.silu(g) * u


GLUE = {"add_rms": _add_rms, "rope_qk": _rope_qk, "silu_mul": _silu_mul}


def compiled_glue() -> dict:
    """The element-wise glue (residual add + RMSNorm, rotary, SwiGLU) fused by torch.compile, one kernel each."""
    return {k: torch.compile(f, fullgraph=True, dynamic=False) for k, f in GLUE.items()}


class Decoder:
    """Random-weight decoder stack of ``shape``; ``weights`` is 'fp16' or 'w2'; ``lm_head`` 'fp16' or 'w2'."""

    def __init__(self, shape: ModelShape, weights: str = "fp16", lm_head: str = "fp16", max_len: int = 1024,
                 batch: int = 1, device: str = "cuda", seed: int = 0, impl: str = "auto", glue: dict | None = None):
        self.shape, self.batch, self.max_len, self.impl = shape, batch, max_len, impl
        self.glue = glue or GLUE
        self.w2_weights: list[PackedW2] = []
        gen = torch.Generator(device=device).manual_seed(seed)
        dt = torch.float16
        self.emb = torch.randn(shape.vocab, shape.hidden, device=device, dtype=dt, generator=gen) * 0.02

        def lin(N, K, kind, s):
            if kind == "fp16":
                return fp16_linear(N, K, device, gen)
            from qift_hw.gpu.dispatch import w2_matmul

            pw = w2_weight(N, K, device, seed * 1000 + s)
            self.w2_weights.append(pw)
            return lambda x, pw=pw: w2_matmul(x, pw, self.impl)

        self.layers = []
        for i in range(shape.layers):
            L = {name: lin(N, K, weights, i * 10 + j) for j, (name, (N, K)) in enumerate(shape.weight_shapes().items())
                 if name != "lm_head"}
            L["ln1"] = torch.ones(shape.hidden, device=device, dtype=dt)
            L["ln2"] = torch.ones(shape.hidden, device=device, dtype=dt)
            L["k_cache"] = torch.randn(batch, shape.kv_heads, max_len, shape.head_dim, device=device, dtype=dt,
                                       generator=gen)
            L["v_cache"] = torch.randn_like(L["k_cache"])
            self.layers.append(L)
        self.norm = torch.ones(shape.hidden, device=device, dtype=dt)
        if lm_head == "fp16" and shape.tied:
            self.lm_head = lambda x: F.linear(x, self.emb)
        else:
            self.lm_head = lin(shape.vocab, shape.hidden, lm_head, 999)
        inv = 1.0 / (10000.0 ** (torch.arange(0, shape.head_dim, 2, device=device).float() / shape.head_dim))
        ang = torch.arange(max_len, device=device).float()[:, None] * inv[None, :]
        ang = torch.cat((ang, ang), dim=-1)
        self.cos, self.sin = ang.cos().to(dt), ang.sin().to(dt)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, pos: int) -> torch.Tensor:
        """Logits [B, vocab] for one new token per sequence at position ``pos`` (cache rows < pos are context)."""
        s, g = self.shape, self.glue
        B = tokens.shape[0]
        h = self.emb[tokens]
        delta = torch.zeros_like(h)
        cos, sin = self.cos[pos], self.sin[pos]
        for L in self.layers:
            h, a = g["add_rms"](h, delta, L["ln1"])
            q = L["q_proj"](a).view(B, s.heads, 1, s.head_dim)
            k = L["k_proj"](a).view(B, s.kv_heads, 1, s.head_dim)
            v = L["v_proj"](a).view(B, s.kv_heads, 1, s.head_dim)
            q, k = g["rope_qk"](q, k, cos, sin)
            L["k_cache"][:, :, pos:pos + 1] = k
            L["v_cache"][:, :, pos:pos + 1] = v
            att = F.scaled_dot_product_attention(q, L["k_cache"][:, :, :pos + 1], L["v_cache"][:, :, :pos + 1],
                                                 enable_gqa=s.kv_heads != s.heads)
            delta = L["o_proj"](att.reshape(B, s.heads * s.head_dim))
            h, m = g["add_rms"](h, delta, L["ln2"])
            delta = L["down_proj"](g["silu_mul"](L["gate_proj"](m), L["up_proj"](m)))
        _, f = g["add_rms"](h, delta, self.norm)
        return self.lm_head(f)


def step_bytes(shape: ModelShape, weights: str, lm_head: str, pos: int, batch: int = 1) -> dict:
    """Bytes a decode step must read: linear weights, LM head, KV cache up to ``pos``."""
    lin = shape.layer_params() * shape.layers
    per = {"fp16": 2.0, "w2": 0.25}
    lm = shape.vocab * shape.hidden * per[lm_head]
    kv = 2 * shape.layers * batch * shape.kv_heads * (pos + 1) * shape.head_dim * 2
    return {"linears": lin * per[weights], "lm_head": lm, "kv_cache": kv, "total": lin * per[weights] + lm + kv}
