"""The quantized forward against a from-scratch LLaMA forward with brute-force quantizers."""

import math

import pytest
import torch

from qift_hw.core.errors import QiftError
from qift_hw.core.hadamard import hadamard_matrix_float
from qift_hw.algo.models import tiny_llama
from qift_hw.algo.qmodel import (
    AttnQuant,
    QLinear,
    iter_qlinears,
    qift_sdpa_attention,
    quantize_model_forward,
    wrap_model,
)
from qift_hw.algo.rotation import rotate_model

IDS = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(1))


def act_quant_ref(x, bits=4, clip=0.9):
    """Per token: nearest of the 2^bits integer levels times scale = clip*max|x|/qmax, searched exhaustively (FP32)."""
    qmax = 2 ** (bits - 1) - 1
    x32 = x.float()
    s = x32.abs().amax(-1, keepdim=True) * clip / qmax
    s = torch.where(s > 0, s, torch.ones_like(s))
    levels = torch.arange(-qmax - 1, qmax + 1, dtype=torch.float32)
    idx = ((x32 / s).unsqueeze(-1) - levels).abs().argmin(-1)
    return (levels[idx] * s).to(x.dtype)


def kv_quant_ref(x, bits=4, clip=0.95):
    """Per token and head: nearest of 2^bits asymmetric levels (q - zero) * scale over [clip*min(x,0), clip*max(x,0)]."""
    qmax = 2**bits - 1
    x32 = x.float()
    hi = x32.amax(-1, keepdim=True).clamp(min=0) * clip
    lo = x32.amin(-1, keepdim=True).clamp(max=0) * clip
    s = (hi - lo) / qmax
    s = torch.where(s > 0, s, torch.ones_like(s))
    z = torch.round(-lo / s)
    levels = torch.arange(0, qmax + 1, dtype=torch.float32)
    idx = ((x32 / s).unsqueeze(-1) - (levels - z.unsqueeze(-1))).abs().argmin(-1)
    return ((levels[idx] - z) * s).to(x.dtype)


