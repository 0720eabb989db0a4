"""The accelerator model v2: a workload on an architecture, op by op -> cycles, stalls, bytes, energy and area.

Per GEMM op: the array's compute cycles and edge words come from the dataflow closed forms (``timing: v2``,
`qift_hw.sim.dataflow`), the v1 back-to-back passes (``v1``, `qift_hw.sim.cycle_model`) or SCALE-Sim 3.0.0's
counts (``scalesim``, `qift_hw.sim.scalesim_compat`); buffer tiles, DRAM bytes and stalls come from
`qift_hw.sim.memory`; energy from `qift_hw.sim.energy`. Hadamard ops run on the Hadamard unit (pipelined,
``arch.had_lanes`` elements per cycle) between GEMMs. Layer rows carry SCALE-Sim's COMPUTE_REPORT and
BANDWIDTH_REPORT columns (bandwidths in bytes per cycle, since words are sub-byte) and ours; the summary is one row
per (format, phase). docs/accelerator.md and docs/energy.md describe the model.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Mapping, Sequence

from qift_hw.core.errors import QiftError
from qift_hw.core.levels import get_level_set
from qift_hw.core.shapes import ModelShape, load_model_shape
from qift_hw.sim import cycle_model, dataflow, pnr_data, scalesim_compat
from qift_hw.sim.arch import Arch, PRESETS_DIR, load_arch
from qift_hw.sim.energy import PARTS, Counts, energy_parts, hadamard_adds
from qift_hw.sim.pe_area import pe_areas
from qift_hw.sim.memory import SCALE_BYTES, Operands, choose_tiling, dma_groups, dma_pipeline, packed_bytes
from qift_hw.sim.workload import DEFAULT_LM_HEAD, Op, Workload, model_workload, weight_bytes

REPO_ROOT = PRESETS_DIR.parents[1]
KV_COL_BYTES = 2 * SCALE_BYTES
"""An FP32 scale and zero per cached token and head: the bytes per column of a KV operand."""
HADAMARD_FED = {"down_proj": "hadamard_down"}
"""Linears whose INT4 input the Hadamard unit's quantizer already produced (when the workload has that op)."""

LAYER_COLUMNS = (
    "format", "phase", "layer", "kind", "layers", "count", "M", "K", "N", "level_set", "pe", "dataflow", "tiles",
    "total_cycles", "compute_cycles", "stall_cycles", "overall_util_pct", "mapping_efficiency_pct",
    "compute_util_pct", "ifmap_sram_bw", "filter_sram_bw", "ofmap_sram_bw", "ifmap_dram_bw", "filter_dram_bw",
    "ofmap_dram_bw", "sram_act_read_bytes", "sram_weight_read_bytes", "sram_out_read_bytes", "sram_out_write_bytes",
    "dram_act_read_bytes", "dram_weight_read_bytes", "dram_kv_read_bytes", "dram_out_write_bytes",
    "dram_kv_write_bytes", "bound", "energy_pj", *PARTS, "macs", "buffer_cycles", "dram_cycles", "m_tile",
    "n_tile", "k_tile", "total_cycles_all", "energy_pj_all")
SUMMARY_COLUMNS = (
    "format", "phase", "tokens", "cycles", "tokens_per_s", "energy_per_token_uj", "bound", "model", "arch", "batch",
    "seqlen", "context", "compute_cycles", "stall_cycles", "seconds", "pe_util", "dram_bytes_per_token",
    *(p.replace("_pj", "_uj") for p in PARTS), "array_cells", "area_source", "clock_mhz", "pe_fmax_mhz",
    "array_luts")
BOUNDS = ("compute", "buffer", "dram")


def op_dataflow(arch: Arch, M: int) -> str:
    """The prefill dataflow for M > ``decode_max_m``, else the decode one."""
    return arch.dataflow if M > arch.decode_max_m else arch.decode_dataflow


def gemm_compute(arch: Arch, df: str, M: int, K: int, N: int, m_tile: int | None):
    """Compute cycles and array-edge words of one GEMM under ``arch.timing``."""
    R, C = arch.array.rows, arch.array.cols
    if arch.timing == "scalesim":
        if df == "stream":
            raise QiftError("timing scalesim has the dataflows ws and os only; set decode_dataflow to ws or os")
        return scalesim_compat.scalesim_compute(df, M, K, N, R, C)
    if arch.timing == "v1":
        return _v1_compute(df, M, K, N, R, C, m_tile)
    return dataflow.gemm_compute(df, M, K, N, R, C, m_tile)


