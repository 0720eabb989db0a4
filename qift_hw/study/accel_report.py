"""The accelerator estimate as a user runs it: one architecture, one workload, several weight formats; its run
folder (summary.csv, layers.csv, estimate.json, arch.yaml, summary.md, plots) and its tables.

The workload is a model (built-in name or config.json) at prefill and/or decode, or a SCALE-Sim GEMM list; the
formats are level sets, plus a per-layer map (a mixed W2/W4 checkpoint) when given. The engine is
`qift_hw.sim.accelerator`; sweeps over array size and DRAM bandwidth rerun it with overrides.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, get_args, get_origin

from qift_hw.bridge.layer_map import LayerMap, check_layer_map
from qift_hw.core.errors import QiftError
from qift_hw.core.levels import get_level_set
from qift_hw.core.shapes import ModelShape
from qift_hw.sim import accelerator
from qift_hw.sim.arch import PRESETS_DIR, Arch, load_arch, resolve_arch_path
from qift_hw.study.accel_plots import format_label as _w

SUMMARY_FILE = "summary.csv"
LAYERS_FILE = "layers.csv"
JSON_FILE = "estimate.json"
ARCH_FILE = "arch.yaml"
MARKDOWN_FILE = "summary.md"
PLOT_FILES = ("roofline.png", "breakdown.png", "sweeps.png")
OUTPUT_FILES = (SUMMARY_FILE, LAYERS_FILE, JSON_FILE, ARCH_FILE, MARKDOWN_FILE, *PLOT_FILES)

SUMMARY_COLUMNS = accelerator.SUMMARY_COLUMNS
"""summary.csv, a stable interface: one row per (format, phase); these columns first, in this order."""
LAYER_COLUMNS = accelerator.LAYER_COLUMNS
"""layers.csv, a stable interface: one row per (format, phase, layer row); SCALE-Sim's COMPUTE_REPORT and
BANDWIDTH_REPORT columns (bandwidths in bytes per cycle) and ours."""

SWEEP_ARRAYS = (8, 16, 32, 64, 128)
"""Square array sizes of the tokens/s-against-array-size sweep."""
SWEEP_DRAM_GBPS = (4, 8, 16, 32, 64, 128, 256, 512, 1024)
"""DRAM bandwidths (GB/s) of the tokens/s-against-bandwidth sweep."""
PHASE_CHOICES = {"prefill": ("prefill",), "decode": ("decode",), "both": ("prefill", "decode")}
NO_LM_HEAD = "none"


@dataclass(frozen=True)
class EstimateSpec:
    """The workload side of an estimate: a model (``shape``) or a GEMM list (``gemm_csv``), the weight formats
    (``levels``, plus ``layer_map``'s per-layer formats when given), and the phase settings."""

    shape: ModelShape | None = None
    gemm_csv: str | None = None
    levels: tuple[str, ...] = ("pot_mnz", "int4", "int8")
    layer_map: LayerMap | None = None
    phases: tuple[str, ...] = ("prefill", "decode")
    seqlen: int = 512
    context: int | None = None
    batch: int = 1
    lm_head: str | None = "int8"
    attention: bool = True
    meta: dict = field(default_factory=dict, compare=False)

    def formats(self) -> list[tuple[str | dict[str, str], str]]:
        """(format for the engine, label) of each compared format: the level sets, then the layer map."""
        out: list[tuple[str | dict[str, str], str]] = [(ls, ls) for ls in self.levels]
        if self.layer_map is not None:
            out.append((check_layer_map(self.layer_map, self.shape), self.layer_map.label))
        return out

    def describe(self) -> dict:
        """Every workload parameter (for estimate.json and the run folder)."""
        lm = self.layer_map
        return {"model": self.shape.name if self.shape else None, "gemm_csv": self.gemm_csv,
                "levels": list(self.levels), "phases": list(self.phases), "seqlen": self.seqlen,
                "context": self.context, "batch": self.batch, "lm_head": self.lm_head, "attention": self.attention,
                "layer_map": None if lm is None else {"source": lm.source, "kind": lm.kind, "label": lm.label,
                                                      "row": lm.row, "sha256": lm.digest, "linears": lm.counts()},
                **self.meta}


def parse_levels(text: str) -> tuple[str, ...]:
    """A comma list of level sets (each must be one the accelerator has a PE for)."""
    from qift_hw.sim.arch import default_pe

    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise QiftError(f"--levels needs at least one level set (e.g. pot_mnz,int4,int8), got {text!r}")
    out = []
    for n in names:
        name = get_level_set(n).name
        default_pe(name)
        if name not in out:
            out.append(name)
    return tuple(out)


def parse_lm_head(text: str | None) -> str | None:
    """``--lm-head``: a level set, or ``none`` to leave lm_head out."""
    if text is None or text.strip().lower() in (NO_LM_HEAD, "", "0"):
        return None
    return get_level_set(text.strip()).name


def check_spec(spec: EstimateSpec) -> None:
    """QiftError for lengths and counts that give empty or negative work (checked before anything is written)."""
    if spec.seqlen < 1:
        raise QiftError(f"--seqlen must be at least 1 token, got {spec.seqlen}")
    if spec.context is not None and spec.context < 0:
        raise QiftError(f"--context must be at least 0 tokens (the KV cache before the decoded token), got "
                        f"{spec.context}")
    if spec.batch < 1:
        raise QiftError(f"--batch must be at least 1 sequence, got {spec.batch}")
    if (spec.shape is None) == (spec.gemm_csv is None):
        raise QiftError("give a model (--model) or a GEMM list (--gemm-csv), not both")
    if spec.gemm_csv is not None and spec.layer_map is not None:
        raise QiftError("--layer-map sets the formats of a model's layers; a GEMM list takes a Format column instead")


def _ordered(row: Mapping[str, Any], columns: Sequence[str]) -> dict:
    return {**{c: row.get(c) for c in columns if c in row}, **{k: v for k, v in row.items() if k not in columns}}


def run_estimate(arch: Arch, spec: EstimateSpec) -> dict:
    """The engine's rows for every format and phase of ``spec`` on ``arch``: {"summary": rows, "layers": rows}."""
    check_spec(spec)
    formats = spec.formats()
    if spec.gemm_csv is not None:
        from qift_hw.sim.workload import gemm_csv_workload

        summary, layers = [], []
        for fmt, label in formats:
            res = accelerator.simulate(arch, gemm_csv_workload(spec.gemm_csv, fmt))
            summary.append({**res["summary"], "format": label, "phase": "gemm"})
            layers += [{**r, "format": label, "phase": "gemm"} for r in res["layers"]]
    else:
        res = accelerator.estimate(arch, spec.shape, [f for f, _ in formats], seqlen=spec.seqlen,
                                   context=spec.context, batch=spec.batch, lm_head=spec.lm_head,
                                   attention=spec.attention, phases=spec.phases, labels=[lb for _, lb in formats])
        summary, layers = res["summary"], res["layers"]
    return {"summary": [_ordered(r, SUMMARY_COLUMNS) for r in summary],
            "layers": [_ordered(r, LAYER_COLUMNS) for r in layers]}


def run_sweeps(arch: Arch, spec: EstimateSpec, arrays: Sequence[int] = SWEEP_ARRAYS,
               dram_gbps: Sequence[float] = SWEEP_DRAM_GBPS) -> dict:
    """Summary rows of the estimate rerun at each square array size and each DRAM bandwidth (other fields as
    ``arch``), each row tagged ``sweep_value``."""
    out: dict[str, list[dict]] = {"array": [], "dram_gbps": []}
    for key, values, overrides in (("array", arrays, lambda v: {"array.rows": v, "array.cols": v}),
                                   ("dram_gbps", dram_gbps, lambda v: {"dram.gbps": v})):
        for v in values:
            rows = run_estimate(load_arch(arch, overrides(v)), spec)["summary"]
            out[key] += [{"sweep": key, "sweep_value": v, **{k: r[k] for k in ("format", "phase", "tokens_per_s",
                                                                                  "energy_per_token_uj", "bound")}}
                         for r in rows]
    return out


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.{digits}g}" if abs(x) < 1000 else f"{x:,.0f}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def ratio_lines(summary: list[dict]) -> list[str]:
    """Per phase: tokens/s of each format relative to the last uniform one (the widest baseline by default)."""
    lines = []
    phases = list(dict.fromkeys(r["phase"] for r in summary))
    for phase in phases:
        rows = [r for r in summary if r["phase"] == phase]
        if len(rows) < 2:
            continue
        uniform = [r for r in rows if not r["format"].startswith("map:")]
        base = (uniform or rows)[-1]
        parts = [f"{_w(r['format'])} {r['tokens_per_s'] / base['tokens_per_s']:.2f}x" for r in rows
                 if r is not base and base["tokens_per_s"]]
        lines.append(f"{phase}: tokens/s relative to {_w(base['format'])}: " + ", ".join(parts))
    return lines


