"""Models larger than memory: rotation, calibration, GPTQ/RTN and perplexity one decoder layer at a time.

A Hugging Face checkpoint folder (config.json and safetensors shards, with the index `save_pretrained` writes) is
opened memory-mapped (`safetensors.safe_open`); the model is built with every weight on the meta device, and only
the embedding, final norm, lm_head and ONE decoder layer are materialised at a time (float32, as `load_model`).
For each layer i, in order:
1. its tensors are read from the shards and the layer is rotated (`rotation.rotate_layer`, the same float64
   arithmetic `rotate_model` applies to the whole model);
2. it is quantized on the calibration hidden states with the in-memory code (`layer.quantize_layer`), and its
   outputs become layer i+1's calibration inputs;
3. the evaluation windows' hidden states go through the quantized layer;
4. its tensors are written to its own qift-1 shard (`layer-NNNNN.safetensors`) and the layer goes back to meta.
The embedding runs once at the start and the final norm, lm_head and the NLL at the end. The same operations on
the same values as `quantize.quantize_model` followed by `evaluate.window_nlls`, so codes, scales and perplexity
are equal bit for bit; peak memory is one layer (plus its dequantized copy and the rotation's float64
temporaries), the embedding and lm_head, and the hidden states of the calibration and evaluation windows.

Output folder, a streamed checkpoint (`checkpoint`'s module doc) that `checkpoint.load_quantized` reads:
`rest.safetensors` (embedding, final norm, lm_head), one `layer-NNNNN.safetensors` per decoder layer (packed codes
and scales as `checkpoint.linear_tensors`, the layer's other tensors, metadata `linears` and `records`) and
`qift-index.json` (hf_config, rotation, quant_config, w2_layers, model_id, source, files, their digests,
provenance), written last by `checkpoint.write_stream_index`.
Not done: sensitivity-chosen W2 layers (they need a scoring pass over the model) and resuming a run.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from qift_hw.algo.capture import Batch, capture_layer_inputs, propagate
from qift_hw.algo.checkpoint import (STREAM_INDEX, STREAM_REST, _write, linear_tensors,
                                     stream_layer_file, write_stream_index)
from qift_hw.algo.config import QuantConfig
from qift_hw.algo.layer import quantize_layer
from qift_hw.algo.mixed import parse_w2_spec, select_w2_layers
from qift_hw.algo.models import check_supported, head_dim, model_source, short_message, untie_embeddings
from qift_hw.algo.qmodel import quantize_model_forward, wrap_model
from qift_hw.algo.quantized import QuantizedLinear
from qift_hw.algo.rotation import RotationInfo, check_rotatable, rotate_ends, rotate_layer
from qift_hw.core.errors import QiftError
from qift_hw.core.hadamard import random_hadamard
from qift_hw.core.levels import LevelSet

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
DTYPE = torch.float32
OUTER = ("model.embed_tokens", "model.norm", "lm_head")


class ShardedCheckpoint:
    """The tensors of a HF checkpoint folder by name, read memory-mapped from its safetensors shards."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        if not (self.folder / "config.json").is_file():
            raise QiftError(f"{self.folder} has no config.json; give a Hugging Face checkpoint folder")
        index = self.folder / INDEX
        if index.is_file():
            try:
                self.weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError) as exc:
                raise QiftError(f"{index} is not a safetensors index ({short_message(exc)}); re-save the model") from exc
        elif (self.folder / SINGLE).is_file():
            from safetensors import safe_open

            with safe_open(str(self.folder / SINGLE), "pt") as f:
                self.weight_map = {k: SINGLE for k in f.keys()}
        else:
            raise QiftError(f"{self.folder} has neither {INDEX} nor {SINGLE}; save the model with save_pretrained")
        missing = sorted({s for s in self.weight_map.values() if not (self.folder / s).is_file()})
        if missing:
            raise QiftError(f"checkpoint {self.folder}: shard {missing[0]} listed in {INDEX} is missing "
                            f"({len(missing)} missing); copy or re-download it")

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def tensor(self, name: str, dtype: torch.dtype = DTYPE, device: torch.device | str = "cpu") -> torch.Tensor:
        """One tensor, read from its shard (only its bytes are paged in) and cast to `dtype`; the shard is unmapped
        again, so its pages do not stay in this process's resident set."""
        from safetensors import safe_open

        if name not in self.weight_map:
            raise QiftError(f"checkpoint {self.folder} has no tensor {name}; it does not match its config.json")
        with safe_open(str(self.folder / self.weight_map[name]), "pt") as f:
            return f.get_tensor(name).to(device=device, dtype=dtype)

    def nbytes(self) -> int:
        """Bytes of the shards on disk."""
        return sum((self.folder / s).stat().st_size for s in set(self.weight_map.values()))


