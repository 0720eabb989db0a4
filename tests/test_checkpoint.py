"""Quantized checkpoints: reloading gives the same logits bit for bit; the file holds packed codes."""

import pytest
import torch

from qift_hw.algo.checkpoint import (load_quantized, quantized_weights, read_metadata, read_quantized,
                                     save_quantized)
from qift_hw.algo.config import QuantConfig
from qift_hw.algo.evaluate import evaluate_ppl
from qift_hw.algo.models import tiny_llama
from qift_hw.algo.quantize import quantize_model
from qift_hw.core.errors import QiftError
from qift_hw.core.levels import unpack_codes

torch.set_num_threads(2)


def _windows(n, seqlen, seed):
    return torch.randint(0, 256, (n, seqlen), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("levels,w2,other,rotate,method", [
    ("pot_mnz", "all", 4, True, "gptq"),
    ("asym", "0", 3, True, "gptq"),
    ("std", "last:1", 4, False, "rtn"),
])
def test_round_trip_is_bit_exact(tmp_path, levels, w2, other, rotate, method):
    calib, probe = _windows(4, 32, 1), _windows(3, 32, 2)
    model = tiny_llama(seed=11, layers=2, biases=True)
    cfg = QuantConfig(levels=levels, method=method, w2_layers=w2, other_bits=other, rotate=rotate,
                      calib_windows=4, calib_seqlen=32, batch_size=2,
                      scale_method="mse" if levels == "asym" else "maxabs")
    qm = quantize_model(model, None, cfg, calib=calib, progress=False)
    path = save_quantized(tmp_path / "q.safetensors", qm, model_id="tiny")
    assert not list(tmp_path.glob(".*"))  # the atomic write left no temporary file

    reloaded, meta = load_quantized(path)
    assert meta["model_id"] == "tiny" and meta["w2_layers"] == qm.w2_layers
    assert (meta["rotation"] is not None) == rotate
    with torch.no_grad():
        assert torch.equal(model(probe).logits, reloaded(probe).logits)
    assert evaluate_ppl(model, probe, progress=False) == evaluate_ppl(reloaded, probe, progress=False)

    stored = quantized_weights(path)
    assert stored.keys() == qm.weights.keys()
    for name, ql in qm.weights.items():
        assert torch.equal(stored[name].codes, ql.codes) and stored[name].level_set == ql.level_set

    once, meta_once, weights = read_quantized(path)  # one read gives the model and the linears together
    assert meta_once == meta and weights.keys() == qm.weights.keys()
    with torch.no_grad():
        assert torch.equal(once(probe).logits, model(probe).logits)
    for name, ql in qm.weights.items():
        got = weights[name]
        assert torch.equal(got.codes, ql.codes) and got.level_set == ql.level_set
        assert torch.equal(got.dequantized(), ql.dequantized())


def test_two_bit_codes_are_packed_four_per_byte(tmp_path):
    from safetensors import safe_open

    model = tiny_llama(seed=12, layers=1)
    qm = quantize_model(model, None, QuantConfig(levels="mnz", method="rtn", scale_method="maxabs"), progress=False)
    path = save_quantized(tmp_path / "q.safetensors", qm)
    name = "model.layers.0.mlp.down_proj"
    N, K = qm.weights[name].codes.shape
    with safe_open(str(path), framework="pt") as f:
        packed = f.get_tensor(f"{name}.qcodes")
        assert f"{name}.weight" not in f.keys()
    assert packed.dtype == torch.uint8 and packed.shape == (N, (K + 3) // 4)
    codes = qm.weights[name].codes
    first = codes[:, 0] | (codes[:, 1] << 2) | (codes[:, 2] << 4) | (codes[:, 3] << 6)
    assert torch.equal(packed[:, 0], first)
    assert torch.equal(unpack_codes(packed, K), codes)


def test_bad_checkpoints(tmp_path):
    with pytest.raises(QiftError, match="does not exist"):
        read_metadata(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00garbage")
    with pytest.raises(QiftError):
        load_quantized(junk)
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(other))
    with pytest.raises(QiftError, match="not a qift-hw checkpoint"):
        load_quantized(other)