ENERGY_PARTS = (("e_pe_uj", "PE"), ("e_reg_uj", "reg"), ("e_weight_buf_uj", "W buf"), ("e_act_buf_uj", "A buf"),
                ("e_out_buf_uj", "O buf"), ("e_dram_uj", "DRAM"), ("e_hadamard_uj", "Had"), ("e_quant_uj", "quant"))


def summary_table_rows(summary: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the totals table (terminal and Markdown)."""
    head = ["format", "phase", "tokens", "tokens/s", "uJ/token", "bound", "PE util", "DRAM MB/token",
            *[name for _, name in ENERGY_PARTS]]
    body = []
    for r in summary:
        util = r.get("pe_util")
        body.append([_w(r["format"]), r["phase"], _fmt(r.get("tokens")), _fmt(r.get("tokens_per_s")),
                     _fmt(r.get("energy_per_token_uj")), str(r.get("bound")),
                     "-" if util is None else f"{100 * util:.1f}%",
                     _fmt((r.get("dram_bytes_per_token") or 0) / 1e6),
                     *[_fmt(r.get(k)) for k, _ in ENERGY_PARTS]])
    return head, body


LAYER_VIEW = (("layer", "layer"), ("layers", "layers"), ("count", "x"), ("M", "M"), ("K", "K"), ("N", "N"),
              ("dataflow", "dataflow"), ("total_cycles_all", "cycles (all)"), ("stall_cycles", "stall/inst"),
              ("overall_util_pct", "util %"), ("bound", "bound"), ("energy_pj_all", "energy uJ (all)"))


def layer_table_rows(layers: list[dict], fmt: str, phase: str) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the per-layer table of one format and phase."""
    body = []
    for r in layers:
        if r["format"] != fmt or r["phase"] != phase:
            continue
        cells = []
        for key, _ in LAYER_VIEW:
            v = r.get(key)
            cells.append(_fmt(v / 1e6 if key == "energy_pj_all" and v is not None else v))
        body.append(cells)
    return [name for _, name in LAYER_VIEW], body


def rich_tables(result: dict) -> list:
    """Rich tables: per layer for the first format (each phase), then the totals of every format and phase."""
    from rich.table import Table

    summary, layers = result["summary"], result["layers"]
    first = summary[0]["format"]
    arch = result["arch_name"]
    tables = []
    for phase in dict.fromkeys(r["phase"] for r in summary):
        head, body = layer_table_rows(layers, first, phase)
        t = Table(title=f"{result['workload_name']} on {arch}: {_w(first)}, {phase} (per layer row; x = instances)")
        for h in head:
            t.add_column(h, justify="left" if h in ("layer", "layers", "dataflow", "bound") else "right",
                         no_wrap=h == "layer")
        for cells in body:
            t.add_row(*cells)
        tables.append(t)
    head, body = summary_table_rows(summary)
    split = head.index(ENERGY_PARTS[0][1])
    for title, cols, caption in ((f"Totals on {arch}", list(range(split)), "; ".join(ratio_lines(summary))),
                                 (f"Energy per token on {arch} (uJ), by unit", [0, 1, *range(split, len(head))],
                                  None)):
        t = Table(title=title, caption=caption or None)
        for i in cols:
            t.add_column(head[i], justify="left" if head[i] in ("format", "phase", "bound") else "right",
                         no_wrap=True)
        for cells in body:
            t.add_row(*[cells[i] for i in cols])
        tables.append(t)
    return tables


def _md_table(head: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in cells) + " |" for cells in body]
    return "\n".join(lines)


