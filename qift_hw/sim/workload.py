"""Workloads of the accelerator model: the GEMMs (and Hadamard transforms) one phase of a model runs.

A workload is a list of `Op`s, each a GEMM ``[M x K] x [K x N]`` repeated ``count`` times, with the weight format
(level set) of its stationary operand. It comes from a model shape (a built-in name or any LLaMA-family
config.json, through `core.shapes`) for a prefill or decode phase with a batch and a context, from a GEMM list
in SCALE-Sim's topology CSV (``Layer, M, N, K``), and per-layer formats come from a map
``{module name: level set}`` such as a quantized checkpoint's (the bridge reads those files).
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from qift_hw.core import formats
from qift_hw.core.errors import QiftError
from qift_hw.core.levels import get_level_set
from qift_hw.core.shapes import ModelShape

PHASES = ("prefill", "decode")
OP_KINDS = ("linear", "lm_head", "attention", "hadamard")
SCALE_BYTES = 4
"""One FP32 scale (per weight row, per activation vector, per KV head and token)."""
DEFAULT_LM_HEAD = "int8"
"""lm_head's weight format: the pipeline keeps it in float; an integer array needs some width."""


@dataclass(frozen=True)
class Op:
    """One GEMM ``[M x K] x [K x N]`` (``count`` identical instances), or a Hadamard transform of M vectors of
    length K (= N). ``level_set`` is the weight format of linears and lm_head; attention multiplies INT
    activations by the KV cache (``kv_*_bytes`` per instance: DRAM traffic of the cache), Hadamard rows have none.
    ``layers`` names the decoder layers a row stands for ("0-29", "3,7")."""

    name: str
    kind: str
    M: int
    K: int
    N: int
    count: int = 1
    level_set: str | None = None
    layers: str = ""
    kv_read_bytes: float = 0.0
    kv_write_bytes: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in OP_KINDS:
            raise QiftError(f"op {self.name}: kind {self.kind!r} is not one of {', '.join(OP_KINDS)}")
        for dim in ("M", "K", "N", "count"):
            v = getattr(self, dim)
            if not isinstance(v, int) or v < 0:
                raise QiftError(f"op {self.name}: {dim} must be a non-negative integer, got {v!r}")
        if self.kind in ("linear", "lm_head"):
            if self.level_set is None:
                raise QiftError(f"op {self.name}: a {self.kind} needs a weight format (level set)")
            get_level_set(self.level_set)

    @property
    def macs(self) -> int:
        return self.M * self.K * self.N if self.kind != "hadamard" else 0

    @property
    def w_bits(self) -> int:
        """Bits of one weight of the stationary operand (0 for attention and Hadamard rows)."""
        return get_level_set(self.level_set).bits if self.level_set else 0


@dataclass(frozen=True)
class Workload:
    """The ops of one phase. ``tokens`` is what one run of the ops produces (prefill: batch x seqlen; decode:
    batch); ``format`` labels the weight formats (a level set name, or the map's label)."""

    name: str
    phase: str
    format: str
    tokens: int
    ops: tuple[Op, ...]
    batch: int = 1
    seqlen: int = 0
    context: int | None = None
    meta: dict = field(default_factory=dict, compare=False)


def _layer_ranges(layers: list[int]) -> str:
    out, start = [], None
    for i, x in enumerate(layers):
        if start is None:
            start = x
        if i + 1 == len(layers) or layers[i + 1] != x + 1:
            out.append(str(start) if start == x else f"{start}-{x}")
            start = None
    return ",".join(out)


_MODULE = re.compile(r"(?:^|\.)layers\.(\d+)\.(?:[A-Za-z_]+\.)?([A-Za-z_]+)$")


