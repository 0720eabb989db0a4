"""Quantize a model: QuaRot rotation, then sequential layer-by-layer GPTQ (or RTN) calibration.

Order of work (GPTQ/QuaRot's "true sequential" scheme):
1. rotate the float model (`rotation.rotate_model`) and switch on the quantized forward (`qmodel`): INT4
   per-token activations on every decoder linear input and 4-bit KV cache, as configured;
2. run the calibration windows up to the first decoder layer and keep its inputs;
3. for each layer, for each group of linears that read the same input ({q,k,v}, {o}, {gate,up}, {down}):
   run the layer on the calibration inputs up to that group, accumulate the Hessian of the input *as the
   quantized forward sees it* (after the online Hadamard and the INT4 activation quantizer, like QuaRot, which
   also calibrates with activation quantization on), quantize the group's weights and install them;
4. run the layer again with all its weights quantized; its outputs are the next layer's calibration inputs.

Parts of a layer whose weights are already final are not recomputed in steps 3-4: once o_proj is quantized the
attention output of every batch is kept and stands in for the attention in the later passes, and the input of
down_proj (kept while its Hessian is accumulated) gives the layer output with one product. The tensors are the
ones a full forward computes (same operations on the same values), so the result is the same bit for bit.

Each finished layer is checkpointed (codes and scales, atomically) into a run folder; a rerun with the same
folder and configuration loads the finished layers and continues after the last one, giving the same result
bit for bit as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from qift_hw.core.errors import QiftError
from qift_hw.algo.gptq import GPTQResult, HessianAccumulator, gptq_quantize, relative_output_error, rtn_quantize
from qift_hw.core.io import atomic_path, write_json
from qift_hw.core.levels import QParams, dequantize, get_level_set
from qift_hw.algo.mixed import parse_w2_spec, select_w2_layers

LINEAR_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("self_attn", ("q_proj", "k_proj", "v_proj")),
    ("self_attn", ("o_proj",)),
    ("mlp", ("gate_proj", "up_proj")),
    ("mlp", ("down_proj",)),
)
METHODS = ("gptq", "rtn")
FLOAT_BITS = 16


@dataclass
class QuantConfig:
    """Everything that determines a quantized model (and the run folder's identity).

    levels: the 2-bit level set for W2 layers; other_bits: 4 (int4), 3 (int3) or 16 (float) for the others;
    w2_layers: see `qift_hw.algo.mixed`; method: gptq or rtn; scale_method: mse (clip search) or maxabs;
    a_bits / kv_bits: 4 or 16 (off); rotate: QuaRot rotation with `rotation_seed`; calibration: `calib_windows`
    windows of `calib_seqlen` tokens from `calib_source`, sampled with `calib_seed`; sensitivity_windows: windows
    used by the `sensitivity:L` pass.
    """

    levels: str = "mnz"
    method: str = "gptq"
    scale_method: str = "mse"
    w2_layers: str = "all"
    other_bits: int = 4
    a_bits: int = 4
    kv_bits: int = 4
    a_clip: float = 0.9
    kv_clip: float = 0.95
    rotate: bool = True
    rotation_seed: int = 0
    calib_source: str = "pydoc"
    calib_windows: int = 128
    calib_seqlen: int = 512
    calib_seed: int = 0
    blocksize: int = 128
    act_order: bool = False
    damp: float = 0.01
    true_sequential: bool = True
    sensitivity_windows: int = 32
    batch_size: int = 8
    hessian_dtype: str = "float32"
    gptq_dtype: str = "float32"
    device: str = "cpu"

    def validate(self) -> None:
        """Raise QiftError for values that cannot work."""
        ls = get_level_set(self.levels)
        if ls.bits != 2:
            raise QiftError(f"--levels {self.levels!r} is a {ls.bits}-bit set; W2 layers need a 2-bit level set")
        if self.method not in METHODS:
            raise QiftError(f"unknown method {self.method!r}; use gptq or rtn")
        if self.scale_method not in ("mse", "maxabs"):
            raise QiftError(f"unknown scale method {self.scale_method!r}; use mse or maxabs")
        if self.other_bits not in (3, 4, 8, FLOAT_BITS):
            raise QiftError(f"--other-bits must be 4, 3, 8 or 16 (float), got {self.other_bits}")
        parse_w2_spec(self.w2_layers)
        for what, v in (("calibration windows", self.calib_windows), ("calibration seqlen", self.calib_seqlen),
                        ("batch size", self.batch_size), ("blocksize", self.blocksize),
                        ("sensitivity windows", self.sensitivity_windows)):
            if v < 1:
                raise QiftError(f"{what} must be >= 1, got {v}")
        if self.damp < 0:
            raise QiftError(f"damping must be >= 0, got {self.damp}")
        for what, v in (("hessian", self.hessian_dtype), ("gptq", self.gptq_dtype)):
            if v not in ("float32", "float64"):
                raise QiftError(f"{what} dtype must be float32 or float64, got {v}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> QuantConfig:
        """Build from `to_dict` output; also reads results written before `seed` became `calib_seed`."""
        d = {"calib_seed": d["seed"], **d} if "seed" in d else d
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def identity(self) -> dict:
        """The fields that change the quantized weights (not the device or the batch size)."""
        d = self.to_dict()
        for k in ("device", "batch_size"):
            d.pop(k)
        return d

    def key(self, model_id: str = "") -> str:
        """Short stable hash of the identity and a model id, for run-folder names."""
        text = json.dumps({"model": model_id, **self.identity()}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def label(self) -> str:
        """Short human label, e.g. 'mnz gptq W2A4KV4' or 'mnz gptq W2(first:8)/W4 A4KV4'."""
        spec = parse_w2_spec(self.w2_layers)
        w = "W2" if spec.kind == "all" else f"W{self.other_bits}" if spec.kind == "none" else \
            f"W2[{spec}]/W{self.other_bits}"
        a = f"A{self.a_bits}" if self.a_bits != FLOAT_BITS else "A16"
        kv = f"KV{self.kv_bits}" if self.kv_bits != FLOAT_BITS else ""
        name = self.levels if spec.kind != "none" else f"int{self.other_bits}"
        return f"{name} {self.method} {w}{a}{kv}"


@dataclass
class QuantizedLinear:
    """One quantized weight: level set name, codes [N,K] uint8 and per-row params."""

    level_set: str
    codes: torch.Tensor
    params: QParams

    def dequantized(self) -> torch.Tensor:
        return dequantize(self.codes, self.level_set, self.params)


@dataclass
class QuantizedModel:
    """Result of `quantize_model`: the model (quantized weights installed) and what was done to it."""

    model: nn.Module
    config: QuantConfig
    w2_layers: list[int]
    layer_level_sets: list[str | None]
    weights: dict[str, QuantizedLinear]
    records: list[dict]
    rotation: dict | None
    sensitivity: list[float] | None = None
    timings: dict = field(default_factory=dict)
    resumed_layers: int = 0

    def layer_errors(self) -> list[float | None]:
        """Mean relative output error ||WX-QX||/||WX|| of each layer's linears (None where not measured)."""
        out: list[float | None] = []
        for i in range(len(self.layer_level_sets)):
            errs = [r["rel_error"] for r in self.records if r["layer"] == i and r.get("rel_error") is not None]
            out.append(sum(errs) / len(errs) if errs else None)
        return out


def set_integer_products(model: nn.Module, weights: dict[str, QuantizedLinear], on: bool = True) -> list[str]:
    """Switch the W2 linears whose level set the hardware decodes (formats.HW_LEVEL_SETS) to the integer-product
    mode (`QLinear.set_int_weight`): INT4 codes times integer weights, then `formats.dequantize_acc`, as the
    integer model computes them. Other layers keep the fake-quant product. Returns the names switched."""
    from qift_hw.core.formats import HW_LEVEL_SETS, weight_ints
    from qift_hw.algo.qmodel import iter_qlinears

    done = []
    for name, q in iter_qlinears(model):
        ql = weights.get(name)
        if ql is None or ql.level_set not in HW_LEVEL_SETS:
            continue
        if on:
            q.set_int_weight(weight_ints(ql.codes, ql.level_set), ql.params.scale, ql.level_set)
        else:
            q.set_int_weight(None)
        done.append(name)
    return done


class _Stop(Exception):
    """Raised from a capture hook to end a layer's forward once the wanted input was seen."""


def _layers(model: nn.Module) -> nn.ModuleList:
    return model.model.layers


def _layer_forward(layer: nn.Module, x: torch.Tensor, kw: dict) -> torch.Tensor:
    out = layer(x, **kw)
    return out[0] if isinstance(out, tuple) else out


class _Catcher(nn.Module):
    """Stands in for decoder layer 0 to record its input and keyword arguments, then stops the forward."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer
        if hasattr(layer, "attention_type"):
            self.attention_type = layer.attention_type
        self.seen: list[tuple[torch.Tensor, dict]] = []

    def forward(self, hidden_states, *args, **kwargs):
        kwargs = {k: v for k, v in kwargs.items() if k not in ("past_key_values", "past_key_value", "use_cache")}
        self.seen.append((hidden_states.detach(), kwargs))
        raise _Stop


@torch.no_grad()
def capture_layer_inputs(model: nn.Module, windows: torch.Tensor, batch_size: int, device) -> list[tuple[torch.Tensor, dict]]:
    """Inputs (hidden states and keyword arguments) of decoder layer 0 for each batch of windows."""
    layers = _layers(model)
    catcher = _Catcher(layers[0])
    layers[0] = catcher
    try:
        for b0 in range(0, windows.shape[0], batch_size):
            try:
                model(input_ids=windows[b0 : b0 + batch_size].to(device), use_cache=False)
            except _Stop:
                pass
    finally:
        layers[0] = catcher.layer
    return catcher.seen


def _group_linears(layer: nn.Module, owner: str, names: tuple[str, ...]) -> list[nn.Module]:
    return [getattr(getattr(layer, owner), n) for n in names]


@torch.no_grad()
def _collect_hessians(layer, batches, groups, device, dtype) -> list[HessianAccumulator]:
    """Hessians of the inputs of each group's linears (shared input) over all batches; stops after the last group."""
    heads = [_group_linears(layer, owner, names)[0] for owner, names in groups]
    accs = [HessianAccumulator(h.in_features, device=device, product_dtype=dtype) for h in heads]
    last = len(heads) - 1

    def hook(i):
        def capture(x):
            accs[i].add(x)
            if i == last:
                raise _Stop
        return capture

    for i, h in enumerate(heads):
        h.capture = hook(i)
    try:
        for x, kw in batches:
            try:
                _layer_forward(layer, x, kw)
            except _Stop:
                pass
    finally:
        for h in heads:
            h.capture = None
    return accs


def _quantize_group(lins: list[nn.Module], H: torch.Tensor | None, ls_name: str, cfg: QuantConfig,
                    prefix: str) -> tuple[list[QuantizedLinear], list[dict]]:
    """Quantize linears that share one input: GPTQ on their stacked rows (rows are independent given H)."""
    ls = get_level_set(ls_name)
    W = torch.cat([lin.weight.detach() for lin in lins], dim=0).float()
    t0 = time.perf_counter()
    if cfg.method == "gptq":
        res: GPTQResult = gptq_quantize(W, H, ls, scale_method=cfg.scale_method, blocksize=cfg.blocksize,
                                        act_order=cfg.act_order, damp=cfg.damp, name=prefix,
                                        compute_dtype=getattr(torch, cfg.gptq_dtype))
    else:
        res = rtn_quantize(W, ls, cfg.scale_method)
    seconds = time.perf_counter() - t0
    outs, recs, r0 = [], [], 0
    for lin in lins:
        r1 = r0 + lin.out_features
        zero = None if res.params.zero is None else res.params.zero[r0:r1].clone()
        ql = QuantizedLinear(ls.name, res.codes[r0:r1].clone(), QParams(res.params.scale[r0:r1].clone(), zero))
        deq = ql.dequantized()
        lin.set_qweight(deq)
        err = relative_output_error(lin.weight.detach().float(), deq, H) if H is not None else None
        outs.append(ql)
        recs.append({"name": lin.name, "level_set": ls.name, "rel_error": err, "damp": res.damp_used,
                     "gptq_loss": res.loss, "seconds": seconds})
        r0 = r1
    return outs, recs


def _layer_level_set(i: int, w2: list[int], cfg: QuantConfig) -> str | None:
    if i in w2:
        return get_level_set(cfg.levels).name
    return None if cfg.other_bits == FLOAT_BITS else f"int{cfg.other_bits}"


def _groups(cfg: QuantConfig) -> list[list[tuple[str, tuple[str, ...]]]]:
    return [[g] for g in LINEAR_GROUPS] if cfg.true_sequential else [list(LINEAR_GROUPS)]


def _hdtype(cfg: QuantConfig) -> torch.dtype:
    return torch.float32 if cfg.hessian_dtype == "float32" else torch.float64


def _tick(timer: dict | None, key: str, t0: float) -> float:
    t1 = time.perf_counter()
    if timer is not None:
        timer[key] = timer.get(key, 0.0) + t1 - t0
    return t1


@contextmanager
def _forward_replaced(module: nn.Module, fn: Callable) -> Iterator[None]:
    """Run `fn` instead of `module.forward` inside the block (an instance attribute, removed afterwards)."""
    old = module.__dict__.get("forward")
    module.forward = fn
    try:
        yield
    finally:
        if old is None:
            del module.forward
        else:
            module.forward = old


@contextmanager
def _cached_parts(layer: nn.Module, attn_out: torch.Tensor | None, mlp_out: torch.Tensor | None) -> Iterator[None]:
    """Inside the block the layer's self-attention returns `attn_out` and its MLP `mlp_out` (each if not None).

    The attention result follows the transformers interface (output, attention weights).
    """
    with ExitStack() as stack:
        if attn_out is not None:
            stack.enter_context(_forward_replaced(layer.self_attn, lambda *a, **k: (attn_out, None)))
        if mlp_out is not None:
            stack.enter_context(_forward_replaced(layer.mlp, lambda *a, **k: mlp_out))
        yield


@torch.no_grad()
def _capture_pass(layer: nn.Module, batches: list, head: nn.Module, acc: HessianAccumulator,
                  attn_outs: list | None = None, keep: bool = False) -> list[torch.Tensor]:
    """Run every batch through `layer` up to `head`'s input, add that input to `acc` and stop the forward there.

    attn_outs: per-batch attention outputs that replace the self-attention (its weights are final);
    keep: also return each batch's captured input ([tokens, in_features], as the weight sees it).
    """
    kept: list[torch.Tensor] = []

    def capture(x: torch.Tensor) -> None:
        acc.add(x)
        if keep:
            kept.append(x)
        raise _Stop

    head.capture = capture
    try:
        for j, (x, kw) in enumerate(batches):
            with _cached_parts(layer, attn_outs[j] if attn_outs is not None else None, None):
                try:
                    _layer_forward(layer, x, kw)
                except _Stop:
                    pass
    finally:
        head.capture = None
    return kept


def _linear_out(lin: nn.Module, x2d: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The linear's output for its captured 2-D input, shaped like `like` ([..., any]) with out_features last."""
    return F.linear(x2d, lin.effective_weight(), lin.bias).view(*like.shape[:-1], lin.out_features)


@torch.no_grad()
def _quantize_layer_sequential(layer: nn.Module, batches: list, ls_name: str, cfg: QuantConfig, index: int,
                               timer: dict | None) -> tuple[dict[str, QuantizedLinear], list[dict], list]:
    """True-sequential GPTQ of one layer (groups of LINEAR_GROUPS in order) and the layer's outputs on `batches`.

    Each group's Hessian comes from the layer run with the earlier groups already quantized; the attention output
    (after o_proj) and down_proj's input are kept once final, so no part of the layer is computed twice.
    """
    weights: dict[str, QuantizedLinear] = {}
    records: list[dict] = []
    device = torch.device(cfg.device)
    attn_outs: list | None = None
    down_in: list[torch.Tensor] = []
    for owner, names in LINEAR_GROUPS:
        lins = _group_linears(layer, owner, names)
        t0 = time.perf_counter()
        acc = HessianAccumulator(lins[0].in_features, device=device, product_dtype=_hdtype(cfg))
        kept = _capture_pass(layer, batches, lins[0], acc, attn_outs, keep=names[0] in ("o_proj", "down_proj"))
        t0 = _tick(timer, "hessian_s", t0)
        qls, recs = _quantize_group(lins, acc.hessian, ls_name, cfg, f"layer {index} {'/'.join(names)}")
        _tick(timer, "weights_s", t0)
        for lin, ql, rec in zip(lins, qls, recs):
            weights[lin.name] = ql
            records.append({"layer": index, **rec})
        if names[0] == "o_proj":
            t0 = time.perf_counter()
            attn_outs = [_linear_out(lins[0], xo, x) for xo, (x, _) in zip(kept, batches)]
            _tick(timer, "hessian_s", t0)
        elif names[0] == "down_proj":
            down_in = kept
        del kept
    t0 = time.perf_counter()
    down = layer.mlp.down_proj
    outs = []
    for j, (x, kw) in enumerate(batches):
        with _cached_parts(layer, attn_outs[j], _linear_out(down, down_in[j], x)):
            outs.append((_layer_forward(layer, x, kw), kw))
        down_in[j] = None
    _tick(timer, "propagate_s", t0)
    return weights, records, outs


@torch.no_grad()
def quantize_layer(layer: nn.Module, batches: list, ls_name: str, cfg: QuantConfig, index: int,
                   timer: dict | None = None) -> tuple[dict[str, QuantizedLinear], list[dict]]:
    """Quantize one decoder layer in place on its calibration inputs (group by group, see the module doc).

    timer: optional dict that accumulates seconds under "hessian_s" (calibration forwards and X^T X) and
    "weights_s" (scale fit and GPTQ/RTN).
    """
    if cfg.method == "gptq" and cfg.true_sequential:
        weights, records, _ = _quantize_layer_sequential(layer, batches, ls_name, cfg, index, timer)
        return weights, records
    weights: dict[str, QuantizedLinear] = {}
    records: list[dict] = []
    device = torch.device(cfg.device)
    for step in _groups(cfg):
        t0 = time.perf_counter()
        accs = _collect_hessians(layer, batches, step, device, _hdtype(cfg)) if cfg.method == "gptq" else [None] * len(step)
        t0 = _tick(timer, "hessian_s", t0)
        for (owner, names), acc in zip(step, accs):
            lins = _group_linears(layer, owner, names)
            H = acc.hessian if acc is not None else None
            qls, recs = _quantize_group(lins, H, ls_name, cfg, f"layer {index} {'/'.join(names)}")
            t0 = _tick(timer, "weights_s", t0)
            for lin, ql, rec in zip(lins, qls, recs):
                weights[lin.name] = ql
                records.append({"layer": index, **rec})
    return weights, records


@torch.no_grad()
def _propagate(layer: nn.Module, batches: list) -> list:
    return [(_layer_forward(layer, x, kw), kw) for x, kw in batches]


@torch.no_grad()
def sensitivity_scores(model: nn.Module, batches: list, cfg: QuantConfig, progress: bool = True) -> list[float]:
    """Per-layer W2 cost: e(W2) - e(other), with e = ||layer(x; Wq) - layer(x; W)||^2 / ||layer(x; W)||^2.

    Each layer is quantized in isolation (GPTQ with its Hessians or RTN, all linears at once) on the inputs of
    the float-weight model (activation/KV quantization as configured), measured, then restored to float.
    """
    other = None if cfg.other_bits == FLOAT_BITS else f"int{cfg.other_bits}"
    w2 = get_level_set(cfg.levels).name
    one_pass = QuantConfig.from_dict({**cfg.to_dict(), "true_sequential": False})
    scores = []
    layers = _layers(model)
    for i in tqdm(range(len(layers)), desc="sensitivity", disable=not progress, leave=False):
        layer = layers[i]
        ref = _propagate(layer, batches)
        errs = {}
        for ls_name in (w2, other):
            if ls_name is None:
                errs[ls_name] = 0.0
                continue
            quantize_layer(layer, batches, ls_name, one_pass, i)
            num = den = 0.0
            for (x, kw), (y, _) in zip(batches, ref):
                yq = _layer_forward(layer, x, kw)
                num += float(((yq - y).double() ** 2).sum())
                den += float((y.double() ** 2).sum())
            errs[ls_name] = num / max(den, 1e-300)
            for owner, names in LINEAR_GROUPS:
                for lin in _group_linears(layer, owner, names):
                    lin.set_qweight(None)
        scores.append(errs[w2] - errs[other])
        batches = ref
    return scores


def _save_layer(run_dir: Path, index: int, weights: dict[str, QuantizedLinear], records: list[dict]) -> None:
    from safetensors.torch import save_file

    tensors, meta = {}, {}
    for name, ql in weights.items():
        tensors[f"{name}.codes"] = ql.codes.contiguous().cpu()
        tensors[f"{name}.scale"] = ql.params.scale.contiguous().cpu()
        if ql.params.zero is not None:
            tensors[f"{name}.zero"] = ql.params.zero.contiguous().cpu()
        meta[name] = ql.level_set
    path = run_dir / f"layer_{index:03d}.safetensors"
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"level_sets": json.dumps(meta), "records": json.dumps(records)})