def summary_markdown(result: dict) -> str:
    """summary.md: what was estimated, the totals, the ratios, the files."""
    from qift_hw.core.provenance import provenance_line

    arch = result["arch"]
    w = result["workload"]
    lines = [f"# Accelerator estimate: {result['workload_name']} on {result['arch_name']}", "",
             f"Architecture `{result['arch_source']}` (sha256 {result['arch_digest'][:12]}), overrides "
             f"{result['overrides'] or 'none'}: {arch['array']['rows']}x{arch['array']['cols']} PEs at "
             f"{arch['clock_mhz']:g} MHz, prefill {arch['dataflow']}, decode {arch['decode_dataflow']} "
             f"(M <= {arch['decode_max_m']}), timing {arch['timing']}, DRAM {arch['dram']['gbps']:g} GB/s.", "",
             "Workload: " + ", ".join(f"{k} {','.join(map(str, v)) if isinstance(v, list) else v}"
                                      for k, v in w.items() if v is not None and k != "layer_map") + ".",
             ""]
    if w.get("layer_map"):
        lm = w["layer_map"]
        lines += [f"Layer map `{lm['source']}` ({lm['kind']}{', row ' + lm['row'] if lm.get('row') else ''}): "
                  + ", ".join(f"{n} linears {ls}" for ls, n in lm["linears"].items()) + f" (format `{lm['label']}`).",
                  ""]
    head, body = summary_table_rows(result["summary"])
    lines += ["## Totals", "", _md_table(head, body), ""]
    lines += [f"- {x}" for x in ratio_lines(result["summary"])]
    lines += ["", "## Files", "",
              "`summary.csv` (one row per format and phase), `layers.csv` (one row per layer row, SCALE-Sim's "
              "COMPUTE_REPORT and BANDWIDTH_REPORT columns plus energy and bound), `estimate.json` (everything), "
              "`arch.yaml` (the resolved architecture)"
              + (", `roofline.png`, `breakdown.png`, `sweeps.png`." if result.get("sweeps") else "."),
              "", provenance_line(result["provenance"]), ""]
    return "\n".join(lines)


