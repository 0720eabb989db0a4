"""Task accuracy through lm-eval: the local last-word task, HFLM on a tiny model against a brute-force greedy
check, the CLI, and the error for a task whose data is unreachable."""

import json
import math
import re

import pytest
import torch

pytest.importorskip("lm_eval", reason="lm-eval is not installed; `pip install -e .[tasks]`")

from qift_hw.core.errors import QiftError  # noqa: E402
from qift_hw.study import tasks as T  # noqa: E402


@pytest.fixture(scope="module")
def tok():
    """The embedded SmolLM2 tokenizer (a real BPE tokenizer; the model itself is not loaded)."""
    from transformers import AutoTokenizer

    from qift_hw.algo.models import smollm2_location

    folder, name = smollm2_location()
    return AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)


def test_lastword_examples_are_the_last_words_of_long_paragraphs():
    paras = ["one two three four five.", "too short", "ends in code f(x)", "alpha   beta\n gamma delta?",
             "  indented lines\n   of prose end here", "numbers at the end 42", "a b c d e f!"]
    text = "\n\n".join(paras) + "\n \n" + "after a blank line with a space, last"
    got = T.lastword_examples(text, min_words=4)
    expected = []
    for p in text.replace("\n \n", "\n\n").split("\n\n"):
        words = p.split()
        last = words[-1] if words else ""
        plain = last.rstrip(".!?")
        if len(words) >= 4 and plain.isalpha() and plain.isascii() and len(last) - len(plain) <= 1:
            expected.append({"context": " ".join(words[:-1]), "target": plain})
    assert got == expected
    assert [e["target"] for e in got] == ["five", "delta", "here", "f", "last"]


def test_local_task_targets_are_true_last_words_and_files_are_deterministic(tmp_path):
    from qift_hw.algo.data import load_text

    a = T.build_local_task(tmp_path / "a")
    b = T.build_local_task(tmp_path / "b")
    again = T.build_local_task(tmp_path / "a")
    rows = [json.loads(line) for line in (a.folder / "qift_lastword.jsonl").read_text().splitlines()]
    assert a.examples == len(rows) >= 300
    assert (a.folder / "qift_lastword.jsonl").read_bytes() == (b.folder / "qift_lastword.jsonl").read_bytes()
    assert a.data_digest == b.data_digest == again.data_digest and again.folder == a.folder
    ya, yb = ((x.folder / "qift_lastword.yaml").read_text() for x in (a, b))
    assert ya.replace(str(a.folder), "F") == yb.replace(str(b.folder), "F")
    # each example is a whole paragraph of the eval text, its target the paragraph's last word
    paragraphs = {" ".join(p.split()) for p in re.split(r"\n\s*\n", load_text("pydoc", "eval"))}
    for r in rows:
        words = (r["context"] + " " + r["target"]).split()
        assert words[-1] == r["target"] and r["target"].isalpha()
        assert any(" ".join(words) + end in paragraphs for end in ("", ".", "!", "?")), r


def test_local_task_loads_in_lm_eval(tmp_path):
    local = T.build_local_task(tmp_path)
    tm = T.task_manager([T.LOCAL_TASK], local)
    task = tm.load_task_or_group([T.LOCAL_TASK])[T.LOCAL_TASK]
    docs = list(task.test_docs())
    first = json.loads((local.folder / "qift_lastword.jsonl").read_text().splitlines()[0])
    assert len(docs) == local.examples
    assert task.doc_to_text(docs[0]) == first["context"] and task.doc_to_target(docs[0]) == " " + first["target"]


def _bigram_model(tok, examples, seed=0):
    """A tiny random LLaMA whose attention and MLP outputs are zero, so its logits depend on the last token only,
    with lm_head rows set so that the first examples' words are greedy continuations (accuracy strictly between 0
    and 1 on a handful of examples)."""
    from qift_hw.algo.models import tiny_llama

    model = tiny_llama(seed=seed, hidden=64, intermediate=64, layers=2, heads=4, kv_heads=2, vocab=len(tok))
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.norm.weight.fill_(1.0)
        emb = model.model.embed_tokens.weight
        for e in examples[:3]:
            whole = tok.encode(e["context"] + " " + e["target"])
            start = len(tok.encode(e["context"])) - 1
            for a, b in zip(whole[start:-1], whole[start + 1:]):
                model.lm_head.weight[b] = 20 * emb[a] / emb[a].norm()
    return model