def _load_layer(run_dir: Path, index: int, device) -> tuple[dict[str, QuantizedLinear], list[dict]] | None:
    from safetensors import safe_open

    path = run_dir / f"layer_{index:03d}.safetensors"
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata()
            level_sets = json.loads(meta["level_sets"])
            records = json.loads(meta["records"])
            weights = {}
            for name, ls in level_sets.items():
                zero = f.get_tensor(f"{name}.zero").to(device) if f"{name}.zero" in f.keys() else None
                weights[name] = QuantizedLinear(ls, f.get_tensor(f"{name}.codes").to(device),
                                                QParams(f.get_tensor(f"{name}.scale").to(device), zero))
    except Exception as exc:
        raise QiftError(f"run checkpoint {path} is unreadable ({exc}); delete it to redo that layer") from exc
    return weights, records


def _open_run_dir(run_dir: Path | None, cfg: QuantConfig, model_id: str) -> Path | None:
    if run_dir is None:
        return None
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = run_dir / "config.json"
    ident = {"model": model_id, **cfg.identity()}
    if cfg_path.is_file():
        old = json.loads(cfg_path.read_text())
        if old != json.loads(json.dumps(ident)):
            diff = sorted(k for k in set(old) | set(ident) if old.get(k) != ident.get(k))
            raise QiftError(f"run folder {run_dir} holds a run with a different configuration ({', '.join(diff)}); "
                            "use another --run-dir or delete it")
    else:
        write_json(cfg_path, ident)
    return run_dir


