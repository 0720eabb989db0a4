"""Tampered, corrupt and inconsistent checkpoints and model files are refused with one line, never loaded.

One checkpoint is exported once through `qift-hw eval --export` from a tiny local model (W2 layer 0 on mnz, layer 1
on int3, rotated); each case tampers with a copy of it the way a bad disk, a careless edit or an old writer would,
and checks the loader's one-line refusal (a few through `qift-hw eval-checkpoint` in a subprocess).
"""

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from qift_hw.algo.checkpoint import load_quantized, quantized_weights, read_metadata
from qift_hw.algo.models import load_model, tiny_llama
from qift_hw.core.errors import QiftError

torch.set_num_threads(2)

LINEAR = "model.layers.0.mlp.down_proj"  # a W2 (mnz) linear: N = hidden = 64, K = intermediate = 128
INT3_LINEAR = "model.layers.1.self_attn.q_proj"  # an int3 linear, codes packed two per byte
EVAL_ARGS = ("--windows", "2", "--seqlen", "32", "--device", "cpu", "--no-progress")


def qift(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m qift_hw ARGS` in `cwd` (the `qift-hw` entry point)."""
    return subprocess.run([sys.executable, "-m", "qift_hw", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)


def one_line_error(res: subprocess.CompletedProcess, *words: str) -> str:
    """The run failed with bad-input status and exactly one line on stderr, holding `words`, and no traceback."""
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, res.stderr
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def refused(fn, path: Path, *words: str) -> str:
    """`fn(path)` raises a one-line QiftError naming the file and holding `words`."""
    with pytest.raises(QiftError) as info:
        fn(path)
    text = str(info.value)
    assert "\n" not in text and str(path) in text, text
    for w in words:
        assert w in text, text
    return text


def _save_word_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, **{f"w{i}": i + 1 for i in range(200)}}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]").save_pretrained(folder)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny model folder, a text file, and the checkpoint `qift-hw eval --export` makes of them (with its ppl)."""
    root = tmp_path_factory.mktemp("ckpt")
    folder = root / "model"
    tiny_llama(seed=0, hidden=64, intermediate=128, layers=2).save_pretrained(folder)
    _save_word_tokenizer(folder)
    gen = torch.Generator().manual_seed(0)
    text = root / "text.txt"
    words = [f"w{int(i)}" for i in torch.randint(1, 200, (6000,), generator=gen)]
    text.write_text("\n\n".join(" ".join(words[i:i + 60]) for i in range(0, len(words), 60)) + "\n")
    work = root / "work"
    work.mkdir()
    ckpt = root / "q.safetensors"
    res = qift(work, "eval", "--model", str(folder), "--text", str(text), "--levels", "mnz", "--method", "rtn",
               "--w2-layers", "0", "--other-bits", "3", "--fresh", "--export", str(ckpt), "--out", str(root / "out"),
               *EVAL_ARGS)
    assert res.returncode == 0, res.stderr
    (row,) = json.loads((root / "out" / "results.json").read_text())["rows"]
    return {"root": root, "folder": folder, "text": text, "ckpt": ckpt, "ppl": row["ppl"]}


def _read(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}


def tampered(setup, tmp_path, edit, name: str = "t.safetensors") -> Path:
    """A copy of the checkpoint rewritten after `edit(meta, tensors)` changed them in place (the stored digest is
    kept, as a tool that does not know about it would)."""
    meta, tensors = _read(setup["ckpt"])
    edit(meta, tensors)
    out = tmp_path / name
    save_file(tensors, str(out), metadata=meta)
    return out


def forged(setup, tmp_path, edit) -> Path:
    """As `tampered`, with the digest recomputed, so that only the structural checks stand in the way."""
    from qift_hw.algo.checkpoint import DIGEST, content_digest

    def edit_and_sign(meta, tensors):
        edit(meta, tensors)
        meta[DIGEST] = content_digest(tensors, meta)

    return tampered(setup, tmp_path, edit_and_sign)


def _json_edit(key: str, change):
    def edit(meta, tensors):
        value = json.loads(meta[key])
        change(value)
        meta[key] = json.dumps(value)

    return edit


def _data_offset(path: Path, tensor: str) -> int:
    """File offset of the first byte of `tensor`'s data (safetensors: 8-byte header size, JSON header, data)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    return 8 + n + header[tensor]["data_offsets"][0]


# --- the export itself --------------------------------------------------------------------------------------------


def test_export_from_a_local_model_records_its_path_and_reloads_without_model(setup, tmp_path):
    meta = read_metadata(setup["ckpt"])
    assert meta["model_id"] == str(setup["folder"].resolve())
    res = qift(tmp_path, "eval-checkpoint", str(setup["ckpt"]), "--text", str(setup["text"]), *EVAL_ARGS)
    assert res.returncode == 0, res.stderr
    ppl = float(res.stdout.split("ppl ")[1].split()[0])
    assert ppl == pytest.approx(setup["ppl"], rel=1e-6)


def test_the_untouched_checkpoint_loads_with_the_codes_it_was_written_with(setup):
    stored = quantized_weights(setup["ckpt"])
    assert stored[LINEAR].level_set.name == "mnz" and stored[INT3_LINEAR].level_set.name == "int3"
    with safe_open(str(setup["ckpt"]), framework="pt") as f:
        packed = f.get_tensor(f"{LINEAR}.qcodes")
    codes = stored[LINEAR].codes
    assert torch.equal(packed[:, 0], codes[:, 0] | (codes[:, 1] << 2) | (codes[:, 2] << 4) | (codes[:, 3] << 6))
    model, meta = load_quantized(setup["ckpt"])
    assert meta["w2_layers"] == [0]


# --- tensors that do not match the metadata (found before the digest, named) ---------------------------------------


def test_reshaped_scale_is_refused(setup, tmp_path):
    def edit(meta, t):
        t[f"{LINEAR}.scale"] = t[f"{LINEAR}.scale"].reshape(1, 64).contiguous()

    path = tampered(setup, tmp_path, edit)
    refused(load_quantized, path, f"{LINEAR}.scale", "[1, 64]", "expected float32 [64, 1]")
    refused(quantized_weights, path, f"{LINEAR}.scale", "expected float32 [64, 1]")
    one_line_error(qift(tmp_path, "eval-checkpoint", str(path), "--text", str(setup["text"]), *EVAL_ARGS),
                   f"{LINEAR}.scale", "expected float32 [64, 1]")


def test_fp16_scales_are_refused(setup, tmp_path):
    def edit(meta, t):
        t[f"{LINEAR}.scale"] = t[f"{LINEAR}.scale"].half()

    refused(load_quantized, tampered(setup, tmp_path, edit), f"{LINEAR}.scale is float16 [64, 1]", "expected float32")


@pytest.mark.parametrize("suffix", [".scale", ".qcodes"])
def test_deleted_tensor_is_refused(setup, tmp_path, suffix):
    def edit(meta, t):
        del t[LINEAR + suffix]

    path = tampered(setup, tmp_path, edit)
    refused(load_quantized, path, f"lacks tensor {LINEAR}{suffix}")
    refused(quantized_weights, path, f"lacks tensor {LINEAR}{suffix}")


def test_packed_codes_of_another_width_are_refused(setup, tmp_path):
    def edit(meta, t):
        t[f"{LINEAR}.qcodes"] = t[f"{LINEAR}.qcodes"][:, :16].contiguous()

    refused(load_quantized, tampered(setup, tmp_path, edit), f"{LINEAR}.qcodes", "expected uint8 [64, 32]")


def test_a_quantized_tensor_no_linear_lists_is_refused(setup, tmp_path):
    def edit(meta, t):
        t["model.layers.0.mlp.extra_proj.scale"] = torch.ones(64, 1)

    refused(load_quantized, tampered(setup, tmp_path, edit), "model.layers.0.mlp.extra_proj.scale")


def test_codes_outside_the_level_set_are_refused(setup, tmp_path):
    def edit(meta, t):
        packed = t[f"{INT3_LINEAR}.qcodes"].clone()
        packed[3, 5] = 0xF0 | (packed[3, 5] & 0x0F)  # the second code of that byte becomes 15; int3 has 0..7
        t[f"{INT3_LINEAR}.qcodes"] = packed

    refused(quantized_weights, tampered(setup, tmp_path, edit), f"{INT3_LINEAR}.qcodes holds code 15", "0..7")


def test_non_finite_scale_is_refused(setup, tmp_path):
    def edit(meta, t):
        t[f"{LINEAR}.scale"][7, 0] = float("inf")

    refused(load_quantized, forged(setup, tmp_path, edit), f"{LINEAR}.scale has non-finite values")


# --- the content digest --------------------------------------------------------------------------------------------


def test_one_flipped_bit_in_one_scale_is_refused(setup, tmp_path):
    path = tmp_path / "flip.safetensors"
    raw = bytearray(setup["ckpt"].read_bytes())
    raw[_data_offset(setup["ckpt"], f"{LINEAR}.scale") + 4 * 9] ^= 0x01  # lowest mantissa bit of row 9's scale
    path.write_bytes(bytes(raw))
    assert not torch.equal(_read(path)[1][f"{LINEAR}.scale"], _read(setup["ckpt"])[1][f"{LINEAR}.scale"])
    refused(load_quantized, path, "does not match its content digest")
    refused(quantized_weights, path, "does not match its content digest")
    one_line_error(qift(tmp_path, "eval-checkpoint", str(path), "--text", str(setup["text"]), *EVAL_ARGS),
                   "content digest")


def test_a_changed_float_tensor_is_refused(setup, tmp_path):
    def edit(meta, t):
        t["model.norm.weight"][0] += 1e-3

    refused(load_quantized, tampered(setup, tmp_path, edit), "does not match its content digest")


def test_checkpoint_without_a_digest_is_refused(setup, tmp_path):
    def edit(meta, t):
        del meta["digest"]

    path = tampered(setup, tmp_path, edit)
    refused(read_metadata, path, "no content digest", "re-export")
    refused(load_quantized, path, "no content digest", "re-export")


# --- metadata that does not match the weights ----------------------------------------------------------------------


def test_level_set_changed_in_the_quant_config_is_refused(setup, tmp_path):
    path = tampered(setup, tmp_path, _json_edit("quant_config", lambda q: q.update(levels="pot_mnz")))
    refused(load_quantized, path, "model.layers.0.", "has level set 'mnz'", "give 'pot_mnz'")
    refused(read_metadata, path, "model.layers.0.", "has level set 'mnz'", "give 'pot_mnz'")


def test_level_set_changed_in_the_linears_entry_is_refused(setup, tmp_path):
    path = tampered(setup, tmp_path, _json_edit("linears", lambda lin: lin[LINEAR].update(level_set="pot_mnz")))
    refused(load_quantized, path, f"{LINEAR} has level set 'pot_mnz'", "'mnz'")


def test_level_set_changed_everywhere_is_caught_by_the_digest(setup, tmp_path):
    def edit(meta, t):
        _json_edit("quant_config", lambda q: q.update(levels="pot_mnz"))(meta, t)
        _json_edit("linears", lambda lin: [v.update(level_set="pot_mnz") for v in lin.values()
                                           if v["level_set"] == "mnz"])(meta, t)

    refused(load_quantized, tampered(setup, tmp_path, edit), "does not match its content digest")


def test_changed_rotation_seed_is_refused(setup, tmp_path):
    path = tampered(setup, tmp_path, _json_edit("rotation", lambda r: r.update(seed=5)))
    refused(load_quantized, path, "rotation seed 5 differs", "rotation_seed 0")
    refused(read_metadata, path, "rotation seed 5 differs", "rotation_seed 0")

    def both(meta, t):
        _json_edit("rotation", lambda r: r.update(seed=5))(meta, t)
        _json_edit("quant_config", lambda q: q.update(rotation_seed=5))(meta, t)

    refused(load_quantized, tampered(setup, tmp_path, both, "both.safetensors"), "does not match its content digest")


def test_rotation_record_that_does_not_fit_the_config_is_refused(setup, tmp_path):
    path = tampered(setup, tmp_path, _json_edit("quant_config", lambda q: q.update(rotate=False)))
    refused(load_quantized, path, "rotate=False", "rotation record is present")
    path = tampered(setup, tmp_path, _json_edit("rotation", lambda r: r.update(hidden_size=128)), "dims.safetensors")
    refused(load_quantized, path, "hidden_size=128 differs from the model config's hidden_size=64")


def test_tampered_run_folder_layer_is_refused(tmp_path):
    from qift_hw.algo.checkpoint import read_linears
    from qift_hw.algo.config import QuantConfig
    from qift_hw.algo.quantize import quantize_model

    cfg = QuantConfig(levels="mnz", method="rtn", scale_method="maxabs")
    quantize_model(tiny_llama(seed=3, layers=1), None, cfg, run_dir=tmp_path, progress=False)
    layer = tmp_path / "layer_000.safetensors"
    linears = read_metadata(layer)["linears"]
    assert read_linears(layer, linears)[LINEAR].codes.shape == (64, 128)
    raw = bytearray(layer.read_bytes())
    raw[_data_offset(layer, f"{LINEAR}.scale")] ^= 0x01
    layer.write_bytes(bytes(raw))
    refused(lambda p: read_linears(p, linears), layer, "does not match its content digest")


def test_malformed_linears_metadata_is_refused(setup, tmp_path):
    path = tampered(setup, tmp_path, _json_edit("linears", lambda lin: lin[LINEAR].update(shape=[64, -3])))
    refused(read_metadata, path, f"linear {LINEAR} has shape [64, -3]")


def test_float_tensors_of_another_shape_dtype_or_name_are_refused_even_with_a_valid_digest(setup, tmp_path):
    def reshape(meta, t):
        t["model.embed_tokens.weight"] = t["model.embed_tokens.weight"][:100].contiguous()

    refused(load_quantized, forged(setup, tmp_path, reshape), "model.embed_tokens.weight", "[100, 64]",
            "expected float32 [256, 64]")

    def bf16(meta, t):
        t["model.norm.weight"] = t["model.norm.weight"].bfloat16()

    refused(load_quantized, forged(setup, tmp_path, bf16), "model.norm.weight is bfloat16")

    def extra(meta, t):
        t["model.layers.0.mystery.weight"] = torch.zeros(3)

    refused(load_quantized, forged(setup, tmp_path, extra), "model.layers.0.mystery.weight", "does not have")

    def missing(meta, t):
        del t["model.layers.1.input_layernorm.weight"]

    refused(load_quantized, forged(setup, tmp_path, missing), "lacks 1 tensors")


# --- corrupt files ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_200_random_byte_flips_are_refused(setup, tmp_path, seed):
    """200 bytes XORed at random places of the tensor data (in a real model it is nearly all of the file; a flip in
    the header is the safetensors parser's to find)."""
    raw = bytearray(setup["ckpt"].read_bytes())
    gen = torch.Generator().manual_seed(seed)
    start = 8 + struct.unpack("<Q", raw[:8])[0]
    where = torch.randint(start, len(raw), (200,), generator=gen)
    for i, v in zip(where.tolist(), torch.randint(1, 256, (200,), generator=gen).tolist()):
        raw[i] ^= v
    path = tmp_path / "flips.safetensors"
    path.write_bytes(bytes(raw))
    with pytest.raises(QiftError) as info:
        load_quantized(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    if seed == 0:
        one_line_error(qift(tmp_path, "eval-checkpoint", str(path), "--model", str(setup["folder"]),
                            "--text", str(setup["text"]), *EVAL_ARGS), str(path))


@pytest.mark.parametrize("fraction", [0.0003, 0.5, 0.999])
def test_truncated_file_is_refused(setup, tmp_path, fraction):
    raw = setup["ckpt"].read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(raw[: int(len(raw) * fraction)])
    refused(load_quantized, path)
    refused(quantized_weights, path)


# --- model files -----------------------------------------------------------------------------------------------------


def test_hf_model_with_random_bytes_in_its_weights_is_refused_naming_the_tensor(setup, tmp_path):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(setup["folder"], folder)
    weights = folder / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    start = _data_offset(weights, "model.embed_tokens.weight")
    gen = torch.Generator().manual_seed(1)
    raw[start:start + 16384] = torch.randint(0, 256, (16384,), generator=gen, dtype=torch.uint8).numpy().tobytes()
    weights.write_bytes(bytes(raw))
    with pytest.raises(QiftError, match=r"tensor model\.embed_tokens\.weight has \d+ non-finite values"):
        load_model(str(folder))


@pytest.mark.slow
def test_gguf_with_random_bytes_in_its_tensor_data_is_refused(tmp_path):
    """1 MB of random bytes in the middle of the embedded SmolLM2 GGUF's tensor data (slow: a 135M-parameter load;
    the fast suite covers the same check on a Hugging Face folder)."""
    from qift_hw.algo.models import smollm2_location

    src = Path(*smollm2_location())
    raw = bytearray(src.read_bytes())
    mid = len(raw) // 2
    gen = torch.Generator().manual_seed(2)
    raw[mid:mid + 2**20] = torch.randint(0, 256, (2**20,), generator=gen, dtype=torch.uint8).numpy().tobytes()
    path = tmp_path / "broken.gguf"
    path.write_bytes(bytes(raw))
    with pytest.raises(QiftError, match=r"tensor model\.layers\.\d+\.\S+ has \d+ non-finite values"):
        load_model(str(path))


def test_mistyped_model_name_fails_fast_when_the_hub_is_unreachable(setup, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # nothing listens there: the hub is unreachable
    t0 = time.perf_counter()
    res = qift(tmp_path, "eval-checkpoint", str(setup["ckpt"]), "--model", "smolm2", "--text", str(setup["text"]),
               *EVAL_ARGS, env=env)
    assert time.perf_counter() - t0 < 25
    one_line_error(res, "smolm2", "not reachable", "--model takes", "gguf")