def _v1_compute(df: str, M: int, K: int, N: int, R: int, C: int, m_tile: int | None):
    """v1 back-to-back passes (``stream`` runs as v1 WS, which v1 has instead); words as the v2 forms count them."""
    nt, kt = math.ceil(N / C), math.ceil(K / R)
    if df == "os":
        mt = math.ceil(M / R)
        return dataflow.Compute(cycle_model.os_gemm_cycles(M, K, N, R, C), mt * nt, K + 2 * R + C - 2,
                                mt * N * K, nt * M * K, 0, M * N)
    mtile = min(M, m_tile) if m_tile else M
    ch = math.ceil(M / mtile)
    return dataflow.Compute(cycle_model.ws_gemm_cycles(M, K, N, R, C, mtile), ch * nt * kt, R + mtile + R + C - 1,
                            ch * N * K, nt * M * K, (kt - 1) * M * N, kt * M * N)


def padded_macs(df: str, M: int, K: int, N: int, R: int, C: int) -> int:
    """MACs the array executes, padding PEs of partial tiles included: WS/stream M x ceil(K/R)R x ceil(N/C)C,
    OS ceil(M/R)R x K x ceil(N/C)C."""
    n_pad = math.ceil(N / C) * C
    if df == "os":
        return math.ceil(M / R) * R * K * n_pad
    return M * math.ceil(K / R) * R * n_pad


def _bound(compute: float, buffer: float, dram: float) -> str:
    top = max(compute, buffer, dram)
    return "compute" if compute >= top else ("buffer" if buffer >= top else "dram")


def _gemm_row(arch: Arch, op: Op, quantized_inputs: bool) -> dict:
    R, C = arch.array.rows, arch.array.cols
    for dim in ("M", "K", "N"):
        if getattr(op, dim) < 1:
            raise QiftError(f"op {op.name}: {dim} must be >= 1 for a GEMM, got {getattr(op, dim)}")
    M, K, N = op.M, op.K, op.N
    ab, acc_b, bpc = arch.act_bits, arch.acc_bits / 8, arch.bytes_per_cycle
    if op.kind == "attention":
        w_bits, col_bytes = arch.kv_bits, KV_COL_BYTES
        pe = "int4" if max(arch.act_bits, arch.kv_bits) <= 4 else "int8"
        stationary = packed_bytes(K, N, w_bits, col_bytes)
        w_dram_once = float(op.kv_read_bytes)
    else:
        ls = get_level_set(op.level_set)
        w_bits, col_bytes = ls.bits, SCALE_BYTES * (2 if ls.kind == "asym" else 1)
        pe = arch.pe_of(ls.name)
        stationary = w_dram_once = weight_bytes(op)
    df = op_dataflow(arch, M)
    operands = Operands(M, K, N, w_bits, col_bytes, ab, arch.acc_bits)
    t = choose_tiling(operands, R, C, arch.buffers, stationary, arch.out_bytes)
    comp = gemm_compute(arch, df, M, K, N, t.m if df != "os" else None)

    act_once = packed_bytes(K, M, ab, SCALE_BYTES)
    dram_w = w_dram_once * t.weight_reads
    dram_a = act_once * t.act_reads
    dram_out = float(M * N * arch.out_bytes)
    dram_kv_w = float(op.kv_write_bytes)
    dram_total = dram_w + dram_a + dram_out + dram_kv_w

    sram_w_read = comp.weight_words * w_bits / 8 + N * col_bytes * t.n_m
    sram_w_write = stationary * t.weight_reads
    sram_a_read = comp.act_words * ab / 8
    sram_a_write = dram_a
    sram_o_write = comp.out_words * acc_b
    sram_o_read = comp.psum_in_words * acc_b + M * N * acc_b
    buf = arch.buffers
    buffer_cycles = max(max(sram_w_read, sram_w_write) / buf.weight.bytes_per_cycle,
                        max(sram_a_read, sram_a_write) / buf.act.bytes_per_cycle,
                        max(sram_o_read, sram_o_write) / buf.out.bytes_per_cycle)
    busy = max(comp.cycles, buffer_cycles)

    groups, tail = dma_groups(t, M, K, N, busy / (M * K * N), w_dram_once, packed_bytes(K, 1, ab, SCALE_BYTES),
                              arch.out_bytes + dram_kv_w / (M * N), bpc)
    total = max(math.ceil(dma_pipeline(groups, tail) - 1e-9), comp.cycles)
    dram_cycles = dram_total / bpc

    macs = M * K * N
    pmacs = padded_macs(df, M, K, N, R, C)
    weight_regs = comp.weight_words * w_bits * ((R + 1) / 2 if df == "ws" else 1)
    reg_bits = pmacs * (ab + arch.acc_bits) + (pmacs * w_bits if df == "os" else weight_regs)
    quant = 0 if quantized_inputs else M * K
    counts = Counts(macs={pe: pmacs}, reg_bits=reg_bits,
                    weight_buf_bits=8 * (sram_w_read + sram_w_write), act_buf_bits=8 * (sram_a_read + sram_a_write),
                    out_buf_bits=8 * (sram_o_read + sram_o_write), dram_bits=8 * dram_total, quant_elems=quant)
    energy = energy_parts(arch, counts)
    pes = R * C
    return {
        "layer": op.name, "kind": op.kind, "layers": op.layers, "count": op.count, "M": M, "K": K, "N": N,
        "level_set": op.level_set or "", "pe": pe, "dataflow": df, "tiles": comp.tiles,
        "total_cycles": total, "compute_cycles": comp.cycles, "stall_cycles": total - comp.cycles,
        "overall_util_pct": 100.0 * macs / (total * pes),
        "mapping_efficiency_pct": 100.0 * macs / pmacs,
        "compute_util_pct": 100.0 * macs / (comp.cycles * pes),
        "ifmap_sram_bw": sram_a_read / total, "filter_sram_bw": sram_w_read / total,
        "ofmap_sram_bw": sram_o_write / total, "ifmap_dram_bw": dram_a / total,
        "filter_dram_bw": dram_w / total, "ofmap_dram_bw": (dram_out + dram_kv_w) / total,
        "sram_act_read_bytes": sram_a_read, "sram_weight_read_bytes": sram_w_read,
        "sram_out_read_bytes": sram_o_read, "sram_out_write_bytes": sram_o_write,
        "dram_act_read_bytes": dram_a, "dram_weight_read_bytes": 0.0 if op.kind == "attention" else dram_w,
        "dram_kv_read_bytes": dram_w if op.kind == "attention" else 0.0, "dram_out_write_bytes": dram_out,
        "dram_kv_write_bytes": dram_kv_w, "bound": _bound(comp.cycles, buffer_cycles, dram_cycles), **energy,
        "macs": macs, "buffer_cycles": buffer_cycles, "dram_cycles": dram_cycles, "m_tile": t.m, "n_tile": t.n,
        "k_tile": t.k,
    }


