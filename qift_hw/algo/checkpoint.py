"""Quantized checkpoints in safetensors (format "qift-1"): exported models and the layers of a resumable run.

A quantized linear NAME is stored one way everywhere (`linear_tensors` / `read_linears`): `NAME.qcodes` (uint8,
codes packed along the input dimension: four 2-bit codes per byte, code j of a group in bits 2j..2j+1, as
`levels.pack_codes`; 3- and 4-bit codes two per byte, 8-bit one per byte), `NAME.scale` (float32 [N, 1]) and,
for `asym`, `NAME.zero` (float32 [N, 1]); the metadata entry `linears` gives each one's level set and shape.

- An exported model (`save_quantized`) adds every other tensor of the rotated model's state dict (embedding,
  lm_head, norms, biases) as it is, and metadata: the Hugging Face model config, the rotation record (seed), the
  quantization config, the W2 layer list and the model id the tokenizer comes from. `load_quantized` rebuilds
  the architecture from the stored config, re-applies the rotation structure (online Hadamards) and installs
  the dequantized weights, so the reloaded model computes exactly what was exported.
- A run folder's layers (`run_folder.save_layer`) hold a decoder layer's linears and per-linear records.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from qift_hw.algo.config import QuantConfig
from qift_hw.algo.models import untie_embeddings
from qift_hw.algo.prepare import prepare_model
from qift_hw.algo.quantized import QuantizedLinear, QuantizedModel
from qift_hw.core.errors import QiftError
from qift_hw.core.io import atomic_path
from qift_hw.core.levels import QParams, get_level_set, pack_codes, unpack_codes

FORMAT = "qift-1"
JSON_FIELDS = ("hf_config", "rotation", "quant_config", "linears", "w2_layers", "records")
"""Metadata entries stored as JSON text (each file has those that apply to it)."""
QUANTIZED_SUFFIXES = (".qcodes", ".scale", ".zero")


def _pack_bits(bits: int) -> int:
    return 2 if bits == 2 else 4 if bits <= 4 else 8


def linear_tensors(weights: dict[str, QuantizedLinear]) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """The stored tensors of quantized linears (packed codes, scales, zeros) and their `linears` metadata."""
    tensors: dict[str, torch.Tensor] = {}
    linears: dict[str, dict] = {}
    for name, ql in weights.items():
        N, K = ql.codes.shape
        tensors[f"{name}.qcodes"] = pack_codes(ql.codes.cpu(), bits=_pack_bits(ql.level_set.bits)).contiguous()
        tensors[f"{name}.scale"] = ql.params.scale.detach().cpu().contiguous()
        if ql.params.zero is not None:
            tensors[f"{name}.zero"] = ql.params.zero.detach().cpu().contiguous()
        linears[name] = {"level_set": ql.level_set.name, "shape": [N, K]}
    return tensors, linears


def _write(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    from safetensors.torch import save_file

    text = {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT, **text})
    return path


def read_metadata(path: str | Path) -> dict:
    """The decoded metadata of a qift checkpoint (QiftError if it is not one)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise QiftError(f"checkpoint {path} does not exist; pass a file written by `qift-hw quantize`")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:
        raise QiftError(f"checkpoint {path} is not a readable safetensors file ({exc}); re-export it") from exc
    if meta.get("format") != FORMAT:
        raise QiftError(f"{path} is not a qift-hw checkpoint (format {meta.get('format')!r}, expected {FORMAT!r})")
    return {k: json.loads(v) if k in JSON_FIELDS else v for k, v in meta.items()}


def read_linears(path: str | Path, linears: dict[str, dict], device: str | torch.device = "cpu"
                 ) -> dict[str, QuantizedLinear]:
    """The quantized linears listed in `linears` (a checkpoint's metadata entry), read from `path`."""
    from safetensors import safe_open

    out = {}
    with safe_open(str(path), framework="pt", device="cpu") as f:
        keys = set(f.keys())
        for name, info in linears.items():
            ls = get_level_set(info["level_set"])
            codes = unpack_codes(f.get_tensor(f"{name}.qcodes"), info["shape"][1], bits=_pack_bits(ls.bits))
            zero = f.get_tensor(f"{name}.zero").to(device) if f"{name}.zero" in keys else None
            out[name] = QuantizedLinear(ls, codes.to(device), QParams(f.get_tensor(f"{name}.scale").to(device), zero))
    return out


def quantized_weights(path: str | Path) -> dict[str, QuantizedLinear]:
    """Codes and per-row params of every quantized linear of a checkpoint (for the bit-accurate model)."""
    return read_linears(path, read_metadata(path)["linears"])


def save_quantized(path: str | Path, qm: QuantizedModel, model_id: str = "") -> Path:
    """Write the quantized model `qm` to `path` (safetensors, atomically)."""
    model = qm.model
    tensors, linears = linear_tensors(qm.weights)
    skip = {f"{name}.weight" for name in qm.weights}
    for key, value in model.state_dict().items():
        if key not in skip:
            tensors[key] = value.detach().cpu().contiguous()
    meta = {
        "hf_config": model.config.to_json_string(use_diff=False),
        "rotation": qm.rotation,
        "quant_config": qm.config.to_dict(),
        "linears": linears,
        "w2_layers": qm.w2_layers,
        "model_id": model_id,
    }
    return _write(Path(path), tensors, meta)


def load_quantized(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the quantized model from a checkpoint; returns (model in eval mode on `device`, metadata)."""
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    meta = read_metadata(path)
    hf = dict(meta["hf_config"])
    model_type = hf.pop("model_type", None)
    try:
        config = AutoConfig.for_model(model_type, **hf)
    except Exception as exc:
        raise QiftError(f"checkpoint {path}: cannot rebuild model config ({exc})") from exc
    config.tie_word_embeddings = False
    cfg = QuantConfig.from_dict(meta["quant_config"])
    rotation = meta["rotation"]
    cfg.rotate = rotation is not None
    if rotation is not None:
        cfg.rotation_seed = int(rotation["seed"])
    with torch.device("cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    untie_embeddings(model)
    model.eval()
    prepare_model(model, cfg)
    linears = meta["linears"]
    with safe_open(str(path), framework="pt", device="cpu") as f:
        state = {k: f.get_tensor(k) for k in f.keys()
                 if not k.endswith(QUANTIZED_SUFFIXES) or k.rsplit(".", 1)[0] not in linears}
    missing = set(model.state_dict()) - set(state) - {f"{n}.weight" for n in linears}
    if missing:
        raise QiftError(f"checkpoint {path} lacks {len(missing)} tensors (e.g. {sorted(missing)[0]}); re-export it")
    model.load_state_dict(state, strict=False)
    modules = dict(model.named_modules())
    for name, ql in read_linears(path, linears).items():
        deq = ql.dequantized()
        lin = modules[name]
        with torch.no_grad():
            lin.weight.copy_(deq)
        lin.set_qweight(deq)
    model.to(device)
    return model, meta