def parse_format_map(fmap: Mapping[str, str], shape: ModelShape) -> dict[tuple[int, str], str]:
    """``{module name: level set}`` (``model.layers.3.self_attn.q_proj`` or ``layers.3.q_proj``) to
    {(layer, linear name): level set}; every linear of every layer must be listed, once."""
    names = [n for n, *_ in shape.linears()]
    out: dict[tuple[int, str], str] = {}
    for key, ls in fmap.items():
        if key.endswith("lm_head"):
            continue
        m = _MODULE.search(key)
        if not m or m.group(2) not in names or int(m.group(1)) >= shape.layers:
            raise QiftError(f"format map entry {key!r} is not a linear of {shape.name} ({shape.layers} layers x "
                            f"{', '.join(names)}); the map belongs to another model?")
        out[(int(m.group(1)), m.group(2))] = get_level_set(ls).name
    missing = [f"layers.{i}.{n}" for i in range(shape.layers) for n in names if (i, n) not in out]
    if missing:
        raise QiftError(f"format map lacks {len(missing)} linears of {shape.name}, e.g. {missing[0]}; "
                        "give a complete map (a checkpoint of this model)")
    return out


def _linear_ops(shape: ModelShape, M: int, formats_: str | Mapping[str, str]) -> list[Op]:
    if isinstance(formats_, str):
        ls = get_level_set(formats_).name
        rows = {(n, ls): list(range(shape.layers)) for n, *_ in shape.linears()}
    else:
        per = parse_format_map(formats_, shape)
        rows = {}
        for (i, n), ls in sorted(per.items()):
            rows.setdefault((n, ls), []).append(i)
    dims = {n: (k, nn) for n, k, nn, _ in shape.linears()}
    order = [n for n, *_ in shape.linears()]
    ops = []
    for (n, ls), layers in sorted(rows.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1])):
        K, N = dims[n]
        ops.append(Op(n, "linear", M, K, N, len(layers), ls, _layer_ranges(sorted(layers))))
    return ops


def model_workload(shape: ModelShape, phase: str, formats_: str | Mapping[str, str] = formats.HW_LEVEL_SET,
                   seqlen: int = 512, context: int | None = None, batch: int = 1,
                   lm_head: str | None = DEFAULT_LM_HEAD, attention: bool = True, kv_bits: int = formats.KV_BITS,
                   label: str | None = None) -> Workload:
    """The ops of a prefill (``batch`` sequences of ``seqlen`` tokens) or of one decode step (one token for each of
    ``batch`` sequences after ``context`` tokens, default ``seqlen``).

    Per decoder layer: the seven linears at their formats (uniform, or per layer from a map), the online Hadamard
    of down_proj's input (n = intermediate) and of queries/keys (n = head_dim, heads + kv_heads vectors per token),
    and attention as INT x KV GEMMs (full S x S scores in prefill, no causal skipping) with the KV cache in DRAM
    (``kv_bits`` values plus an FP32 scale and zero per token and KV head; grouped query heads read their KV
    head's cache once per query head). lm_head at ``lm_head`` (None leaves it out). Embedding, norms, RoPE, SiLU,
    softmax and residual adds are vector work beside the array and not counted.
    """
    if phase not in PHASES:
        raise QiftError(f"phase must be one of {', '.join(PHASES)}, got {phase!r}")
    if seqlen < 1:
        raise QiftError(f"--seqlen must be at least 1 token, got {seqlen}")
    if batch < 1:
        raise QiftError(f"--batch must be at least 1 sequence, got {batch}")
    if context is not None and context < 0:
        raise QiftError(f"--context must be at least 0 tokens (the KV cache before the decoded token), got {context}")
    L = shape.layers
    ctx = seqlen if context is None else context
    per_seq = seqlen if phase == "prefill" else 1
    M = batch * per_seq
    kv_len = seqlen if phase == "prefill" else ctx + 1
    ops = _linear_ops(shape, M, formats_)
    all_layers = f"0-{L - 1}" if L > 1 else "0"
    ops.append(Op("hadamard_down", "hadamard", M, shape.intermediate, shape.intermediate, L, layers=all_layers))
    ops.append(Op("hadamard_qk", "hadamard", M * (shape.heads + shape.kv_heads), shape.head_dim, shape.head_dim, L,
                  layers=all_layers))
    if attention:
        hd = shape.head_dim
        kv_tok_head = hd * kv_bits / 8 + 2 * SCALE_BYTES
        share = shape.kv_heads / shape.heads
        read = kv_len * kv_tok_head * share if phase == "decode" else 0.0
        write = per_seq * kv_tok_head * share
        n = L * shape.heads * batch
        ops.append(Op("attn_qk", "attention", per_seq, hd, kv_len, n, layers=all_layers, kv_read_bytes=read,
                      kv_write_bytes=write))
        ops.append(Op("attn_pv", "attention", per_seq, kv_len, hd, n, layers=all_layers, kv_read_bytes=read,
                      kv_write_bytes=write))
    if lm_head:
        ops.append(Op("lm_head", "lm_head", M, shape.hidden, shape.vocab, 1, get_level_set(lm_head).name))
    fmt = label or (formats_ if isinstance(formats_, str) else "mixed")
    return Workload(shape.name, phase, fmt, M, tuple(ops), batch, seqlen, ctx if phase == "decode" else None,
                    meta={"kv_bits": kv_bits, "lm_head": lm_head, "attention": attention})