def _brute_force(model, tok, examples):
    """lm-eval's `acc` and word perplexity by hand: each example alone, its target tokens those of context +
    " " + target after the context's own tokens; correct when every target token is the argmax."""
    hits, lls = [], []
    with torch.no_grad():
        for e in examples:
            whole = tok.encode(e["context"] + " " + e["target"])
            n_ctx = len(tok.encode(e["context"]))
            target = torch.tensor(whole[n_ctx:])
            logits = model(input_ids=torch.tensor([whole])).logits[0, n_ctx - 1:-1].double()
            hits.append(bool((logits.argmax(-1) == target).all()))
            lls.append(float(torch.log_softmax(logits, -1)[torch.arange(len(target)), target].sum()))
    return sum(hits) / len(hits), math.exp(-sum(lls) / len(lls)), hits


def test_hflm_accuracy_equals_brute_force_greedy_check(tmp_path, tok):
    local = T.build_local_task(tmp_path)
    examples = [json.loads(x) for x in (local.folder / "qift_lastword.jsonl").read_text().splitlines()][:5]
    model = _bigram_model(tok, examples)
    acc, ppl, hits = _brute_force(model, tok, examples)
    assert 0 < acc < 1, hits  # the check means something only if both outcomes occur
    (res,) = T.evaluate_tasks(model, tok, [T.LOCAL_TASK], T.task_manager([T.LOCAL_TASK], local), limit=5,
                              batch_size=2)
    assert res.task == T.LOCAL_TASK and res.examples == 5
    assert res.acc == pytest.approx(acc, abs=1e-12)
    assert res.acc_stderr == pytest.approx(math.sqrt(acc * (1 - acc) / 4), rel=1e-9)  # sample std / sqrt(n)
    assert res.word_perplexity == pytest.approx(ppl, rel=1e-4)
    # the run-spec runner's entry point, on an FP point of the same model
    point = {"tasks": [T.LOCAL_TASK], "text": "pydoc", "kind": "fp", "config": None, "model": "tiny", "label": "FP",
             "backend": "torch", "device": "cpu", "task_limit": 5, "task_folder": str(tmp_path / "p")}
    assert T.evaluate_point_tasks(point, model, tok) == {T.LOCAL_TASK: pytest.approx(acc, abs=1e-12)}


QUANT = ["--levels", "mnz", "--method", "rtn", "--w2-layers", "0", "--other-bits", "4", "--device", "cpu", "--fresh",
         "--no-progress"]
"""A W2 (layer 0) / W4 RTN quantization of the tiny model: quick, and the W2 layer runs on the integer backends."""


def _cli(*args):
    from typer.testing import CliRunner

    from qift_hw.cli import app

    res = CliRunner().invoke(app, list(map(str, args)))
    assert res.exit_code == 0, res.output
    return res


def _rows(out):
    return json.loads((out / "results.json").read_text())["rows"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tok):
    """A saved tiny model folder (with the real tokenizer) and its brute-force accuracy on the first 5 examples."""
    root = tmp_path_factory.mktemp("tiny")
    task = T.build_local_task(root / "probe")
    examples = [json.loads(x) for x in (task.folder / "qift_lastword.jsonl").read_text().splitlines()][:5]
    model = _bigram_model(tok, examples)
    folder = root / "model"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return {"folder": folder, "acc": _brute_force(model, tok, examples)[0], "examples": task.examples}


