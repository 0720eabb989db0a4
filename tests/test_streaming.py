"""The streaming (layer by layer, memory-mapped) pipeline against the in-memory one on a tiny sharded LLaMA."""

import copy
import json

import pytest
import torch

from qift_hw.algo.checkpoint import quantized_weights
from qift_hw.algo.config import QuantConfig
from qift_hw.algo.evaluate import window_nlls
from qift_hw.algo.models import tiny_llama
from qift_hw.algo.quantize import quantize_model
from qift_hw.algo.streaming import INDEX, stream_run
from qift_hw.core.errors import QiftError

VOCAB = 256


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """A 3-layer random LLaMA saved in several safetensors shards, and the same model in memory."""
    model = tiny_llama(seed=3, layers=3, hidden=64, intermediate=128, vocab=VOCAB)
    folder = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(folder, max_shard_size="60KB")
    return folder, model


def _windows(seed: int, n: int, seqlen: int = 16) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def test_checkpoint_is_sharded(sharded):
    folder, _ = sharded
    assert len(set(json.loads((folder / INDEX).read_text())["weight_map"].values())) >= 2


@pytest.mark.parametrize("method,w2", [("gptq", "all"), ("rtn", "0,2")])
def test_stream_equals_in_memory(sharded, tmp_path, method, w2):
    folder, model = sharded
    cfg = QuantConfig(levels="mnz", method=method, w2_layers=w2, other_bits=4, calib_windows=4, calib_seqlen=16,
                      batch_size=2)
    calib, ev = _windows(1, 4), _windows(2, 3)
    res = stream_run(folder, cfg, calib=calib, eval_windows=ev, out=tmp_path / "q", keep_weights=True,
                     progress=False)

    ref = copy.deepcopy(model)
    qm = quantize_model(ref, None, cfg, calib=calib, progress=False)
    ref_nlls = window_nlls(ref, ev, progress=False)

    assert res.w2_layers == qm.w2_layers
    assert torch.equal(res.nlls, ref_nlls)
    on_disk = quantized_weights(tmp_path / "q")
    assert set(on_disk) == set(qm.weights) == set(res.weights)
    for name, ql in qm.weights.items():
        for got in (res.weights[name], on_disk[name]):
            assert torch.equal(got.codes.to(ql.codes.dtype), ql.codes), name
            assert torch.equal(got.params.scale, ql.params.scale), name


def test_stream_float_perplexity(sharded):
    folder, model = sharded
    ev = _windows(4, 2)
    res = stream_run(folder, None, eval_windows=ev, progress=False)
    assert torch.equal(res.nlls, window_nlls(model, ev, progress=False))


def test_missing_shard_is_one_error(sharded, tmp_path):
    folder, _ = sharded
    broken = tmp_path / "broken"
    broken.mkdir()
    shards = sorted({*json.loads((folder / INDEX).read_text())["weight_map"].values()})
    for f in folder.iterdir():
        if f.name != shards[-1]:
            (broken / f.name).write_bytes(f.read_bytes())
    with pytest.raises(QiftError, match=f"shard {shards[-1]} .* is missing"):
        stream_run(broken, None, eval_windows=_windows(5, 1), progress=False)


def test_sensitivity_layers_refused(sharded):
    folder, _ = sharded
    cfg = QuantConfig(method="rtn", w2_layers="sensitivity:1")
    with pytest.raises(QiftError, match="sensitivity pass"):
        stream_run(folder, cfg, progress=False)


def test_cli_eval_stream_equals_in_memory(sharded, tmp_path):
    """`qift-hw eval --stream` on a folder with a tokenizer: the perplexity of the in-memory pipeline's point."""
    import shutil

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from typer.testing import CliRunner

    from qift_hw.algo.data import get_windows
    from qift_hw.algo.evaluate import evaluate_ppl
    from qift_hw.algo.models import load_model
    from qift_hw.cli import app

    src, _ = sharded
    folder = tmp_path / "model"
    shutil.copytree(src, folder)
    vocab = {"[UNK]": 0, **{f"w{i}": i + 1 for i in range(VOCAB - 1)}}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]").save_pretrained(folder)
    words = [f"w{int(i)}" for i in _windows(6, 1, 4000)[0] % (VOCAB - 1) + 1]
    text = tmp_path / "text.txt"
    text.write_text("\n\n".join(" ".join(words[i:i + 50]) for i in range(0, len(words), 50)) + "\n")

    args = ["--model", str(folder), "--text", str(text), "--levels", "mnz", "--method", "rtn", "--w2-layers", "all",
            "--windows", "2", "--seqlen", "16", "--no-progress"]
    res = CliRunner().invoke(app, ["eval", "--stream", *args, "--out", str(tmp_path / "out"),
                                   "--export", str(tmp_path / "shards")])
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "out" / "results.json").read_text())["rows"][0]["ppl"]

    model, tok = load_model(str(folder))
    cfg = QuantConfig(levels="mnz", method="rtn", w2_layers="all", calib_source=str(text))
    quantize_model(model, tok, cfg, progress=False)
    ev = get_windows(tok, str(text), "eval", 16, 2)
    assert got == evaluate_ppl(model, ev, progress=False)
    assert (tmp_path / "shards" / "qift-index.json").is_file()

    bad = CliRunner().invoke(app, ["eval", "--stream", *args[2:], "--model", "smollm2"])
    assert isinstance(bad.exception, QiftError) and "local Hugging Face checkpoint folder" in str(bad.exception)