def _hadamard_row(arch: Arch, op: Op) -> dict:
    vectors, n = op.M, op.K
    if arch.hadamard.orders and n not in arch.hadamard.orders:
        raise QiftError(f"op {op.name}: the Hadamard unit has orders {list(arch.hadamard.orders)}, the workload needs "
                        f"{n}; add it to hadamard.orders (or leave the list empty for any order)")
    cycles = cycle_model.had_cycles(vectors, n, arch.had_lanes)
    out_read = vectors * n * arch.out_bytes
    act_write = vectors * packed_bytes(n, 1, arch.act_bits, SCALE_BYTES)
    counts = Counts(act_buf_bits=8 * act_write, out_buf_bits=8 * out_read, had_adds=vectors * hadamard_adds(n),
                    quant_elems=vectors * n)
    zero = dict.fromkeys(("overall_util_pct", "mapping_efficiency_pct", "compute_util_pct", "ifmap_sram_bw",
                          "filter_sram_bw", "ofmap_sram_bw", "ifmap_dram_bw", "filter_dram_bw", "ofmap_dram_bw",
                          "sram_act_read_bytes", "sram_weight_read_bytes", "sram_out_write_bytes",
                          "dram_act_read_bytes", "dram_weight_read_bytes", "dram_kv_read_bytes",
                          "dram_out_write_bytes", "dram_kv_write_bytes", "dram_cycles"), 0.0)
    return {**zero, "layer": op.name, "kind": op.kind, "layers": op.layers, "count": op.count, "M": vectors, "K": n,
            "N": n, "level_set": "", "pe": "hadamard", "dataflow": "hadamard", "tiles": vectors,
            "total_cycles": cycles, "compute_cycles": cycles, "stall_cycles": 0, "sram_out_read_bytes": out_read,
            "bound": "compute", **energy_parts(arch, counts), "macs": 0, "buffer_cycles": 0.0, "m_tile": 0,
            "n_tile": 0, "k_tile": 0}