def prepare_model(model: nn.Module, cfg: QuantConfig) -> dict | None:
    """Rotate (if configured) and switch on the activation/KV quantizers; returns the rotation record."""
    from qift_hw.algo.qmodel import quantize_model_forward

    rot = None
    if cfg.rotate:
        from qift_hw.algo.rotation import rotate_model

        rot = rotate_model(model, seed=cfg.rotation_seed).to_dict()
    quantize_model_forward(model, a_bits=cfg.a_bits, kv_bits=cfg.kv_bits, a_clip=cfg.a_clip, kv_clip=cfg.kv_clip)
    return rot


@torch.no_grad()
def quantize_model(
    model: nn.Module,
    tokenizer,
    config: QuantConfig,
    run_dir: str | Path | None = None,
    calib: torch.Tensor | None = None,
    model_id: str = "",
    progress: bool = True,
) -> QuantizedModel:
    """Rotate and quantize `model` in place (see the module docstring); returns what was done.

    calib: token windows [n, seqlen] to use instead of sampling `config.calib_*` from the tokenizer's text.
    run_dir: per-layer checkpoints for resuming; model_id: names the model in the run folder's identity.
    """
    config.validate()
    t_start = time.perf_counter()
    device = torch.device(config.device)
    run = _open_run_dir(Path(run_dir) if run_dir is not None else None, config, model_id)
    rotation = prepare_model(model, config)
    t_rot = time.perf_counter() - t_start
    layers = _layers(model)
    n_layers = len(layers)
    spec = parse_w2_spec(config.w2_layers)

    sens_path = run / "sensitivity.json" if run is not None else None
    scores = None
    if spec.needs_scores and sens_path is not None and sens_path.is_file():
        scores = json.loads(sens_path.read_text())["scores"]
    finished = False
    if run is not None and (not spec.needs_scores or scores is not None):
        w2 = select_w2_layers(spec, n_layers, scores)
        finished = all((run / f"layer_{i:03d}.safetensors").is_file()
                       for i in range(n_layers) if _layer_level_set(i, w2, config) is not None)
    need_calib = not finished and (config.method == "gptq" or (spec.needs_scores and scores is None))
    batches = None
    t_capture = 0.0
    if need_calib:
        if calib is None:
            from qift_hw.algo.data import get_windows

            calib = get_windows(tokenizer, config.calib_source, "calib", config.calib_seqlen,
                                config.calib_windows, config.calib_seed)
        t_cap = time.perf_counter()
        batches = capture_layer_inputs(model, calib, config.batch_size, device)
        t_capture = time.perf_counter() - t_cap

    if spec.needs_scores and scores is None:
        kept, count = [], 0
        for x, kw in batches:  # whole batches, so the captured keyword arguments keep matching
            if count >= config.sensitivity_windows:
                break
            kept.append((x, kw))
            count += x.shape[0]
        scores = sensitivity_scores(model, kept, config, progress)
        if sens_path is not None:
            write_json(sens_path, {"scores": scores})
    w2 = select_w2_layers(spec, n_layers, scores)
    t_sens = time.perf_counter() - t_start - t_rot - t_capture

    weights: dict[str, QuantizedLinear] = {}
    records: list[dict] = []
    timer: dict[str, float] = {}
    level_sets = [_layer_level_set(i, w2, config) for i in range(n_layers)]
    resumed = 0
    bar = tqdm(range(n_layers), desc=f"quantize {config.label()}", disable=not progress, unit="layer")
    for i in bar:
        layer = layers[i]
        ls_name = level_sets[i]
        if ls_name is None:
            if batches is not None and config.method == "gptq" and i + 1 < n_layers:
                batches = _propagate(layer, batches)
            continue
        loaded = _load_layer(run, i, device) if run is not None else None
        outs = None
        if loaded is not None:
            lw, lrec = loaded
            for owner, names in LINEAR_GROUPS:
                for lin in _group_linears(layer, owner, names):
                    lin.set_qweight(lw[lin.name].dequantized())
            resumed += 1
        elif config.method == "gptq" and config.true_sequential:
            lw, lrec, outs = _quantize_layer_sequential(layer, batches, ls_name, config, i, timer)
        else:
            lw, lrec = quantize_layer(layer, batches if config.method == "gptq" else [], ls_name, config, i, timer)
        if run is not None and loaded is None:
            _save_layer(run, i, lw, lrec)
        weights.update(lw)
        records.extend(lrec)
        if outs is not None:
            batches = outs
        elif batches is not None and config.method == "gptq" and i + 1 < n_layers:
            t0 = time.perf_counter()
            batches = _propagate(layer, batches)
            _tick(timer, "propagate_s", t0)
        errs = [r["rel_error"] for r in lrec if r.get("rel_error") is not None]
        if errs:
            bar.set_postfix(err=f"{sum(errs) / len(errs):.3f}")
    t_total = time.perf_counter() - t_start
    return QuantizedModel(
        model=model, config=config, w2_layers=w2, layer_level_sets=level_sets, weights=weights, records=records,
        rotation=rotation, sensitivity=scores,
        timings={"rotate_s": t_rot, "sensitivity_s": t_sens, "capture_s": t_capture,
                 "quantize_s": t_total - t_rot - t_sens - t_capture,
                 "total_s": t_total, **timer},
        resumed_layers=resumed,
    )
