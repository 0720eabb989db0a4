"""A streaming run's output folder is a checkpoint: `load_quantized` rebuilds the model the run evaluated."""

import copy
import json
import shutil

import pytest
import torch

from qift_hw.algo.checkpoint import load_quantized, quantized_weights
from qift_hw.algo.config import QuantConfig
from qift_hw.algo.evaluate import ppl_from_nlls, window_nlls
from qift_hw.algo.quantize import quantize_model
from qift_hw.algo.streaming import stream_run
from qift_hw.core.errors import QiftError
from test_streaming import VOCAB, _windows, sharded  # noqa: F401  (the tiny sharded LLaMA fixture, token windows)

# GPTQ (true-sequential) on W2 layers 0 and 2, int4 on layer 1, rotation, A4KV4; and RTN on layer 1 only (layers
# 0 and 2 stay float), no rotation, A8KV8 with a clip: every setting the loader must take from the index.
CONFIGS = {
    "gptq-rotated": QuantConfig(levels="mnz", method="gptq", w2_layers="0,2", other_bits=4, calib_windows=4,
                                calib_seqlen=16, batch_size=2, rotation_seed=7),
    "rtn-plain": QuantConfig(levels="pot_mnz", method="rtn", w2_layers="1", other_bits=16, rotate=False, a_bits=8,
                             kv_bits=8, a_clip=0.9, scale_method="maxabs"),
}


def _stream(folder, out, cfg):
    calib = _windows(1, 4) if cfg.method == "gptq" else None
    return stream_run(folder, cfg, calib=calib, eval_windows=_windows(2, 3), out=out, progress=False)


@pytest.fixture(scope="module")
def streamed(sharded, tmp_path_factory):
    """Each config streamed once into its own output folder: {name: (folder, StreamResult)}."""
    folder, _ = sharded
    root = tmp_path_factory.mktemp("streamed")
    return {name: (root / name, _stream(folder, root / name, cfg)) for name, cfg in CONFIGS.items()}


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("name", list(CONFIGS))
def test_loaded_equals_in_memory_quantization(sharded, streamed, name):
    """Same dequantized weights and logits as `quantize_model` in memory, and the NLLs / perplexity the run reported.

    Bit-equal is expected: the loader installs the same dequantized float32 weights and float tensors and runs the
    same forward (rotation, activation/KV quantizers) as the in-memory reference.
    """
    _, model = sharded
    out, res = streamed[name]
    cfg = CONFIGS[name]
    ref = copy.deepcopy(model)
    qm = quantize_model(ref, None, cfg, calib=_windows(1, 4) if cfg.method == "gptq" else None, progress=False)

    loaded, meta = load_quantized(out)
    assert meta["quant_config"] == cfg.to_dict() and meta["w2_layers"] == qm.w2_layers
    assert set(meta["linears"]) == set(qm.weights)
    modules = dict(loaded.named_modules())
    for lname, ql in qm.weights.items():
        assert torch.equal(modules[lname].effective_weight(), ql.dequantized()), lname
    ref_state, got_state = ref.state_dict(), loaded.state_dict()
    assert set(ref_state) == set(got_state)
    for key in ref_state:
        if key.rsplit(".", 1)[0] not in qm.weights:
            assert torch.equal(got_state[key], ref_state[key]), key

    ids = _windows(3, 2)
    assert torch.equal(_logits(loaded, ids), _logits(ref, ids))
    ev = _windows(2, 3)
    nlls = window_nlls(loaded, ev, progress=False)
    assert torch.equal(nlls, window_nlls(ref, ev, progress=False))
    assert torch.equal(nlls, res.nlls)
    assert ppl_from_nlls(nlls, ev.shape[1]) == res.ppl


def test_index_records_what_loading_needs(sharded, streamed):
    folder, _ = sharded
    out, _ = streamed["gptq-rotated"]
    index = json.loads((out / "qift-index.json").read_text())
    assert index["source"] == str(folder.resolve()) and index["model_id"] == str(folder.resolve())
    assert index["rotation"]["seed"] == 7 and index["quant_config"]["rotation_seed"] == 7
    assert index["hf_config"]["num_hidden_layers"] == 3
    assert set(index["digests"]) == set(index["files"]) == {"rest.safetensors", *(f"layer-{i:05d}.safetensors"
                                                                                   for i in range(3))}
    assert {"commit", "libraries", "utc"} <= set(index["provenance"])


