"""Computational invariance of the QuaRot rotation, checked against the un-rotated model itself."""

import copy
import types

import pytest
import torch

from qift_hw.algo.data import get_windows
from qift_hw.core.errors import QiftError
from qift_hw.core.hadamard import random_hadamard
from qift_hw.algo.models import tiny_llama
from qift_hw.algo.qmodel import QLinear
from qift_hw.algo.rotation import RotationInfo, fuse_norms, rotate_model, rotation_of

IDS = torch.randint(0, 256, (2, 33), generator=torch.Generator().manual_seed(0))


def _float64_norms(model):
    """Make every RMSNorm compute in the model's dtype (transformers' own casts to float32 internally)."""

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    for mod in model.modules():
        if type(mod).__name__.endswith("RMSNorm"):
            mod.forward = types.MethodType(forward, mod)


CONFIGS = [
    # family, biases, hidden, intermediate, heads, kv_heads: powers of two, GQA, and K=12 / K=20 factors
    ("llama", True, 64, 128, 4, 2),
    ("qwen2", True, 48, 96, 4, 2),
    ("llama", False, 80, 160, 4, 1),
]


@pytest.mark.parametrize("family,biases,hidden,inter,heads,kv", CONFIGS)
def test_tiny_invariance_float64(family, biases, hidden, inter, heads, kv):
    model = tiny_llama(seed=2, family=family, biases=biases, hidden=hidden, intermediate=inter, heads=heads,
                       kv_heads=kv, dtype=torch.float64)
    _float64_norms(model)
    rotated = copy.deepcopy(model)
    info = rotate_model(rotated, seed=7)
    with torch.no_grad():
        ref = model(IDS).logits
        out = rotated(IDS).logits
    assert (out - ref).abs().max() < 1e-10 * ref.abs().max()
    assert info.hidden_size == hidden and rotation_of(rotated) == info
    assert rotated.model.layers[0].mlp.down_proj.online_hadamard


def test_tiny_invariance_with_library_norms():
    """With transformers' RMSNorm (float32 inside) the float64 model still agrees to float32 rounding."""
    model = tiny_llama(seed=4, family="qwen2", dtype=torch.float64)
    rotated = copy.deepcopy(model)
    rotate_model(rotated, seed=1)
    with torch.no_grad():
        ref, out = model(IDS).logits, rotated(IDS).logits
    assert (out - ref).abs().max() < 1e-5 * ref.abs().max()


def test_residual_stream_is_rotated_by_q():
    """Between layers the rotated model carries h Q, h the original hidden state, Q = random_hadamard(seed)."""
    model = tiny_llama(seed=5, biases=True, dtype=torch.float64)
    _float64_norms(model)
    rotated = copy.deepcopy(model)
    rotate_model(rotated, seed=11)
    q = random_hadamard(64, 11)
    with torch.no_grad():
        h = model(IDS, output_hidden_states=True).hidden_states
        hr = rotated(IDS, output_hidden_states=True).hidden_states
    for a, b in zip(h[:-1], hr[:-1]):  # the last entry is after the final norm, which was fused away
        torch.testing.assert_close(b, a @ q, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(hr[1], h[1])


def test_weights_change_and_norms_are_fused():
    model = tiny_llama(seed=6, dtype=torch.float64)
    rotated = copy.deepcopy(model)
    rotate_model(rotated, seed=0)
    assert isinstance(rotated.model.layers[1].self_attn.v_proj, QLinear)
    assert not isinstance(rotated.lm_head, QLinear)
    for norm in (rotated.model.norm, rotated.model.layers[0].input_layernorm):
        assert torch.equal(norm.weight, torch.ones_like(norm.weight))
    assert not torch.allclose(rotated.model.embed_tokens.weight, model.model.embed_tokens.weight)
    # an orthogonal map keeps each embedding row's norm
    torch.testing.assert_close(rotated.model.embed_tokens.weight.norm(dim=1), model.model.embed_tokens.weight.norm(dim=1))


def test_fuse_norms_alone_is_invariant():
    model = tiny_llama(seed=8, biases=True, dtype=torch.float64)
    _float64_norms(model)
    fused = copy.deepcopy(model)
    fuse_norms(fused)
    with torch.no_grad():
        torch.testing.assert_close(fused(IDS).logits, model(IDS).logits, rtol=1e-12, atol=1e-12)


def test_rotation_errors():
    model = tiny_llama(seed=0)
    rotate_model(model)
    with pytest.raises(QiftError, match="already rotated"):
        rotate_model(model)
    odd = tiny_llama(seed=0, hidden=64, intermediate=90)
    with pytest.raises(QiftError, match="intermediate size 90"):
        rotate_model(odd)


def test_rotation_info_roundtrip():
    info = RotationInfo(seed=3, hidden_size=576, intermediate_size=1536, head_dim=64, num_layers=30)
    assert RotationInfo.from_dict(info.to_dict()) == info


def test_smollm2_invariance_on_real_text(smollm2):
    """576 = 36 x 16 and 1536 = 12 x 128: the rotated SmolLM2 gives the same logits on pydoc text."""
    model, tok = smollm2
    ids = get_windows(tok, "pydoc", "eval", seqlen=128, n=1)
    rotated = copy.deepcopy(model)
    rotate_model(rotated, seed=0)
    with torch.no_grad():
        ref = model(ids).logits
        out = rotated(ids).logits
    err = (out - ref).abs().max() / ref.abs().max()
    assert err < 2e-5, f"relative max logit error {err:.3g}"
    assert torch.equal(out.argmax(-1), ref.argmax(-1))
