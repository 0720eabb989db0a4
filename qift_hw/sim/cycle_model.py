"""Cycle and traffic model of the accelerator, per GEMM and per model, in the style of SCALE-Sim's layer report.

Compute cycles are closed forms of the protocol in docs/array_protocol.md and equal the cycle-stepped array
(`qift_hw.sim.array`) exactly (tests). Around them: on-chip SRAM reads/writes, DRAM bytes (2/4/8-bit weights,
4-bit activations, FP32 scales, FP16 outputs, 4-bit KV cache), and the layer time max(compute, DRAM) under
double-buffered DMA. The Hadamard unit and attention are counted in their own rows (see `model_report`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from qift_hw.core import formats
from qift_hw.core.errors import QiftError
from qift_hw.sim.array import DATAFLOWS, os_pass_cycles, ws_pass_cycles
from qift_hw.core.shapes import ModelShape

SCALE_BYTES = 4
OUT_BYTES = 2
"""Outputs leave the accelerator as FP16 (dequantized FP32 rounded once more); stated in docs/sim.md."""


@dataclass(frozen=True)
class HwConfig:
    """Array, memories and clock. SRAM sizes in KiB, DRAM bandwidth in GB/s (1e9 bytes/s)."""

    rows: int = 32
    cols: int = 32
    dataflow: str = "ws"
    clock_mhz: float = 1000.0
    dram_gbps: float = 16.0
    act_sram_kib: float = 256.0
    w_sram_kib: float = 256.0
    out_sram_kib: float = 256.0
    acc_bits: int = formats.ACC_BITS
    act_bits: int = formats.ACT_BITS
    had_lanes: int = 0
    """Hadamard-unit elements accepted per cycle (0 = rows, the rate the array takes activations)."""

    def __post_init__(self) -> None:
        if self.rows < 1 or self.cols < 1:
            raise QiftError(f"array must be at least 1x1, got {self.rows}x{self.cols}")
        if self.dataflow not in DATAFLOWS:
            raise QiftError(f"unknown dataflow {self.dataflow!r}; use one of {', '.join(DATAFLOWS)}")
        for name in ("clock_mhz", "dram_gbps", "act_sram_kib", "w_sram_kib", "out_sram_kib"):
            if not getattr(self, name) > 0:
                raise QiftError(f"{name} must be > 0, got {getattr(self, name)}")
        formats.acc_range(self.acc_bits)

    @property
    def bytes_per_cycle(self) -> float:
        """DRAM bytes per clock cycle."""
        return self.dram_gbps * 1e9 / (self.clock_mhz * 1e6)

    @property
    def lanes(self) -> int:
        return self.had_lanes or self.rows


def ws_m_tile(M: int, K: int, hw: HwConfig) -> int:
    """Rows per WS chunk: the output buffer holds m x C partial sums and the activation SRAM m x K activations."""
    by_out = int(hw.out_sram_kib * 1024 // (hw.cols * hw.acc_bits / 8))
    by_act = int(hw.act_sram_kib * 1024 // max(K * hw.act_bits / 8, 1))
    m = min(M, by_out, by_act)
    if m < 1:
        raise QiftError(f"SRAMs too small for one row of a K={K} GEMM on {hw.rows}x{hw.cols}: raise --sram-kib")
    return m


def ws_gemm_cycles(M: int, K: int, N: int, R: int, C: int, m_tile: int | None = None) -> int:
    """Cycles of a WS GEMM: per M-chunk, ceil(N/C) * ceil(K/R) passes of R + m + R + C - 1 cycles."""
    if M == 0 or N == 0 or K == 0:
        return 0
    mt = M if not m_tile else m_tile
    tiles = math.ceil(N / C) * math.ceil(K / R)
    full, rest = divmod(M, mt)
    return tiles * (full * ws_pass_cycles(mt, R, C) + (ws_pass_cycles(rest, R, C) if rest else 0))


def os_gemm_cycles(M: int, K: int, N: int, R: int, C: int) -> int:
    """Cycles of an OS GEMM: ceil(M/R) * ceil(N/C) passes of K + 2R + C - 2 cycles."""
    if M == 0 or N == 0 or K == 0:
        return 0
    return math.ceil(M / R) * math.ceil(N / C) * os_pass_cycles(K, R, C)


@dataclass
class Row:
    """One line of the report (counts are for one instance; ``count`` instances per model)."""

    name: str
    kind: str
    M: int
    K: int
    N: int
    w_bits: int
    count: int = 1
    macs: int = 0
    compute_cycles: int = 0
    dram_cycles: int = 0
    cycles: int = 0
    util: float = 0.0
    sram_read_bytes: int = 0
    sram_write_bytes: int = 0
    dram_read_bytes: int = 0
    dram_write_bytes: int = 0
    notes: str = ""
    extra: dict = field(default_factory=dict)


def _finish(row: Row, hw: HwConfig) -> Row:
    dram = row.dram_read_bytes + row.dram_write_bytes
    row.dram_cycles = math.ceil(dram / hw.bytes_per_cycle)
    row.cycles = max(row.compute_cycles, row.dram_cycles)
    pes = hw.rows * hw.cols
    row.util = row.macs / (row.compute_cycles * pes) if row.compute_cycles and row.kind != "hadamard" else 0.0
    return row


def gemm_row(name: str, M: int, K: int, N: int, w_bits: int, hw: HwConfig, count: int = 1,
             a_bits: int | None = None, weights_from_dram: bool = True, out_bytes: int = OUT_BYTES,
             kind: str = "linear") -> Row:
    """Cycles and traffic of one GEMM (M tokens x K) by (K x N) weights of ``w_bits`` on the array."""
    R, C = hw.rows, hw.cols
    ab = hw.act_bits if a_bits is None else a_bits
    acc_b = hw.acc_bits / 8
    w_bytes = N * K * w_bits / 8 + (N * SCALE_BYTES if weights_from_dram else 0)
    a_bytes = M * K * ab / 8 + M * SCALE_BYTES
    row = Row(name, kind, M, K, N, w_bits, count, macs=M * K * N)
    w_fits = w_bytes <= hw.w_sram_kib * 1024
    if hw.dataflow == "ws":
        mt = ws_m_tile(M, K, hw)
        chunks = math.ceil(M / mt)
        n_t, k_t = math.ceil(N / C), math.ceil(K / R)
        row.compute_cycles = ws_gemm_cycles(M, K, N, R, C, mt)
        w_reads = 1 if w_fits else chunks
        row.sram_read_bytes = int(chunks * n_t * k_t * R * C * w_bits / 8  # weight loads
                                  + n_t * k_t * M * R * ab / 8  # activation stream
                                  + n_t * (k_t - 1) * M * C * acc_b)  # partial sums back on p_in
        row.sram_write_bytes = int(n_t * k_t * M * C * acc_b + w_reads * w_bytes + a_bytes)
        row.extra = {"m_tile": mt, "passes": chunks * n_t * k_t}
    else:
        m_t, n_t = math.ceil(M / R), math.ceil(N / C)
        row.compute_cycles = os_gemm_cycles(M, K, N, R, C)
        w_reads = 1 if w_fits else m_t
        if R * K * ab / 8 > hw.act_sram_kib * 1024:
            raise QiftError(f"OS needs {R} x {K} activations on chip; raise the activation SRAM (--sram-kib)")
        row.sram_read_bytes = int(m_t * n_t * (R * K * ab / 8 + C * K * w_bits / 8))
        row.sram_write_bytes = int(m_t * n_t * R * C * acc_b + w_reads * w_bytes + a_bytes)
        row.extra = {"passes": m_t * n_t}
    row.dram_read_bytes = int(w_reads * w_bytes + a_bytes)
    row.dram_write_bytes = int(M * N * out_bytes)
    row.notes = "" if w_fits or w_reads == 1 else f"weights re-read {w_reads}x"
    return _finish(row, hw)


def had_cycles(vectors: int, n: int, lanes: int) -> int:
    """Hadamard unit (pipelined, ``lanes`` elements per cycle): vectors * ceil(n / lanes) plus the pipeline depth.

    Depth = one vector's fill (the quantizer needs max|y| of the whole vector) + log2(2^k) butterfly stages
    + 1 K stage (if K > 1) + the INT4 quantizer's ``formats.HAD_QUANT_LATENCY`` stages (as in the RTL).
    """
    from qift_hw.core.hadamard import split_order

    if vectors == 0:
        return 0
    k, p = split_order(n)
    per = math.ceil(n / lanes)
    return vectors * per + per + (p.bit_length() - 1) + (1 if k > 1 else 0) + formats.HAD_QUANT_LATENCY


def had_row(name: str, vectors: int, n: int, hw: HwConfig, count: int = 1) -> Row:
    """Hadamard-unit row: its cycles; it reads FP inputs (counted in the producer's output) and writes INT4."""
    row = Row(name, "hadamard", vectors, n, n, 0, count)
    row.compute_cycles = had_cycles(vectors, n, hw.lanes)
    row.sram_read_bytes = vectors * n * OUT_BYTES
    row.sram_write_bytes = int(vectors * (n * hw.act_bits / 8 + SCALE_BYTES))
    return _finish(row, hw)


def model_report(shape: ModelShape, hw: HwConfig, w_bits: int = 2, phase: str = "prefill", seq: int = 512,
                 context: int | None = None, lm_head_bits: int = 8, attention: bool = True) -> dict:
    """Per-layer rows and totals for a prefill of ``seq`` tokens or the decode of one token after ``context``.

    Linears: all seven per decoder layer at ``w_bits``, INT4 activations. lm_head at ``lm_head_bits`` (0 = left
    out; the pipeline keeps it in float, an integer array needs some width). Online Hadamards: down_proj input
    (n = intermediate) per token and queries/keys over head_dim (heads + kv_heads vectors per token).
    Attention (INT4 x INT4, KV4) as GEMMs on an array of the same size, full S x S scores (no causal skipping),
    KV cache traffic 4-bit plus FP32 scale and zero per token and head. Embedding lookup, RMSNorm, RoPE, SiLU,
    softmax and residual adds are not counted (vector work beside the array).
    """
    if phase not in ("prefill", "decode"):
        raise QiftError(f"phase must be 'prefill' or 'decode', got {phase!r}")
    if seq < 1:
        raise QiftError(f"sequence length must be >= 1, got {seq}")
    L = shape.layers
    M = seq if phase == "prefill" else 1
    ctx = seq if context is None else context
    kv_len = M if phase == "prefill" else ctx + 1
    rows = [gemm_row(name, M, K, N, w_bits, hw, L) for name, K, N, _ in shape.linears()]
    rows.append(had_row("hadamard_down", M, shape.intermediate, hw, L))
    rows.append(had_row("hadamard_qk", M * (shape.heads + shape.kv_heads), shape.head_dim, hw, L))
    if attention:
        hd, kvb = shape.head_dim, hw.act_bits
        kv_bytes_tok = shape.kv_heads * (hd * kvb / 8 + 2 * SCALE_BYTES)
        for nm, (Mq, Kq, Nq) in (("attn_qk", (M, hd, kv_len)), ("attn_pv", (M, kv_len, hd))):
            r = gemm_row(nm, Mq, Kq, Nq, kvb, hw, L * shape.heads, weights_from_dram=False, out_bytes=OUT_BYTES,
                         kind="attention")
            r.dram_read_bytes = int(kv_len * kv_bytes_tok / shape.heads) if phase == "decode" else 0
            r.dram_write_bytes = int(2 * M * kv_bytes_tok / shape.heads) if nm == "attn_qk" else 0
            r.notes = "INT4 x INT4 (K/V are the 'weights')"
            rows.append(_finish(r, hw))
    if lm_head_bits:
        rows.append(gemm_row("lm_head", M, shape.hidden, shape.vocab, lm_head_bits, hw, 1))
    tot = {k: sum(getattr(r, k) * r.count for r in rows)
           for k in ("macs", "compute_cycles", "cycles", "sram_read_bytes", "sram_write_bytes", "dram_read_bytes",
                     "dram_write_bytes")}
    tot["pe_util"] = sum(r.macs * r.count for r in rows if r.kind != "hadamard") / (
        tot["cycles"] * hw.rows * hw.cols) if tot["cycles"] else 0.0
    tot["seconds"] = tot["cycles"] / (hw.clock_mhz * 1e6)
    tot["tokens"] = M
    tot["tokens_per_s"] = M / tot["seconds"] if tot["seconds"] else float("inf")
    tot["dram_bytes_per_token"] = (tot["dram_read_bytes"] + tot["dram_write_bytes"]) / M
    tot["memory_bound_rows"] = sum(r.count for r in rows if r.dram_cycles > r.compute_cycles)
    return {"model": asdict(shape), "hw": asdict(hw), "w_bits": w_bits, "phase": phase, "seq": seq,
            "context": ctx if phase == "decode" else None, "rows": [asdict(r) for r in rows], "totals": tot}
