"""Quantized checkpoints in safetensors (format "qift-1"): exported models and the layers of a resumable run.

A quantized linear NAME is stored one way everywhere (`linear_tensors` / `read_linears`): `NAME.qcodes` (uint8,
codes packed along the input dimension: four 2-bit codes per byte, code j of a group in bits 2j..2j+1, as
`levels.pack_codes`; 3- and 4-bit codes two per byte, 8-bit one per byte), `NAME.scale` (float32 [N, 1]) and,
for `asym`, `NAME.zero` (float32 [N, 1]); the metadata entry `linears` gives each one's level set and shape.

- An exported model (`save_quantized`) adds every other tensor of the rotated model's state dict (embedding,
  lm_head, norms, biases) as it is, and metadata: the Hugging Face model config, the rotation record (seed), the
  quantization config, the W2 layer list and the model the tokenizer comes from (a path, hub id or the embedded
  default's name). `load_quantized` rebuilds the architecture from the stored config, re-applies the rotation
  structure (online Hadamards) and installs the dequantized weights, so the reloaded model computes exactly what
  was exported.
- A run folder's layers (`run_folder.save_layer`) hold a decoder layer's linears and per-linear records.
- A streamed checkpoint (format "qift-1-sharded", the folder `streaming.stream_run` exports) is the same model
  split into files: `rest.safetensors` (embedding, final norm, lm_head), one `layer-NNNNN.safetensors` per decoder
  layer (its linears and other tensors, as above) and `qift-index.json` (written last: the exported model's
  metadata, the source folder, each file's digest and provenance). `load_quantized` and `quantized_weights` take
  the folder as they take a file; it is self-contained (the source shards are not read again).

Every file carries a content digest (`content_digest`, metadata entry `digest`). Readers trust nothing: each
tensor's dtype and shape is checked against the metadata, codes against their level set, the metadata against
itself and the digest against the content, and anything unreadable is refused as corrupt, in one line.
"""

from __future__ import annotations

import hashlib
import json
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from qift_hw.algo.config import QuantConfig
from qift_hw.algo.models import MODEL_SOURCE, short_message, untie_embeddings
from qift_hw.algo.prepare import prepare_model
from qift_hw.algo.quantized import QuantizedLinear, QuantizedModel
from qift_hw.core.errors import QiftError
from qift_hw.core.io import atomic_path, write_json
from qift_hw.core.levels import LevelSet, QParams, get_level_set, pack_codes, unpack_codes

FORMAT = "qift-1"
JSON_FIELDS = ("hf_config", "rotation", "quant_config", "linears", "w2_layers", "records")
"""Metadata entries stored as JSON text (each file has those that apply to it)."""
EXPORT_FIELDS = ("hf_config", "rotation", "quant_config", "linears", "w2_layers", "model_id")
"""Metadata entries every exported model has."""
DIGEST = "digest"
"""Metadata entry holding `content_digest` of the file."""
QUANTIZED_SUFFIXES = (".qcodes", ".scale", ".zero")
PARAM_DTYPE = torch.float32
"""dtype of stored scales and zero points, and of every float tensor of an exported model."""
STREAM_FORMAT = "qift-1-sharded"
STREAM_INDEX = "qift-index.json"
STREAM_REST = "rest.safetensors"
STREAM_FIELDS = ("format", "hf_config", "rotation", "quant_config", "w2_layers", "model_id", "source", "files",
                 "digests", "provenance")
"""Entries of a streamed checkpoint's index."""


def _pack_bits(bits: int) -> int:
    return 2 if bits == 2 else 4 if bits <= 4 else 8


def _packed_width(K: int, ls: LevelSet) -> int:
    per = 8 // _pack_bits(ls.bits)
    return (K + per - 1) // per


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