GEMM_COLUMNS = ("Layer", "M", "N", "K")


def gemm_csv_workload(path: str | Path, formats_: str = formats.HW_LEVEL_SET) -> Workload:
    """A GEMM list in SCALE-Sim's topology CSV: ``Layer, M, N, K`` (activations M x K, weights K x N; extra
    columns and a trailing comma are allowed). A ``Format`` column, when present, sets each row's level set."""
    p = Path(path)
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise QiftError(f"cannot read GEMM list {p}: {exc}") from None
    rows = [[c.strip() for c in r] for r in csv.reader(text.splitlines()) if any(c.strip() for c in r)]
    if not rows:
        raise QiftError(f"GEMM list {p} is empty; it needs a header {', '.join(GEMM_COLUMNS)} and one row per GEMM")
    head = [h for h in rows[0]]
    idx = {h.lower(): i for i, h in enumerate(head) if h}
    missing = [c for c in GEMM_COLUMNS if c.lower() not in idx]
    if missing:
        raise QiftError(f"GEMM list {p} lacks column(s) {', '.join(missing)}; the header must have "
                        f"{', '.join(GEMM_COLUMNS)} (SCALE-Sim's GEMM topology format)")
    ops = []
    for line, r in enumerate(rows[1:], start=2):
        try:
            name = r[idx["layer"]]
            M, N, K = (int(r[idx[c]]) for c in ("m", "n", "k"))
        except (IndexError, ValueError):
            raise QiftError(f"GEMM list {p} line {line}: M, N and K must be integers, got {r}") from None
        if min(M, N, K) < 1:
            raise QiftError(f"GEMM list {p} line {line}: M, N and K must be >= 1, got M={M} N={N} K={K}")
        ls = r[idx["format"]] if "format" in idx and idx["format"] < len(r) and r[idx["format"]] else formats_
        ops.append(Op(name or f"gemm{line - 1}", "linear", M, K, N, 1, get_level_set(ls).name))
    if not ops:
        raise QiftError(f"GEMM list {p} has a header but no GEMM rows")
    tokens = max(op.M for op in ops)
    return Workload(p.stem, "gemm", formats_ if "format" not in idx else "mixed", tokens, tuple(ops))


def weight_bytes(op: Op) -> float:
    """Bytes of one instance's weights in DRAM: packed codes (sub-byte where the format is) plus an FP32 scale per
    output channel (and an FP32 zero for asymmetric sets)."""
    if not op.level_set:
        return 0.0
    ls = get_level_set(op.level_set)
    per_row = SCALE_BYTES * (2 if ls.kind == "asym" else 1)
    return math.ceil(op.K * ls.bits / 8) * op.N + per_row * op.N