def write_estimate(folder: str | Path, result: dict, plots: bool = True) -> list[Path]:
    """Write the run folder: the CSVs, JSON, resolved architecture, Markdown summary and (``plots``) the figures;
    a figure of an earlier run that this one does not draw is removed, so the folder holds one run's files."""
    import yaml

    from qift_hw.core.io import write_json, write_text
    from qift_hw.core.provenance import write_csv

    folder = Path(folder)
    summary, layers = result["summary"], result["layers"]
    paths = [write_csv(folder / SUMMARY_FILE, summary, _columns(summary, SUMMARY_COLUMNS)),
             write_csv(folder / LAYERS_FILE, layers, _columns(layers, LAYER_COLUMNS)),
             write_json(folder / JSON_FILE, result),
             write_text(folder / ARCH_FILE, yaml.safe_dump(result["arch"], sort_keys=False)),
             write_text(folder / MARKDOWN_FILE, summary_markdown(result))]
    if plots:
        paths += write_plots(folder, result)
    for name in PLOT_FILES:
        if folder / name not in paths:
            (folder / name).unlink(missing_ok=True)
    return paths


def _columns(rows: list[dict], stable: Sequence[str]) -> list[str]:
    seen = list(dict.fromkeys(k for r in rows for k in r))
    return [c for c in stable if c in seen] + [c for c in seen if c not in stable]


def write_plots(folder: Path, result: dict) -> list[Path]:
    """roofline.png (the uniform formats: a layer map's rows are theirs again), breakdown.png and (when the result
    has sweeps) sweeps.png."""
    from qift_hw.study.accel_plots import plot_breakdown, plot_roofline, plot_sweeps

    arch = result["arch"]
    summary, layers = result["summary"], result["layers"]
    formats = list(dict.fromkeys(r["format"] for r in summary))
    phases = list(dict.fromkeys(r["phase"] for r in summary))
    peak = arch["array"]["rows"] * arch["array"]["cols"]
    bpc = arch["dram"]["gbps"] * 1e3 / arch["clock_mhz"]
    title = f"{result['workload_name']} on {result['arch_name']}: every layer row, per format and phase"
    uniform = [f for f in formats if not f.startswith("map:")] or formats
    paths = [plot_roofline([r for r in layers if r["format"] in uniform], uniform, peak, bpc, title,
                           folder / PLOT_FILES[0]),
             plot_breakdown(layers, formats, phases, {(r["format"], r["phase"]): r["tokens"] for r in summary},
                            folder / PLOT_FILES[1])]
    if result.get("sweeps"):
        marks = {"array": arch["array"]["rows"] if arch["array"]["rows"] == arch["array"]["cols"] else None,
                 "dram_gbps": arch["dram"]["gbps"]}
        paths.append(plot_sweeps(result["sweeps"], formats, phases, marks, folder / PLOT_FILES[2]))
    return paths


def build_result(arch: Arch, spec: EstimateSpec, arch_source: str, overrides: Mapping[str, Any],
                 sweeps: bool = True) -> dict:
    """Everything the run folder holds: the resolved architecture and workload, the rows, the sweeps, provenance."""
    from qift_hw.core.provenance import provenance

    rows = run_estimate(arch, spec)
    name = spec.shape.name if spec.shape is not None else Path(spec.gemm_csv).stem
    result = {"arch_name": arch.name, "arch_source": arch_source, "arch_digest": arch.digest(),
              "overrides": dict(overrides), "arch": arch.model_dump(mode="json"), "workload_name": name,
              "workload": spec.describe(), **rows}
    if sweeps:
        result["sweeps"] = run_sweeps(arch, spec)
    result["provenance"] = provenance()
    return result