@lru_cache(maxsize=16)
def _pe_cells(path: str, acc_bits: int) -> dict:
    return pe_areas(path, acc_bits)


def array_area(arch: Arch, pe: str) -> tuple[int | None, str]:
    """(PE cells x rows x cols, where the figure comes from); buffers and the Hadamard unit have no synthesized
    area in this model."""
    note = "; buffers, Hadamard unit and quantizer not synthesized (not counted)"
    if not arch.area_json:
        return None, "none: the architecture file names no area_json" + note
    p = _repo_path(arch.area_json)
    cells = _pe_cells(str(p), arch.acc_bits).get(pe)
    if cells is None:
        return None, f"none: {arch.area_json} has no {pe} PE at {arch.acc_bits} accumulator bits" + note
    return (cells["generic_cells"] * arch.array.rows * arch.array.cols,
            f"synthesis ({arch.area_json}): {pe} PE {cells['generic_cells']} generic cells x "
            f"{arch.array.rows}x{arch.array.cols}" + note)


def simulate(arch: Arch, workload: Workload) -> dict:
    """Layer rows (per op instance, plus ``*_all`` totals over ``count``) and one summary row of the workload."""
    names = {op.name for op in workload.ops}
    fed = {lin for lin, had in HADAMARD_FED.items() if had in names}
    layers = []
    for op in workload.ops:
        if op.kind == "hadamard":
            row = _hadamard_row(arch, op)
        else:
            quantized = op.name in fed or op.name == "attn_qk"
            row = _gemm_row(arch, op, quantized)
        row["total_cycles_all"] = row["total_cycles"] * op.count
        row["energy_pj_all"] = row["energy_pj"] * op.count
        layers.append({"format": workload.format, "phase": workload.phase, **row})
    return {"layers": [{k: r[k] for k in LAYER_COLUMNS} for r in layers], "summary": _summary(arch, workload, layers)}


def _summary(arch: Arch, workload: Workload, layers: list[dict]) -> dict:
    def total(key: str) -> float:
        return math.fsum(r[key] * r["count"] for r in layers)

    tokens = workload.tokens
    cycles = int(total("total_cycles"))
    seconds = cycles / (arch.clock_mhz * 1e6)
    by_bound = {b: math.fsum(r["total_cycles_all"] for r in layers if r["bound"] == b) for b in BOUNDS}
    gemm_macs: dict[str, float] = {}
    for r in layers:
        if r["kind"] in ("linear", "lm_head"):
            gemm_macs[r["pe"]] = gemm_macs.get(r["pe"], 0) + r["macs"] * r["count"]
    cells, source = array_area(arch, max(gemm_macs, key=gemm_macs.get)) if gemm_macs else (None, "none: no GEMMs")
    dram = sum(total(k) for k in ("dram_act_read_bytes", "dram_weight_read_bytes", "dram_kv_read_bytes",
                                  "dram_out_write_bytes", "dram_kv_write_bytes"))
    row = {
        "format": workload.format, "phase": workload.phase, "tokens": tokens, "cycles": cycles,
        "tokens_per_s": tokens / seconds if seconds else float("inf"),
        "energy_per_token_uj": total("energy_pj") / tokens / 1e6, "bound": max(BOUNDS, key=by_bound.get),
        "model": workload.name, "arch": arch.name, "batch": workload.batch, "seqlen": workload.seqlen,
        "context": workload.context, "compute_cycles": int(total("compute_cycles")),
        "stall_cycles": int(total("stall_cycles")), "seconds": seconds,
        "pe_util": total("macs") / (cycles * arch.array.rows * arch.array.cols) if cycles else 0.0,
        "dram_bytes_per_token": dram / tokens,
    }
    for p in PARTS:
        row[p.replace("_pj", "_uj")] = total(p) / tokens / 1e6
    row["array_cells"], row["area_source"] = cells, source
    row["clock_mhz"] = arch.clock_mhz
    fig = pnr_figures(arch).get(max(gemm_macs, key=gemm_macs.get)) if gemm_macs else None
    row["pe_fmax_mhz"] = fig.fmax_mhz if fig else None
    row["array_luts"] = fig.luts * arch.array.rows * arch.array.cols if fig else None
    return row