def content_digest(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> str:
    """SHA-256 over the metadata text (every entry but the digest) and each tensor's name, dtype, shape and bytes,
    in name order: any changed bit, shape, dtype, tensor or metadata entry changes it."""
    h = hashlib.sha256()
    for key in sorted(k for k in meta if k != DIGEST):
        h.update(json.dumps([key, meta[key]]).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return "sha256:" + h.hexdigest()


def _write(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    from safetensors.torch import save_file

    text = {"format": FORMAT, **{k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}}
    text[DIGEST] = content_digest(tensors, text)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=text)
    return path


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn any failure of a reader (a parser meeting flipped or missing bytes) into one line saying so."""
    try:
        yield
    except QiftError:
        raise
    except Exception as exc:
        raise QiftError(f"checkpoint {path} is corrupt or truncated ({short_message(exc)}); re-export it") from exc


def _raw_metadata(path: Path) -> dict[str, str]:
    """The metadata text of a qift checkpoint: it exists, is one, and carries a digest."""
    from safetensors import safe_open

    if not path.is_file():
        raise QiftError(f"checkpoint {path} does not exist; pass a file written by `qift-hw quantize` (or the "
                        "folder `qift-hw eval --stream --export` writes)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:
        raise QiftError(f"checkpoint {path} is not a readable safetensors file ({short_message(exc)}); "
                        "re-export it") from exc
    if meta.get("format") != FORMAT:
        raise QiftError(f"{path} is not a qift-hw checkpoint (format {meta.get('format')!r}, expected {FORMAT!r})")
    if DIGEST not in meta:
        raise QiftError(f"checkpoint {path} has no content digest (written by an older qift-hw), so it cannot be "
                        "checked; re-export it")
    return meta


def _check_linears_meta(path: Path, linears: object) -> None:
    """The `linears` entry: a dict of name -> {level_set: a known set, shape: [N, K] positive integers}."""
    if not isinstance(linears, dict):
        raise QiftError(f"checkpoint {path}: metadata 'linears' is not a mapping; re-export it")
    for name, info in linears.items():
        shape = info.get("shape") if isinstance(info, dict) else None
        if not (isinstance(shape, list) and len(shape) == 2 and all(type(d) is int and d > 0 for d in shape)):
            raise QiftError(f"checkpoint {path}: linear {name} has shape {shape!r} in the metadata, "
                            "expected [N, K] positive integers; re-export it")
        try:
            get_level_set(info.get("level_set"))
        except QiftError as exc:
            raise QiftError(f"checkpoint {path}: linear {name}: {exc}") from None


def _decode(path: Path, raw: dict[str, str]) -> dict:
    meta = {k: json.loads(v) if k in JSON_FIELDS else v for k, v in raw.items()}
    if "linears" in meta:
        _check_linears_meta(path, meta["linears"])
    if set(meta) & (set(EXPORT_FIELDS) - {"linears"}):
        _check_export_meta(path, meta)
    return meta


def read_metadata(path: str | Path) -> dict:
    """The decoded metadata of a qift checkpoint (QiftError if it is not one, or its metadata is malformed or, for
    an exported model, inconsistent: checked without reading the tensors)."""
    path = Path(path)
    with _reading(path):
        return _decode(path, _raw_metadata(path))


def _expected_linear_tensors(name: str, info: dict) -> dict[str, tuple[torch.dtype, list[int]]]:
    ls = get_level_set(info["level_set"])
    N, K = info["shape"]
    out = {f"{name}.qcodes": (torch.uint8, [N, _packed_width(K, ls)]), f"{name}.scale": (PARAM_DTYPE, [N, 1])}
    if ls.kind == "asym":
        out[f"{name}.zero"] = (PARAM_DTYPE, [N, 1])
    return out


def _check_tensor(path: Path, key: str, t: torch.Tensor, dtype: torch.dtype, shape: list[int]) -> None:
    if t.dtype != dtype or list(t.shape) != shape:
        raise QiftError(f"checkpoint {path}: tensor {key} is {str(t.dtype).removeprefix('torch.')} "
                        f"{list(t.shape)}, expected {str(dtype).removeprefix('torch.')} {shape}; re-export it")


def _check_linear_tensors(path: Path, tensors: dict[str, torch.Tensor], linears: dict[str, dict]
                          ) -> dict[str, torch.Tensor]:
    """Every listed linear has exactly its tensors, with the dtype and shape its metadata implies, finite params and
    codes inside its level set; no quantized tensor is left over. Returns each linear's unpacked codes [N, K]."""
    expected: dict[str, tuple[torch.dtype, list[int]]] = {}
    for name, info in linears.items():
        expected.update(_expected_linear_tensors(name, info))
    for key, (dtype, shape) in expected.items():
        if key not in tensors:
            raise QiftError(f"checkpoint {path} lacks tensor {key} (expected {str(dtype).removeprefix('torch.')} "
                            f"{shape}); re-export it")
        _check_tensor(path, key, tensors[key], dtype, shape)
        if dtype.is_floating_point and not torch.isfinite(tensors[key]).all():
            raise QiftError(f"checkpoint {path}: tensor {key} has non-finite values; re-export it")
    extra = sorted(k for k in tensors if k.endswith(QUANTIZED_SUFFIXES) and k not in expected)
    if extra:
        raise QiftError(f"checkpoint {path} has tensor {extra[0]} that no linear of its metadata lists; re-export it")
    unpacked = {}
    for name, info in linears.items():
        ls = get_level_set(info["level_set"])
        codes = unpack_codes(tensors[f"{name}.qcodes"], info["shape"][1], bits=_pack_bits(ls.bits))
        top = int(codes.max()) if codes.numel() else 0
        if top >= len(ls.levels):
            raise QiftError(f"checkpoint {path}: tensor {name}.qcodes holds code {top}, outside "
                            f"0..{len(ls.levels) - 1} of level set {ls.name}; re-export it")
        unpacked[name] = codes
    return unpacked


def _read_tensors(path: Path, raw: dict[str, str], linears: dict[str, dict]
                  ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Every tensor of the file, its linears' tensors checked against `linears` and the whole against the digest;
    and each linear's unpacked codes."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    codes = _check_linear_tensors(path, tensors, linears)
    if content_digest(tensors, raw) != raw[DIGEST]:
        raise QiftError(f"checkpoint {path} does not match its content digest (a tensor or metadata entry changed "
                        "after it was written); re-export it")
    return tensors, codes


def _linears_from(tensors: dict[str, torch.Tensor], codes: dict[str, torch.Tensor], linears: dict[str, dict],
                  device: str | torch.device) -> dict[str, QuantizedLinear]:
    out = {}
    for name, info in linears.items():
        zero = tensors.get(f"{name}.zero")
        params = QParams(tensors[f"{name}.scale"].to(device), None if zero is None else zero.to(device))
        out[name] = QuantizedLinear(get_level_set(info["level_set"]), codes[name].to(device), params)
    return out


def read_linears(path: str | Path, linears: dict[str, dict], device: str | torch.device = "cpu"
                 ) -> dict[str, QuantizedLinear]:
    """The quantized linears listed in `linears` (a checkpoint's metadata entry), read from `path` and checked."""
    path = Path(path)
    with _reading(path):
        _check_linears_meta(path, linears)
        return _linears_from(*_read_tensors(path, _raw_metadata(path), linears), linears, device)


def quantized_weights(path: str | Path) -> dict[str, QuantizedLinear]:
    """Codes and per-row params of every quantized linear of a checkpoint file or streamed checkpoint folder (for
    the bit-accurate model)."""
    path = Path(path)
    if path.is_dir():
        with _reading(path):
            return _linears_from(*_read_stream(path, _stream_index(path)), "cpu")
    return read_linears(path, read_metadata(path)["linears"])


def save_quantized(path: str | Path, qm: QuantizedModel, model_id: str = "") -> Path:
    """Write the quantized model `qm` to `path` (safetensors, atomically).

    The recorded `model_id` (where `eval-checkpoint` takes the tokenizer from) is the loaded model's source
    (`models.MODEL_SOURCE`: a path, hub id or the embedded default's name) when it has one, else `model_id`.
    """
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
        "model_id": getattr(model, MODEL_SOURCE, None) or model_id,
    }
    return _write(Path(path), tensors, meta)


_LAYER_OF = re.compile(r"model\.layers\.(\d+)\.")


def _check_export_meta(path: Path, meta: dict) -> QuantConfig:
    """The metadata entries of an exported model agree with each other; returns its quantization config."""
    missing = [k for k in EXPORT_FIELDS if k not in meta]
    if missing:
        raise QiftError(f"checkpoint {path} lacks metadata entry {missing[0]!r}; re-export it")
    try:
        cfg = QuantConfig.from_dict(meta["quant_config"])
        w2_set, other = cfg.level_set, cfg.other_level_set
    except QiftError as exc:
        raise QiftError(f"checkpoint {path}: quant_config: {exc}") from None
    w2 = meta["w2_layers"]
    for name, info in meta["linears"].items():
        m = _LAYER_OF.match(name)
        want = None if m is None else w2_set if int(m.group(1)) in w2 else other
        want_name = None if want is None else want.name
        if info["level_set"] != want_name:
            raise QiftError(f"checkpoint {path}: linear {name} has level set {info['level_set']!r}, but its "
                            f"quant_config and W2 layer list give {want_name!r}; re-export it")
    rotation, hf = meta["rotation"], meta["hf_config"]
    if cfg.rotate != (rotation is not None):
        raise QiftError(f"checkpoint {path}: quant_config says rotate={cfg.rotate} but the rotation record is "
                        f"{'absent' if rotation is None else 'present'}; re-export it")
    if rotation is not None:
        if rotation.get("seed") != cfg.rotation_seed:
            raise QiftError(f"checkpoint {path}: rotation seed {rotation.get('seed')!r} differs from quant_config's "
                            f"rotation_seed {cfg.rotation_seed!r}; re-export it")
        for key, hf_key in (("hidden_size", "hidden_size"), ("intermediate_size", "intermediate_size"),
                            ("num_layers", "num_hidden_layers")):
            if key in rotation and rotation[key] != hf.get(hf_key):
                raise QiftError(f"checkpoint {path}: rotation record {key}={rotation[key]} differs from the model "
                                f"config's {hf_key}={hf.get(hf_key)}; re-export it")
    return cfg


def _check_state(path: Path, state: dict[str, torch.Tensor], model: nn.Module, linears: dict[str, dict]) -> None:
    """The stored float tensors are exactly the rebuilt model's (less the quantized weights), dtype and shape."""
    expected = model.state_dict()
    modules = dict(model.named_modules())
    for name, info in linears.items():
        lin = modules.get(name)
        if not isinstance(lin, nn.Linear) or list(lin.weight.shape) != info["shape"]:
            raise QiftError(f"checkpoint {path}: linear {name} {info['shape']} is not a linear of that shape in the "
                            "model its config describes; re-export it")
    wanted = set(expected) - {f"{n}.weight" for n in linears}
    missing, extra = sorted(wanted - set(state)), sorted(set(state) - wanted)
    if missing:
        raise QiftError(f"checkpoint {path} lacks {len(missing)} tensors (e.g. {missing[0]}); re-export it")
    if extra:
        raise QiftError(f"checkpoint {path} has tensor {extra[0]} that its model does not have; re-export it")
    for key in sorted(wanted):
        _check_tensor(path, key, state[key], expected[key].dtype, list(expected[key].shape))


def _rebuild(path: Path, hf_config: dict) -> nn.Module:
    """The untrained architecture of a stored Hugging Face config, in float32 on the CPU."""
    from transformers import AutoConfig, AutoModelForCausalLM

    hf = dict(hf_config)
    model_type = hf.pop("model_type", None)
    try:
        config = AutoConfig.for_model(model_type, **hf)
        config.tie_word_embeddings = False
        with torch.device("cpu"):
            return AutoModelForCausalLM.from_config(config, dtype=PARAM_DTYPE)
    except Exception as exc:
        raise QiftError(f"checkpoint {path}: cannot rebuild model config ({short_message(exc)})") from exc


def stream_layer_file(i: int) -> str:
    """File name of decoder layer i in a streamed checkpoint."""
    return f"layer-{i:05d}.safetensors"


def stream_files(n_layers: int) -> list[str]:
    """The files of a streamed checkpoint of a model with `n_layers` decoder layers, in the order they are written."""
    return [STREAM_REST, *(stream_layer_file(i) for i in range(n_layers))]


def write_stream_index(folder: str | Path, hf_config: dict, rotation: dict | None, quant_config: dict | None,
                       w2_layers: list[int], model_id: str, source: str) -> Path:
    """Write `qift-index.json` (atomically, last) over the files already in `folder`: the exported model's
    metadata, the source checkpoint, each file's content digest (so a file of another run is refused) and
    provenance."""
    from qift_hw.core.provenance import provenance

    folder = Path(folder)
    files = stream_files(int(hf_config["num_hidden_layers"]))
    digests = {name: _raw_metadata(folder / name)[DIGEST] for name in files}
    return write_json(folder / STREAM_INDEX, {
        "format": STREAM_FORMAT, "hf_config": hf_config, "rotation": rotation, "quant_config": quant_config,
        "w2_layers": w2_layers, "model_id": model_id, "source": source, "files": files, "digests": digests,
        "provenance": provenance()})


def _stream_error(folder: Path, what: str) -> QiftError:
    return QiftError(f"streamed checkpoint {folder}: {what}; run the streaming quantization "
                     "(`qift-hw eval --stream --export`) again")


def _stream_index(folder: Path) -> dict:
    """The index of a streamed checkpoint folder, its entries present and its file list the one its config implies."""
    index = folder / STREAM_INDEX
    if not index.is_file():
        raise QiftError(f"{folder} is a folder without {STREAM_INDEX}, so not a finished streaming run's output; run "
                        "`qift-hw eval --stream --export` (again) or pass a checkpoint file")
    try:
        meta = json.loads(index.read_text())
    except (OSError, ValueError) as exc:
        raise _stream_error(folder, f"{STREAM_INDEX} is not readable JSON ({short_message(exc)})") from exc
    if not isinstance(meta, dict) or meta.get("format") != STREAM_FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else None
        raise _stream_error(folder, f"{STREAM_INDEX} has format {got!r}, expected {STREAM_FORMAT!r}")
    missing = [k for k in STREAM_FIELDS if k not in meta]
    if missing:
        raise _stream_error(folder, f"{STREAM_INDEX} lacks entry {missing[0]!r} (written by an older qift-hw?)")
    n = meta["hf_config"].get("num_hidden_layers") if isinstance(meta["hf_config"], dict) else None
    if type(n) is not int or n < 1 or meta["files"] != stream_files(n):
        raise _stream_error(folder, f"{STREAM_INDEX} lists files {meta['files']!r}, not rest and one per layer of "
                                    f"its config's {n!r} layers")
    if not isinstance(meta["digests"], dict) or set(meta["digests"]) != set(meta["files"]):
        raise _stream_error(folder, f"{STREAM_INDEX} does not give one digest per file")
    return meta


def _stream_owner(key: str) -> str:
    m = _LAYER_OF.match(key)
    return STREAM_REST if m is None else stream_layer_file(int(m.group(1)))


def _read_stream(folder: Path, index: dict
                 ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, dict]]:
    """Every tensor, unpacked code and `linears` entry of a streamed checkpoint's files, each file checked as a
    checkpoint file is, against the digest the index recorded for it and for holding only its own layer's tensors."""
    tensors: dict[str, torch.Tensor] = {}
    codes: dict[str, torch.Tensor] = {}
    linears: dict[str, dict] = {}
    for name in index["files"]:
        path = folder / name
        if not path.is_file():
            raise _stream_error(folder, f"{name} is missing")
        with _reading(path):
            raw = _raw_metadata(path)
            if raw[DIGEST] != index["digests"][name]:
                raise _stream_error(folder, f"{name} is not the file this run wrote (its digest differs from the one "
                                            f"in {STREAM_INDEX})")
            lin = _decode(path, raw).get("linears", {})
            t, c = _read_tensors(path, raw, lin)
        stray = sorted(k for k in [*t, *lin] if _stream_owner(k) != name)
        if stray:
            raise _stream_error(folder, f"{name} holds {stray[0]}, which belongs in {_stream_owner(stray[0])}")
        tensors.update(t)
        codes.update(c)
        linears.update(lin)
    return tensors, codes, linears


def _load_stream(folder: Path) -> tuple[dict, QuantConfig, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Metadata (as an exported model's), config, tensors and codes of a streamed checkpoint folder."""
    index = _stream_index(folder)
    if index["quant_config"] is None:
        raise QiftError(f"streamed checkpoint {folder} holds the float model (the streaming run had no quantization "
                        f"config); load its source {index['source']} with load_model instead")
    tensors, codes, linears = _read_stream(folder, index)
    meta = {**index, "linears": linears}
    return meta, _check_export_meta(folder, meta), tensors, codes


def _load_file(path: Path) -> tuple[dict, QuantConfig, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Metadata, config, tensors and codes of an exported checkpoint file."""
    raw = _raw_metadata(path)
    meta = _decode(path, raw)
    cfg = _check_export_meta(path, meta)
    return (meta, cfg, *_read_tensors(path, raw, meta["linears"]))


def read_quantized(path: str | Path, device: str | torch.device = "cpu"
                   ) -> tuple[nn.Module, dict, dict[str, QuantizedLinear]]:
    """`load_quantized`'s (model, metadata) and the quantized linears it rebuilt them from (codes and per-row
    params on the CPU, as `quantized_weights` gives), from one read of the checkpoint: for the bit-accurate
    backends, which need both."""
    path = Path(path)
    with _reading(path):
        meta, cfg, tensors, codes = _load_stream(path) if path.is_dir() else _load_file(path)
        linears = meta["linears"]
        model = _rebuild(path, meta["hf_config"])
        untie_embeddings(model)
        model.eval()
        prepare_model(model, cfg)
        state = {k: t for k, t in tensors.items()
                 if not k.endswith(QUANTIZED_SUFFIXES) or k.rsplit(".", 1)[0] not in linears}
        _check_state(path, state, model, linears)
        model.load_state_dict(state, strict=False)
        modules = dict(model.named_modules())
        weights = _linears_from(tensors, codes, linears, "cpu")
        for name, ql in weights.items():
            deq = ql.dequantized()
            lin = modules[name]
            with torch.no_grad():
                lin.weight.copy_(deq)
            lin.set_qweight(deq)
    model.to(device)
    return model, meta, weights


def load_quantized(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the quantized model from a checkpoint file or a streamed checkpoint folder; returns (model in eval
    mode on `device`, metadata).

    QiftError (one line) for a checkpoint that is missing, corrupt, tampered with or inconsistent.
    """
    model, meta, _ = read_quantized(path, device)
    return model, meta