def test_tasks_command_fp_and_quantized(tmp_path, tiny):
    """`qift-hw tasks` on a saved tiny model: the FP row equals the brute-force check; a W2 RTN point on the
    integer backend gives an accuracy in [0, 1]; results JSON and CSV with provenance."""
    out = tmp_path / "out"
    _cli("tasks", "--model", tiny["folder"], "--limit", 5, "--fp", "--backend", "int", "--out", out, *QUANT)
    data = json.loads((out / "results.json").read_text())
    assert data["provenance"]["commit"] and data["meta"]["local_task"]["examples"] == tiny["examples"]
    rows = {r["label"]: r for r in data["rows"]}
    assert rows["FP"]["acc"] == pytest.approx(tiny["acc"], abs=1e-12) and rows["FP"]["examples"] == 5
    (quant,) = [r for r in data["rows"] if r["kind"] == "quant"]
    assert 0 <= quant["acc"] <= 1 and quant["examples"] == 5 and quant["backend_info"]["name"] == "int"
    assert (out / "results.csv").read_text().splitlines()[0].startswith("label,kind,weights")


@pytest.mark.slow
def test_checkpoint_gives_the_quantized_models_accuracy_on_every_backend(tmp_path, tiny):
    """The W2 RTN quantization evaluated directly (integer backend) and read back from its `qift-hw quantize`
    checkpoint on the integer backend and on the bit-accurate model (float Hadamard: the same products exactly)."""
    ckpt = tmp_path / "q.safetensors"
    _cli("quantize", ckpt, "--model", tiny["folder"], *QUANT)
    _cli("tasks", "--model", tiny["folder"], "--limit", 5, "--backend", "int", "--out", tmp_path / "direct", *QUANT)
    for backend in ("int", "sim"):
        _cli("tasks", "--checkpoint", ckpt, "--model", tiny["folder"], "--limit", 5, "--backend", backend,
             "--sim-hadamard", "float", "--device", "cpu", "--out", tmp_path / backend)
    (d,), (a,), (b,) = (_rows(tmp_path / x) for x in ("direct", "int", "sim"))
    assert a["kind"] == b["kind"] == "checkpoint" and a["w2_layers"] == [0]
    assert (a["backend_info"]["name"], b["backend_info"]["name"]) == ("int", "sim")
    assert d["acc"] == a["acc"] == b["acc"]
    assert a["word_perplexity"] == pytest.approx(d["word_perplexity"], rel=1e-4)
    assert b["word_perplexity"] == pytest.approx(a["word_perplexity"], rel=1e-5)


def test_unknown_and_unreachable_tasks_are_one_line_errors(tmp_path, monkeypatch):
    """A task lm-eval does not know, and a known task whose dataset lives on the (unreachable) hub: one line each,
    the second naming the local task."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "hub_task.yaml").write_text(
        "task: hub_task\ndataset_path: qift-test-no-such-org/no-such-dataset\noutput_type: loglikelihood\n"
        "test_split: test\ndoc_to_text: '{{text}}'\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: acc\n")
    with pytest.raises(QiftError) as err:
        T.task_manager(["no_such_task_x"], None, include_paths=[hub], include_defaults=False)
    assert "unknown task 'no_such_task_x'" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(QiftError) as err:
        T.task_manager(["hub_task"], None, include_paths=[hub], include_defaults=False)
    msg = str(err.value)
    assert "\n" not in msg
    assert "task hub_task needs its dataset from the Hugging Face hub, which is not reachable" in msg
    assert T.LOCAL_TASK in msg


def test_tokenizer_without_bos_or_eos_is_one_line_error(tiny):
    """lm-eval prefixes each context with BOS (else EOS); a tokenizer with neither used to fail deep inside it."""
    import types

    from transformers import AutoModelForCausalLM

    bare = types.SimpleNamespace(bos_token_id=None, eos_token_id=None)
    model = AutoModelForCausalLM.from_pretrained(tiny["folder"])
    with pytest.raises(QiftError, match="neither a BOS nor an EOS token") as err:
        T.evaluate_tasks(model, bare, ["qift_lastword"], None, limit=1)
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_lambada_without_network_is_one_line_error(monkeypatch):
    """lm-eval's own lambada_openai (indexing all of lm-eval's tasks) with the hub offline."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(QiftError) as err:
        T.task_manager(["lambada_openai"], None)
    assert "task lambada_openai needs its dataset from the Hugging Face hub" in str(err.value)
