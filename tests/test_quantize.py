"""Sequential calibration, mixed-precision selection and resume, on tiny random LLaMA models.

The sequential-calibration check is independent of the driver's own bookkeeping: it runs the *finished*
quantized model with plain PyTorch pre-hooks, rebuilds every linear's Hessian from the inputs it really sees
(which, with true-sequential GPTQ, depend only on the weights quantized before it), quantizes each linear
alone with `gptq_quantize`, and requires the same codes.
"""

import json

import pytest
import torch

import qift_hw.algo.layer as layer_module
from qift_hw.algo.capture import capture_layer_inputs, layer_forward
from qift_hw.algo.checkpoint import quantized_weights
from qift_hw.algo.config import QuantConfig
from qift_hw.algo.gptq import gptq_quantize, rtn_quantize
from qift_hw.algo.layer import layer_linears, quantize_layer
from qift_hw.algo.mixed import W2Spec, parse_w2_spec, pick_least_sensitive, select_w2_layers
from qift_hw.algo.models import iter_linears, tiny_llama
from qift_hw.algo.prepare import prepare_model
from qift_hw.algo.quantize import quantize_model
from qift_hw.core.errors import QiftError
from qift_hw.core.levels import LEVEL_SETS, get_level_set

torch.set_num_threads(2)
VOCAB = 256