def _repo_path(path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else REPO_ROOT / p


@lru_cache(maxsize=16)
def _pnr_pes(path: str, acc_bits: int) -> dict:
    return pnr_data.pe_figures(path, acc_bits)


def pnr_figures(arch: Arch) -> dict:
    """Post-route figures of the stand-alone PEs (multipliers in LUTs) at the arch's accumulator width, by PE kind;
    empty when the architecture file names no pnr_json."""
    return _pnr_pes(str(_repo_path(arch.pnr_json)), arch.acc_bits) if arch.pnr_json else {}


def clocked(arch: Arch, levels: str | Mapping[str, str]) -> Arch:
    """``arch`` at the post-route Fmax of the slowest PE the format uses, when ``clock_from_pnr`` asks for it."""
    if not arch.clock_from_pnr:
        return arch
    sets = {levels} if isinstance(levels, str) else set(levels.values())
    figs = pnr_figures(arch)
    fmax = []
    for ls in sets:
        fig = figs.get(arch.pe_of(ls))
        if fig is None or not fig.fmax_mhz:
            raise QiftError(f"{arch.pnr_json} has no placed {arch.pe_of(ls)} PE at {arch.acc_bits} accumulator bits; "
                            "run sw/rtl_pnr.py or set clock_from_pnr: false")
        fmax.append(fig.fmax_mhz)
    return load_arch(arch, {"clock_mhz": min(fmax)})


def _label(levels: str | Mapping[str, str], i: int, labels: Sequence[str] | None) -> str:
    if labels is not None:
        return labels[i]
    return get_level_set(levels).name if isinstance(levels, str) else "mixed"


def estimate(arch: Arch, shape: ModelShape, levels: Sequence[str | Mapping[str, str]] = ("pot_mnz", "int4", "int8"),
             seqlen: int = 512, context: int | None = None, batch: int = 1, lm_head: str | None = DEFAULT_LM_HEAD,
             attention: bool = True, phases: Sequence[str] = ("prefill", "decode"),
             labels: Sequence[str] | None = None) -> dict:
    """Every weight format in ``levels`` (a level set, or a {module: level set} map) at every phase: summary rows
    (one per format and phase) and layer rows."""
    if not levels:
        raise QiftError("give at least one weight format (level set or per-layer map) to estimate")
    if labels is not None and len(labels) != len(levels):
        raise QiftError(f"labels: {len(labels)} given for {len(levels)} formats; give one per format")
    summary, layers = [], []
    for i, lv in enumerate(levels):
        label = _label(lv, i, labels)
        for phase in phases:
            wl = model_workload(shape, phase, lv, seqlen=seqlen, context=context, batch=batch, lm_head=lm_head,
                                attention=attention, kv_bits=arch.kv_bits, label=label)
            res = simulate(clocked(arch, lv), wl)
            summary.append(res["summary"])
            layers.extend(res["layers"])
    return {"arch": arch.model_dump(mode="json"), "model": shape.name, "seqlen": seqlen,
            "context": seqlen if context is None else context, "batch": batch, "lm_head": lm_head,
            "attention": attention, "summary": summary, "layers": layers}


def estimate_point(point: Mapping) -> list[dict]:
    """One design point of a sweep: ``{"arch": preset or path, "set": {dotted: value}, "model": name or config
    path, "levels": level set or map, "phase", "seqlen", "context", "batch"}`` (optional ``lm_head``,
    ``attention``, ``label``: the format name of a map) -> its summary rows, with the point's parameters as
    columns too (``set`` keys as dotted columns, ``levels`` as its label)."""
    sets = dict(point.get("set") or {})
    arch = load_arch(point.get("arch"), sets)
    shape = load_model_shape(point["model"])
    levels = point.get("levels", "pot_mnz")
    phase = point.get("phase", "decode")
    res = estimate(arch, shape, [levels], seqlen=int(point.get("seqlen", 512)), context=point.get("context"),
                   batch=int(point.get("batch", 1)), lm_head=point.get("lm_head", DEFAULT_LM_HEAD),
                   attention=bool(point.get("attention", True)), phases=(phase,),
                   labels=[point["label"]] if point.get("label") else None)
    extra = {"levels": levels if isinstance(levels, str) else json.dumps(levels, sort_keys=True),
             "arch_source": str(point.get("arch")), **sets}
    return [{**row, **extra} for row in res["summary"]]