def reference_forward(model, ids, a_bits=16, kv_bits=16, rotated=False, qweights=None):
    """A LLaMA forward written from the architecture, reading only the model's parameters and config."""
    cfg = model.config
    sd = model.state_dict()
    qweights = qweights or {}
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = cfg.hidden_size // nh
    eps = cfg.rms_norm_eps
    dt = sd["model.embed_tokens.weight"].dtype

    def norm(x, w):
        x32 = x.float()
        return w * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(dt)

    def had(x):
        n = x.shape[-1]
        return x @ hadamard_matrix_float(n, dtype=dt).T / math.sqrt(n)

    def lin(x, name, online=False):
        if online:
            x = had(x)
        if a_bits != 16:
            x = act_quant_ref(x, a_bits)
        w = qweights.get(name, sd[name + ".weight"])
        y = x @ w.T
        return y + sd[name + ".bias"] if name + ".bias" in sd else y

    T = ids.shape[1]
    theta = cfg.rope_parameters["rope_theta"]
    inv = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float) / hd))
    ang = torch.arange(T, dtype=torch.float)[:, None] * inv[None]
    cos, sin = torch.cat([ang, ang], -1).cos().to(dt), torch.cat([ang, ang], -1).sin().to(dt)

    def rope(x):
        x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
        return x * cos + torch.cat([-x2, x1], -1) * sin

    causal = torch.full((T, T), float("-inf"), dtype=dt).triu(1)
    h = sd["model.embed_tokens.weight"][ids]
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        x = norm(h, sd[p + "input_layernorm.weight"])
        q = rope(lin(x, p + "self_attn.q_proj").view(*x.shape[:2], nh, hd).transpose(1, 2))
        k = rope(lin(x, p + "self_attn.k_proj").view(*x.shape[:2], nkv, hd).transpose(1, 2))
        v = lin(x, p + "self_attn.v_proj").view(*x.shape[:2], nkv, hd).transpose(1, 2)
        if rotated:
            q, k = had(q), had(k)
        if kv_bits != 16:
            k, v = kv_quant_ref(k, kv_bits), kv_quant_ref(v, kv_bits)
        heads = []
        for j in range(nh):
            kj, vj = k[:, j // (nh // nkv)], v[:, j // (nh // nkv)]
            att = torch.softmax(q[:, j] @ kj.transpose(-1, -2) / math.sqrt(hd) + causal, dim=-1)
            heads.append(att @ vj)
        h = h + lin(torch.cat(heads, -1), p + "self_attn.o_proj")
        x = norm(h, sd[p + "post_attention_layernorm.weight"])
        g, u = lin(x, p + "mlp.gate_proj"), lin(x, p + "mlp.up_proj")
        h = h + lin(torch.nn.functional.silu(g) * u, p + "mlp.down_proj", online=rotated)
    x = norm(h, sd["model.norm.weight"])
    return x @ sd["lm_head.weight"].T


def _model(**kw):
    return tiny_llama(seed=3, biases=True, hidden=48, intermediate=96, heads=4, kv_heads=2, dtype=torch.float64, **kw)


def test_reference_matches_float_model():
    model = _model()
    with torch.no_grad():
        torch.testing.assert_close(model(IDS).logits, reference_forward(model, IDS), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("rotated", [False, True])
@pytest.mark.parametrize("a_bits,kv_bits", [(4, 16), (16, 4), (4, 4), (8, 3)])
def test_quantized_forward_matches_reference(rotated, a_bits, kv_bits):
    model = _model()
    if rotated:
        rotate_model(model, seed=2)
    qlinears = quantize_model_forward(model, a_bits=a_bits, kv_bits=kv_bits)
    qweights = {}
    for name, q in qlinears[::3]:  # some layers get a replacement (rounded) weight
        qweights[name] = torch.round(q.weight.detach() * 4) / 4
        q.set_qweight(qweights[name])
    with torch.no_grad():
        out = model(IDS).logits
    ref = reference_forward(model, IDS, a_bits, kv_bits, rotated, qweights)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
    plain = reference_forward(model, IDS, 16, 16, rotated, qweights)
    assert (out - plain).abs().max() > 1e-3  # the quantizers really act


def test_attention_function_brute_force():
    """qift_sdpa_attention on random tensors == Hadamard, brute-force KV quantization, explicit causal softmax."""
    model = _model()
    wrap_model(model)
    attn = model.model.layers[0].self_attn
    attn.qift_attn = AttnQuant(online_hadamard=True, kv_bits=4, kv_clip=0.95)
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 10, 12, generator=gen, dtype=torch.float64)
    k = torch.randn(2, 2, 10, 12, generator=gen, dtype=torch.float64)
    v = torch.randn(2, 2, 10, 12, generator=gen, dtype=torch.float64)
    out, _ = qift_sdpa_attention(attn, q, k, v, None, scaling=12**-0.5, dropout=0.0)
    H = hadamard_matrix_float(12) / math.sqrt(12)
    qh, kh = q @ H.T, kv_quant_ref(k @ H.T)
    vq = kv_quant_ref(v)
    mask = torch.full((10, 10), float("-inf"), dtype=torch.float64).triu(1)
    for j in range(4):
        att = torch.softmax(qh[:, j] @ kh[:, j // 2].transpose(-1, -2) / math.sqrt(12) + mask, -1)
        torch.testing.assert_close(out[:, :, j], att @ vq[:, j // 2], rtol=1e-10, atol=1e-10)


def test_kv_cache_decoding_equals_full_forward():
    """Quantizing the float cache on every use gives what quantizing each token once would."""
    model = _model()
    rotate_model(model, seed=0)
    quantize_model_forward(model, a_bits=4, kv_bits=4)
    ids = IDS[:1]
    with torch.no_grad():
        full = model(ids).logits
        out = model(ids[:, :10], use_cache=True)
        cache, steps = out.past_key_values, [out.logits]
        for t in range(10, ids.shape[1]):
            out = model(ids[:, t : t + 1], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-9, atol=1e-9)


def test_capture_sees_what_the_weight_sees():
    model = _model()
    rotate_model(model, seed=0)
    quantize_model_forward(model, a_bits=4, kv_bits=4)
    down = model.model.layers[1].mlp.down_proj
    seen, outs = [], []
    down.capture = seen.append
    handle = down.register_forward_hook(lambda m, i, o: outs.append(o))
    with torch.no_grad():
        model(IDS)
    handle.remove()
    down.capture = None
    x = seen[0]
    assert x.shape == (IDS.numel(), 96)
    assert max(len(torch.unique(row)) for row in x) <= 16  # INT4 levels times one scale per token
    torch.testing.assert_close(outs[0].reshape(-1, 48), x @ down.weight.T + down.bias)


def test_wrap_keeps_parameters_and_function():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        ref = model(IDS).logits
    qlinears = wrap_model(model)
    assert [n.rsplit(".", 1)[1] for n, _ in qlinears[:7]] == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                             "up_proj", "down_proj"]
    assert len(qlinears) == 14 and all(isinstance(q, QLinear) for _, q in qlinears)
    assert wrap_model(model) == qlinears  # idempotent
    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)
    with torch.no_grad():
        torch.testing.assert_close(model(IDS).logits, ref, rtol=0, atol=0)
    assert iter_qlinears(model) == qlinears


def test_bad_settings():
    model = _model()
    with pytest.raises(QiftError, match="width"):
        quantize_model_forward(model, a_bits=1)
    with pytest.raises(QiftError, match="clip"):
        quantize_model_forward(model, kv_clip=1.5)
    with pytest.raises(QiftError, match="not wrapped"):
        iter_qlinears(tiny_llama(seed=0))
    _, q = wrap_model(model)[0]
    with pytest.raises(QiftError, match="shape"):
        q.set_qweight(torch.zeros(3, 3))


def test_device_move_keeps_replacement_weight():
    model = _model()
    _, q = wrap_model(model)[0]
    q.set_qweight(torch.zeros_like(q.weight))
    model.to(torch.float32)
    assert q.qweight.dtype == torch.float32 and "qweight" not in model.state_dict()