def skeleton(ckpt: ShardedCheckpoint, device: torch.device | str = "cpu") -> nn.Module:
    """The model with all weights on meta, except the rotary tables and, loaded on `device`, the embedding, final
    norm and lm_head (untied: the embedding is copied when the checkpoint has no lm_head)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(ckpt.folder)
    except (OSError, ValueError, KeyError) as exc:
        raise QiftError(f"cannot read {ckpt.folder}/config.json ({short_message(exc)})") from exc
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=DTYPE)
    check_supported(model)
    inner = model.model
    inner.rotary_emb = type(inner.rotary_emb)(config=model.config).to(device)
    untie_embeddings(model)
    head = "lm_head.weight" if "lm_head.weight" in ckpt else "model.embed_tokens.weight"
    load_module(model.model.embed_tokens, "model.embed_tokens.", ckpt, device)
    load_module(model.model.norm, "model.norm.", ckpt, device)
    model.lm_head.weight = nn.Parameter(ckpt.tensor(head, device=device), requires_grad=False)
    model.eval()
    return model


def load_module(module: nn.Module, prefix: str, ckpt: ShardedCheckpoint,
                device: torch.device | str = "cpu") -> None:
    """Replace the (meta) parameters of `module` by the checkpoint's tensors `prefix + name`, on `device`."""
    state = {name: ckpt.tensor(prefix + name, device=device) for name in module.state_dict()}
    module.load_state_dict(state, assign=True, strict=True)
    for p in module.parameters():
        p.requires_grad_(False)


def free_module(module: nn.Module) -> None:
    """Send a module's tensors back to meta and drop cached shared inputs, freeing their memory."""
    module.to("meta")
    for m in module.modules():
        shared = getattr(m, "shared_input", None)
        if shared is not None:
            shared.clear()


@dataclass
class StreamResult:
    """What a streaming run did: per-linear records, the W2 layers, the evaluation NLLs and the timings."""

    w2_layers: list[int]
    records: list[dict]
    nlls: torch.Tensor | None
    seqlen: int
    timings: dict[str, float]
    rotation: dict | None
    weights: dict[str, QuantizedLinear] = field(default_factory=dict)

    @property
    def ppl(self) -> float | None:
        from qift_hw.algo.evaluate import ppl_from_nlls

        return None if self.nlls is None else ppl_from_nlls(self.nlls, self.seqlen)


def _level_sets(config: QuantConfig | None, n_layers: int) -> tuple[list[int], list[LevelSet | None]]:
    if config is None:
        return [], [None] * n_layers
    spec = parse_w2_spec(config.w2_layers)
    if spec.needs_scores:
        raise QiftError(f"--w2-layers {config.w2_layers} needs a sensitivity pass, which the streaming path does not "
                        "run; give the layers (all, none, first:L, last:L or a list)")
    w2 = select_w2_layers(spec, n_layers, None)
    return w2, [config.level_set if i in w2 else config.other_level_set for i in range(n_layers)]


def _prepare(model: nn.Module, config: QuantConfig | None) -> tuple[torch.Tensor | None, RotationInfo | None]:
    """Wrap the skeleton, rotate its outer tensors and switch on the quantized forward (as `prepare_model`)."""
    if config is None or not config.rotate:
        if config is not None:
            quantize_model_forward(model, a_bits=config.a_bits, kv_bits=config.kv_bits, a_clip=config.a_clip,
                                   kv_clip=config.kv_clip)
        return None, None
    hidden, inter, hd = check_rotatable(model)
    wrap_model(model)
    device = model.model.embed_tokens.weight.device
    q = random_hadamard(hidden, config.rotation_seed).to(device=device, dtype=torch.float64)
    rotate_ends(model, q)
    info = RotationInfo(seed=config.rotation_seed, hidden_size=hidden, intermediate_size=inter, head_dim=hd,
                        num_layers=len(model.model.layers))
    model.qift_rotation = info
    quantize_model_forward(model, a_bits=config.a_bits, kv_bits=config.kv_bits, a_clip=config.a_clip,
                           kv_clip=config.kv_clip)
    return q, info


