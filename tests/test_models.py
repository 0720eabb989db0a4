"""Model loading: the embedded SmolLM2, untied embeddings, family checks and one-line errors for bad files."""

import pytest
import torch

from qift_hw.core.errors import QiftError
from qift_hw.algo.models import check_supported, iter_linears, load_model, tiny_llama


def test_smollm2_loads_untied(smollm2):
    model, tok = smollm2
    cfg = model.config
    assert (cfg.model_type, cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers) == ("llama", 576, 1536, 30)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads) == (9, 3)
    head, emb = model.lm_head.weight, model.model.embed_tokens.weight
    assert head.data_ptr() != emb.data_ptr()
    assert torch.equal(head, emb)  # untied copy, same values
    assert len(iter_linears(model)) == 30 * 7
    ids = tok("The quick brown fox", add_special_tokens=False)["input_ids"]
    assert len(ids) > 2 and max(ids) < cfg.vocab_size


def test_untie_is_real_copy():
    model = tiny_llama(seed=1)
    model.lm_head.weight.data.add_(1.0)
    assert not torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)


@pytest.mark.parametrize("content", [b"", b"GGUF" + bytes(range(60)), b"not a model at all" * 10])
def test_corrupt_gguf_is_one_line_error(tmp_path, content):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(content)
    with pytest.raises(QiftError) as err:
        load_model(str(bad))
    msg = str(err.value)
    assert "\n" not in msg and "broken.gguf" in msg


def test_corrupt_safetensors_folder_is_one_line_error(tmp_path):
    model = tiny_llama(seed=0)
    model.save_pretrained(tmp_path)
    weights = next(tmp_path.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(QiftError) as err:
        load_model(str(tmp_path))
    assert "\n" not in str(err.value)


def test_missing_paths(tmp_path):
    for spec in (str(tmp_path / "nope.gguf"), str(tmp_path / "no" / "such" / "folder")):
        with pytest.raises(QiftError, match="does not exist"):
            load_model(spec)
    with pytest.raises(QiftError, match="config.json"):
        load_model(str(tmp_path))


def test_local_folder_roundtrip(tmp_path, smollm2):
    """A saved Qwen2-style (biased) tiny model loads from its folder, untied, with the same logits."""
    _, tok = smollm2
    model = tiny_llama(seed=3, family="qwen2")
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, tok2 = load_model(str(tmp_path))
    assert loaded.config.model_type == "qwen2"
    assert loaded.lm_head.weight.data_ptr() != loaded.model.embed_tokens.weight.data_ptr()
    ids = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)
    assert tok2("hello world")["input_ids"] == tok("hello world")["input_ids"]


def test_unsupported_family():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(QiftError, match="not supported"):
        check_supported(gpt2)


def test_tiny_llama_shapes():
    m = tiny_llama(seed=0, hidden=48, intermediate=96, heads=4, kv_heads=2, biases=True)
    assert m.model.layers[0].self_attn.o_proj.bias is not None
    assert m.model.layers[0].mlp.down_proj.bias is not None
    check_supported(m)
    q = tiny_llama(seed=0, family="qwen2")
    attn = q.model.layers[0].self_attn
    assert attn.q_proj.bias is not None and attn.o_proj.bias is None


def test_unreachable_hub_id_is_one_line_error():
    with pytest.raises(QiftError, match="hub") as err:
        load_model("qift-nonexistent-org/qift-nonexistent-model")
    assert "\n" not in str(err.value)