def test_loading_needs_no_source_shards(sharded, tmp_path):
    """The output is self-contained: with the source folder deleted it loads to the same logits."""
    src, model = sharded
    copy_src = tmp_path / "src"
    shutil.copytree(src, copy_src)
    cfg = CONFIGS["rtn-plain"]
    _stream(copy_src, tmp_path / "q", cfg)
    shutil.rmtree(copy_src)
    loaded, meta = load_quantized(tmp_path / "q")
    assert meta["source"] == str(copy_src.resolve())
    ref = copy.deepcopy(model)
    quantize_model(ref, None, cfg, progress=False)
    ids = _windows(4, 1)
    assert torch.equal(_logits(loaded, ids), _logits(ref, ids))


def _refused(path, *parts, reader=load_quantized):
    with pytest.raises(QiftError) as exc:
        reader(path)
    msg = str(exc.value)
    assert "\n" not in msg, msg
    for part in parts:
        assert part in msg, msg


@pytest.fixture
def copied(streamed, tmp_path):
    out = tmp_path / "q"
    shutil.copytree(streamed["gptq-rotated"][0], out)
    return out


@pytest.mark.parametrize("reader", [load_quantized, quantized_weights])
def test_missing_layer_file(copied, reader):
    (copied / "layer-00001.safetensors").unlink()
    _refused(copied, "layer-00001.safetensors is missing", "eval --stream --export", reader=reader)


def test_corrupt_layer_file(copied):
    path = copied / "layer-00002.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    _refused(copied, "layer-00002.safetensors", "does not match its content digest")
    path.write_bytes(bytes(data[: len(data) // 2]))
    _refused(copied, "layer-00002.safetensors", "re-export")


def test_layer_file_of_another_run(copied, streamed):
    """A layer file that is a valid checkpoint file of another run (its own digest checks) is refused by the
    index's digest."""
    shutil.copy(streamed["rtn-plain"][0] / "layer-00001.safetensors", copied / "layer-00001.safetensors")
    _refused(copied, "layer-00001.safetensors is not the file this run wrote")


def test_unfinished_or_old_index(copied):
    index = copied / "qift-index.json"
    text = json.loads(index.read_text())
    del text["digests"]
    index.write_text(json.dumps(text))
    _refused(copied, "lacks entry 'digests'", "again")
    index.write_text("{not json")
    _refused(copied, "qift-index.json is not readable JSON")
    index.unlink()
    _refused(copied, "without qift-index.json", "eval --stream --export")


def test_float_output_refused(sharded, tmp_path):
    folder, _ = sharded
    stream_run(folder, None, out=tmp_path / "f", progress=False)
    _refused(tmp_path / "f", "holds the float model", str(folder.resolve()))
    assert quantized_weights(tmp_path / "f") == {}


def test_cli_eval_checkpoint_of_streamed_folder(sharded, tmp_path):
    """`qift-hw eval-checkpoint` on an `eval --stream --export` folder prints the perplexity the stream run wrote;
    with the source folder (its tokenizer) gone it is one error."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from typer.testing import CliRunner

    from qift_hw.cli import app

    src, _ = sharded
    folder = tmp_path / "model"
    shutil.copytree(src, folder)
    raw = Tokenizer(models.WordLevel({"[UNK]": 0, **{f"w{i}": i + 1 for i in range(VOCAB - 1)}}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]").save_pretrained(folder)
    words = [f"w{int(i)}" for i in _windows(6, 1, 2000)[0] % (VOCAB - 1) + 1]
    text = tmp_path / "text.txt"
    text.write_text("\n\n".join(" ".join(words[i:i + 50]) for i in range(0, len(words), 50)) + "\n")
    common = ["--text", str(text), "--windows", "2", "--seqlen", "16", "--no-progress"]
    res = CliRunner().invoke(app, ["eval", "--stream", "--model", str(folder), "--levels", "mnz", "--method", "rtn",
                                   "--w2-layers", "all", *common, "--out", str(tmp_path / "out"),
                                   "--export", str(tmp_path / "shards")])
    assert res.exit_code == 0, res.output
    want = json.loads((tmp_path / "out" / "results.json").read_text())["rows"][0]["ppl"]

    res = CliRunner().invoke(app, ["eval-checkpoint", str(tmp_path / "shards"), *common])
    assert res.exit_code == 0, res.output
    assert f"ppl {want:.6f} on 2 x 16 tokens" in res.output
    res = CliRunner().invoke(app, ["eval-checkpoint", str(tmp_path / "shards"), *common, "--backend", "int"])
    assert res.exit_code == 0 and "ppl " in res.output, res.output

    shutil.rmtree(folder)
    bad = CliRunner().invoke(app, ["eval-checkpoint", str(tmp_path / "shards"), *common])
    assert isinstance(bad.exception, QiftError) and "\n" not in str(bad.exception)
    assert f"tokenizer from {folder.resolve()}, which no longer exists; pass --model" in str(bad.exception)