def _window_nlls(model: nn.Module, batches: list[Batch], windows: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Summed NLL of each window from the last layer's hidden states (as `evaluate.window_nlls` from logits)."""
    sums = []
    for j, (h, _) in enumerate(batches):
        ids = windows[j * batch_size : (j + 1) * batch_size].to(h.device)
        logits = model.lm_head(model.model.norm(h))
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        nll = -logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        sums.append(nll.double().sum(dim=1).cpu())
    return torch.cat(sums)


def _layer_file(out: Path, i: int) -> Path:
    return out / stream_layer_file(i)


def _write_layer(out: Path, i: int, layer: nn.Module, weights: dict[str, QuantizedLinear], records: list[dict]
                 ) -> Path:
    tensors, linears = linear_tensors(weights)
    prefix = f"model.layers.{i}."
    for key, value in layer.state_dict().items():
        name = prefix + key
        if not (key.endswith(".weight") and name[: -len(".weight")] in weights):
            tensors[name] = value.detach().cpu().contiguous()
    return _write(_layer_file(out, i), tensors, {"linears": linears, "records": records})


@torch.no_grad()
def stream_run(folder: str | Path, config: QuantConfig | None = None, calib: torch.Tensor | None = None,
               eval_windows: torch.Tensor | None = None, out: str | Path | None = None, eval_batch_size: int = 1,
               keep_weights: bool = False, model_id: str = "", progress: bool = True,
               on_layer=None) -> StreamResult:
    """Quantize (config given) and/or evaluate (eval_windows [n, seqlen] given) the checkpoint in `folder` layer
    by layer (module doc). config None: the float model. calib: token windows [n, seqlen] for GPTQ (RTN needs
    none). out: folder for the streamed checkpoint (`checkpoint.load_quantized` reads it). model_id: where its
    tokenizer comes from (default: the source folder). keep_weights: also return every quantized linear (small
    models).
    on_layer(i): called after each layer is freed (the benchmark samples memory there).
    """
    t_start = time.perf_counter()
    if config is not None:
        config.validate()
    gptq = config is not None and config.method == "gptq"
    if gptq and calib is None:
        raise QiftError("GPTQ needs calibration windows; pass calib (or use method rtn)")
    device = torch.device(config.device if config is not None else "cpu")
    ckpt = ShardedCheckpoint(folder)
    model = skeleton(ckpt, device)
    layers = model.model.layers
    n_layers = len(layers)
    w2, level_sets = _level_sets(config, n_layers)
    q, rotation = _prepare(model, config)
    hd = head_dim(model)
    batch_size = config.batch_size if config is not None else 1
    calib_b = capture_layer_inputs(model, calib, batch_size, device) if gptq else None
    eval_b = capture_layer_inputs(model, eval_windows, eval_batch_size, device) if eval_windows is not None else None
    out_dir = None if out is None else Path(out)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / STREAM_INDEX).unlink(missing_ok=True)  # until this run's is written, the folder reads as unfinished
        _write(out_dir / STREAM_REST,
               {f"{p}.weight": model.get_submodule(p).weight.detach().cpu().contiguous() for p in OUTER}, {})
    timer: dict[str, float] = {"load_s": 0.0, "rotate_s": 0.0, "eval_s": 0.0}
    records: list[dict] = []
    kept: dict[str, QuantizedLinear] = {}
    for i in tqdm(range(n_layers), desc="stream", unit="layer", disable=not progress):
        layer, ls = layers[i], level_sets[i]
        t0 = time.perf_counter()
        load_module(layer, f"model.layers.{i}.", ckpt, device)
        t1 = time.perf_counter()
        timer["load_s"] += t1 - t0
        if q is not None:
            rotate_layer(layer, q, hd)
            timer["rotate_s"] += time.perf_counter() - t1
        lw: dict[str, QuantizedLinear] = {}
        if ls is not None:
            lw, lrec, outs = quantize_layer(layer, calib_b if gptq else [], ls, config, i, timer)
            records.extend(lrec)
            if keep_weights:
                kept.update(lw)
        else:
            lrec, outs = [], None
        if gptq and any(later is not None for later in level_sets[i + 1:]):
            calib_b = outs if outs is not None else propagate(layer, calib_b)
        else:
            calib_b = None
        if eval_b is not None:
            t0 = time.perf_counter()
            eval_b = propagate(layer, eval_b)
            timer["eval_s"] += time.perf_counter() - t0
        if out_dir is not None:
            _write_layer(out_dir, i, layer, lw, lrec)
        del lw, outs
        free_module(layer)
        if on_layer is not None:
            on_layer(i)
    nlls = None
    if eval_b is not None:
        nlls = _window_nlls(model, eval_b, eval_windows, eval_batch_size)
    if out_dir is not None:
        write_stream_index(out_dir, json.loads(model.config.to_json_string(use_diff=False)),
                           None if rotation is None else rotation.to_dict(),
                           None if config is None else config.to_dict(), w2, model_source(model_id or str(folder)),
                           str(Path(folder).resolve()))
    timer["total_s"] = time.perf_counter() - t_start
    seqlen = 0 if eval_windows is None else int(eval_windows.shape[1])
    return StreamResult(w2_layers=w2, records=records, nlls=nlls, seqlen=seqlen, timings=timer,
                        rotation=None if rotation is None else rotation.to_dict(), weights=kept)