def windows(n, seqlen, seed):
    return torch.randint(0, VOCAB, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def small_cfg(**kw):
    base = dict(levels="mnz", method="gptq", calib_windows=6, calib_seqlen=32, batch_size=4,
                hessian_dtype="float64", gptq_dtype="float64", blocksize=16, scale_method="maxabs")
    base.update(kw)
    return QuantConfig(**base)


# ---- mixed-precision selection -------------------------------------------------------------------------------

@pytest.mark.parametrize("spec,expected", [
    ("all", [0, 1, 2, 3, 4, 5]),
    ("none", []),
    ("first:2", [0, 1]),
    ("last:2", [4, 5]),
    ("0,1,5", [0, 1, 5]),
    ("5, 0,2-3", [0, 2, 3, 5]),
    ("first:0", []),
])
def test_select_w2_layers(spec, expected):
    assert select_w2_layers(spec, 6) == expected


def test_sensitivity_selection_takes_smallest_scores():
    scores = [0.5, 0.1, 0.3, 0.1, 0.9, 0.2]
    assert select_w2_layers("sensitivity:3", 6, scores) == [1, 3, 5]
    assert pick_least_sensitive({7: 1.0, 2: 0.5, 4: 0.7}, 2) == [2, 4]
    assert parse_w2_spec("sensitivity:4") == W2Spec("sensitivity", count=4)


@pytest.mark.parametrize("bad", ["middle:3", "first:x", "1,a", "3-1", "", "first:-1"])
def test_bad_w2_specs(bad):
    with pytest.raises(QiftError):
        parse_w2_spec(bad)


def test_w2_spec_out_of_range():
    with pytest.raises(QiftError, match="out of range"):
        select_w2_layers("0,9", 6)
    with pytest.raises(QiftError):
        select_w2_layers("last:7", 6)
    with pytest.raises(QiftError, match="score"):
        select_w2_layers("sensitivity:2", 6)


def test_config_reads_the_old_seed_key_and_resolves_the_level_set():
    cfg = QuantConfig.from_dict({"seed": 3, "levels": "MNZ", "not_a_field": 1})
    assert cfg.calib_seed == 3
    assert cfg.level_set is LEVEL_SETS["mnz"] and cfg.validate() is LEVEL_SETS["mnz"]
    assert QuantConfig.from_dict({"seed": 3, "calib_seed": 5}).calib_seed == 5
    assert QuantConfig(other_bits=16).other_level_set is None
    assert QuantConfig(other_bits=3).other_level_set is LEVEL_SETS["int3"]
    assert QuantConfig(levels="ratio:0.25").level_set.levels.tolist() == [-1.0, -0.25, 0.25, 1.0]


def test_bad_config():
    for kw in ({"levels": "int4"}, {"levels": "nope"}, {"method": "awq"}, {"other_bits": 5}, {"calib_windows": 0}):
        with pytest.raises(QiftError):
            small_cfg(**kw).validate()


# ---- sequential calibration -----------------------------------------------------------------------------------

def _hessians_from_finished_model(model, calib):
    """Inputs of every QLinear (after its own online Hadamard and act quantizer) in the finished model."""
    sums, counts, handles = {}, {}, []
    for name, lin in iter_linears(model):
        def hook(mod, args, name=name):
            x = mod.transform_input(args[0]).reshape(-1, mod.in_features).double()
            sums[name] = sums.get(name, 0) + x.T @ x
            counts[name] = counts.get(name, 0) + x.shape[0]
        handles.append(lin.register_forward_pre_hook(hook))
    with torch.no_grad():
        model(input_ids=calib, use_cache=False)
    for h in handles:
        h.remove()
    return {n: 2 * sums[n] / counts[n] for n in sums}


@pytest.mark.parametrize("rotate,a_bits,kv_bits,levels,scale", [(False, 16, 16, "mnz", "mse"),
                                                                 (True, 4, 4, "std", "maxabs"),
                                                                 (True, 4, 4, "asym", "maxabs")])
def test_sequential_gptq_matches_per_linear_reference(rotate, a_bits, kv_bits, levels, scale):
    calib = windows(6, 32, seed=1)
    model = tiny_llama(seed=3, layers=2, biases=True)
    cfg = small_cfg(levels=levels, rotate=rotate, a_bits=a_bits, kv_bits=kv_bits, w2_layers="0", scale_method=scale)
    qm = quantize_model(model, None, cfg, calib=calib, progress=False)
    assert qm.layer_level_sets == [LEVEL_SETS[levels], LEVEL_SETS["int4"]]
    H = _hessians_from_finished_model(model, calib)
    for name, lin in iter_linears(model):
        ql = qm.weights[name]
        ref = gptq_quantize(lin.weight.detach(), H[name], LEVEL_SETS[ql.level_set.name], blocksize=16,
                            scale_method=scale, compute_dtype=torch.float64)
        mismatch = (ref.codes != ql.codes).float().mean().item()
        assert mismatch == 0.0, (name, mismatch)
        torch.testing.assert_close(ref.params.scale, ql.params.scale)
        assert torch.equal(lin.effective_weight(), ql.dequantized().to(lin.weight.dtype))


def test_one_pass_gptq_matches_per_linear_reference():
    # one pass: every linear of layer i is calibrated on the model with layers < i quantized and layer i float
    calib = windows(6, 32, seed=1)
    model = tiny_llama(seed=3, layers=2, biases=True)
    cfg = small_cfg(levels="pot_mnz", true_sequential=False, rotate=True, a_bits=4, kv_bits=4)
    qm = quantize_model(model, None, cfg, calib=calib, progress=False)
    for layer in model.model.layers:
        done = {lin.name: lin.qweight for lin in layer_linears(layer)}
        for lin in layer_linears(layer):
            lin.set_qweight(None)
        H = _hessians_from_finished_model(model, calib)
        for lin in layer_linears(layer):
            ref = gptq_quantize(lin.weight.detach(), H[lin.name], LEVEL_SETS["pot_mnz"], blocksize=16,
                                scale_method="maxabs", compute_dtype=torch.float64)
            assert torch.equal(ref.codes, qm.weights[lin.name].codes), lin.name
            lin.set_qweight(done[lin.name])


def test_rtn_pipeline_equals_rtn_of_rotated_weights():
    from qift_hw.algo.rotation import rotate_model

    model = tiny_llama(seed=4, layers=2)
    ref_model = tiny_llama(seed=4, layers=2)
    rotate_model(ref_model, seed=0)
    qm = quantize_model(model, None, small_cfg(method="rtn", levels="pot_mnz"), progress=False)
    for (name, lin), (_, ref_lin) in zip(iter_linears(model), iter_linears(ref_model)):
        ref = rtn_quantize(ref_lin.weight.detach(), get_level_set("pot_mnz"), "maxabs")
        assert torch.equal(ref.codes, qm.weights[name].codes), name
        assert torch.equal(lin.effective_weight(), ref.deq)


def test_mixed_layers_use_other_bits():
    model = tiny_llama(seed=5, layers=3)
    qm = quantize_model(model, None, small_cfg(method="rtn", w2_layers="last:1", other_bits=3), progress=False)
    assert qm.w2_layers == [2]
    assert qm.layer_level_set_names() == ["int3", "int3", "mnz"]
    for name, ql in qm.weights.items():
        assert ql.level_set.name == ("mnz" if name.startswith("model.layers.2.") else "int3")
        assert int(ql.codes.max()) < (4 if ql.level_set.name == "mnz" else 8)


def test_sensitivity_pass_selects_by_scores():
    calib = windows(6, 32, seed=2)
    model = tiny_llama(seed=6, layers=3)
    qm = quantize_model(model, None, small_cfg(w2_layers="sensitivity:1", sensitivity_windows=4), calib=calib,
                        progress=False)
    assert len(qm.sensitivity) == 3 and all(s == s for s in qm.sensitivity)
    assert qm.w2_layers == pick_least_sensitive(qm.sensitivity, 1)
    assert [ls == "mnz" for ls in qm.layer_level_set_names()] == [i in qm.w2_layers for i in range(3)]


# ---- resume ---------------------------------------------------------------------------------------------------

def test_interrupted_run_resumes_to_the_same_result(tmp_path, monkeypatch):
    calib = windows(6, 32, seed=7)
    probe = windows(2, 32, seed=8)
    cfg = small_cfg(levels="nf2", a_bits=4, kv_bits=4, hessian_dtype="float32", gptq_dtype="float32")

    full_model = tiny_llama(seed=9, layers=3)
    full = quantize_model(full_model, None, cfg, calib=calib, progress=False)

    real = layer_module.gptq_quantize
    calls = {"n": 0}

    def flaky(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 6:  # layer 1, second group: layer 0 is checkpointed, layer 1 is not
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(layer_module, "gptq_quantize", flaky)
    with pytest.raises(KeyboardInterrupt):
        quantize_model(tiny_llama(seed=9, layers=3), None, cfg, calib=calib, run_dir=tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.glob("layer_*")) == ["layer_000.safetensors"]
    monkeypatch.setattr(layer_module, "gptq_quantize", real)

    resumed_model = tiny_llama(seed=9, layers=3)
    resumed = quantize_model(resumed_model, None, cfg, calib=calib, run_dir=tmp_path, progress=False)
    assert resumed.resumed_layers == 1
    for name, ql in full.weights.items():
        assert torch.equal(ql.codes, resumed.weights[name].codes), name
        assert torch.equal(ql.params.scale, resumed.weights[name].params.scale), name
    with torch.no_grad():
        assert torch.equal(full_model(probe).logits, resumed_model(probe).logits)

    with pytest.raises(QiftError, match="different configuration"):
        quantize_model(tiny_llama(seed=9, layers=3), None, small_cfg(levels="mnz"), calib=calib, run_dir=tmp_path,
                       progress=False)


def test_run_folder_layers_are_stored_like_an_exported_checkpoint(tmp_path):
    from safetensors import safe_open

    cfg = small_cfg(method="rtn", w2_layers="1", other_bits=3)
    qm = quantize_model(tiny_llama(seed=9, layers=2), None, cfg, run_dir=tmp_path, progress=False)
    for index in (0, 1):
        path = tmp_path / f"layer_{index:03d}.safetensors"
        stored = quantized_weights(path)
        assert sorted(stored) == sorted(n for n in qm.weights if n.startswith(f"model.layers.{index}."))
        for name, ql in stored.items():
            assert ql.level_set is LEVEL_SETS["mnz" if index == 1 else "int3"]
            assert torch.equal(ql.codes, qm.weights[name].codes)
            assert torch.equal(ql.params.scale, qm.weights[name].params.scale)
    name = "model.layers.1.mlp.up_proj"
    codes = qm.weights[name].codes
    with safe_open(str(tmp_path / "layer_001.safetensors"), framework="pt") as f:
        packed = f.get_tensor(f"{name}.qcodes")  # four 2-bit codes per byte, first code in the low bits
    assert torch.equal(packed[:, 0], codes[:, 0] | (codes[:, 1] << 2) | (codes[:, 2] << 4) | (codes[:, 3] << 6))


def test_run_folders_of_the_old_layer_format_are_refused(tmp_path):
    cfg = small_cfg(method="rtn")
    (tmp_path / "config.json").write_text(json.dumps({"model": "", **cfg.identity()}))
    with pytest.raises(QiftError, match="older layer-checkpoint format.*delete it"):
        quantize_model(tiny_llama(seed=9, layers=2), None, cfg, run_dir=tmp_path, progress=False)


def test_sequential_layer_outputs_equal_a_plain_forward_of_the_quantized_layer():
    # the cached attention output and down_proj input must give exactly what running the finished layer gives
    model = tiny_llama(seed=6, layers=2, biases=True)
    cfg = small_cfg(levels="mnz", a_bits=4, kv_bits=4, batch_size=2)
    prepare_model(model, cfg)
    batches = capture_layer_inputs(model, windows(6, 32, seed=2), cfg.batch_size, "cpu")
    layer = model.model.layers[0]
    _, _, outs = quantize_layer(layer, batches, LEVEL_SETS["mnz"], cfg, 0)
    assert len(layer_linears(layer)) == 7 and all(lin.qweight is not None for lin in layer_linears(layer))
    assert len(outs) == len(batches) == 3
    for (y, kw_out), (x, kw) in zip(outs, batches):
        assert kw_out is kw
        with torch.no_grad():
            assert torch.equal(y, layer_forward(layer, x, kw))
    assert "forward" not in layer.self_attn.__dict__ and "forward" not in layer.mlp.__dict__