# --- the architecture-file reference (docs/accelerator.md's field table) -------------------------------------------

def _allowed(info) -> str:
    ann = info.annotation
    if get_origin(ann) is Literal:
        return ", ".join(str(a) for a in get_args(ann))
    bounds = []
    for m in info.metadata:
        for attr, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            v = getattr(m, attr, None)
            if v is not None:
                bounds.append(f"{sym} {v:,}" if isinstance(v, int) else f"{sym} {v:g}")
    return ", ".join(bounds)


def _type_name(ann) -> str:
    if get_origin(ann) is Literal:
        return "choice"
    text = getattr(ann, "__name__", None) if get_origin(ann) is None else None
    return text or str(ann).replace("typing.", "")


def _default_text(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (dict, tuple, list)):
        return "`" + (str(dict(v)) if isinstance(v, dict) else str(list(v))) + "`" if v else "empty"
    if v is None:
        return "none"
    return str(v)


FIELD_NOTES = {
    "name": "preset or file name (default: the file's stem)",
    "description": "one line shown in reports",
    "array.rows": "PE rows: the reduction (K) dimension in WS",
    "array.cols": "PE columns: the output channels (N)",
    "decode_dataflow": "dataflow of GEMMs with M <= decode_max_m; stream: weights stream from the buffer every "
                       "cycle, each used M times",
    "clock_mhz": "array clock",
    "acc_bits": "accumulator width (must hold one product)",
    "act_bits": "activation word bits (INT4 in the W2A4 pipeline)",
    "kv_bits": "KV-cache value bits (plus an FP32 scale and zero per token and head)",
    "buffers.weight.banks": "SRAM banks", "buffers.act.banks": "SRAM banks", "buffers.out.banks": "SRAM banks",
    "dram.gbps": "DRAM bandwidth in GB/s (1e9 bytes/s)",
    "dram.pj_per_bit": "DRAM energy per bit moved",
    "dram.burst_bytes": "smallest DRAM transfer; transfers round up to it",
    "hadamard.lanes": "elements the online Hadamard unit accepts per cycle (0: array rows)",
    "hadamard.orders": "Hadamard orders the unit supports (empty: any the framework builds)",
    "quantizer.lanes": "elements per cycle of the INT4 quantizer (0: Hadamard lanes)",
    "energy.source": "where the energy table comes from (reported)",
    "energy.mac_pj": "energy of one MAC per PE kind (pot_mnz, mnz, std, pm12, int4, int8)",
    "energy.sram_ref_kib": "SRAM size that sram_pj_per_bit is quoted for",
}
"""Meanings of the schema fields that carry no description of their own."""


def arch_field_rows(model: type = Arch, prefix: str = "", default: Any = None) -> list[dict]:
    """One row per leaf field of the architecture schema: dotted path, type, default, allowed values, meaning."""
    from pydantic import BaseModel

    inst = default if default is not None else model()
    rows = []
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        value = getattr(inst, name)
        if isinstance(value, BaseModel):
            rows += arch_field_rows(type(value), path + ".", value)
            continue
        rows.append({"field": path, "type": _type_name(info.annotation), "default": _default_text(value),
                     "allowed": _allowed(info), "description": info.description or FIELD_NOTES.get(path, "")})
    return rows


def arch_field_table() -> str:
    """The Markdown field table of docs/accelerator.md (regenerate with ``python -m qift_hw.study.accel_report``)."""
    rows = arch_field_rows()
    return _md_table(["field", "type", "default", "allowed", "meaning"],
                     [[f"`{r['field']}`", r["type"], r["default"], r["allowed"], r["description"]] for r in rows])


def arch_source(name_or_path: str) -> str:
    """How a report names the architecture file: ``sim/accelerators/<preset>.yaml`` or the path given."""
    path = resolve_arch_path(name_or_path)
    return f"sim/accelerators/{path.name}" if path.resolve().parent == PRESETS_DIR else str(name_or_path)


def with_overrides(spec: EstimateSpec, **changes) -> EstimateSpec:
    """``spec`` with some fields replaced (the demo and the GPU comparison reuse one spec)."""
    return replace(spec, **changes)


if __name__ == "__main__":
    print(arch_field_table())
