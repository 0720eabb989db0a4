"""`qift-hw estimate`: a model (or GEMM list) on an accelerator architecture file, W2 vs W4 vs W8 (and a layer map).

The accelerator is a preset or YAML file (`--arch`), changed by `--set field.path=value` or by the older flags
(`--array`, `--dataflow`, `--clock-mhz`, `--dram-gbps`, `--sram-kib`, `--area-json`), which map onto its fields.
The work is done by `qift_hw.study.accel_report` (files, tables, plots) and `qift_hw.sim.accelerator` (the model).
"""

from pathlib import Path
from typing import Any, List, Optional

import typer

from qift_hw.cli.app import app
from qift_hw.cli.options import (ARRAY_HELP, SEQLEN_HELP, check_out_folder, out_option, parse_array, parse_sram_kib,
                                 run_folder)
from qift_hw.core.errors import QiftError

LM_HEAD_BITS = {0: None, 3: "int3", 4: "int4", 8: "int8"}
"""The older `--lm-head-bits`: width -> the integer level set `--lm-head` names (0 leaves lm_head out)."""


def parse_sets(items: List[str]) -> dict[str, tuple[str, Any]]:
    """``--set field.path=value`` items (values read as YAML: numbers, booleans, lists) -> {path: (item, value)}."""
    from qift_hw.core.overrides import parse_override

    out: dict[str, tuple[str, Any]] = {}
    for item in items:
        key, value = parse_override(item, "dram.gbps=32")
        out[key] = (f"--set {item}", value)
    return out


def flag_overrides(array: Optional[str], dataflow: Optional[str], clock_mhz: Optional[float],
                   dram_gbps: Optional[float], sram_kib: Optional[str], area_json: Optional[Path]
                   ) -> dict[str, tuple[str, Any]]:
    """The older accelerator flags as architecture-file overrides: {field path: (flag as typed, value)}."""
    out: dict[str, tuple[str, Any]] = {}
    if array is not None:
        rows, cols = parse_array(array)
        out["array.rows"] = (f"--array {array}", rows)
        out["array.cols"] = (f"--array {array}", cols)
    if dataflow is not None:
        out["dataflow"] = (f"--dataflow {dataflow}", dataflow)
    if clock_mhz is not None:
        out["clock_mhz"] = (f"--clock-mhz {clock_mhz:g}", clock_mhz)
    if dram_gbps is not None:
        out["dram.gbps"] = (f"--dram-gbps {dram_gbps:g}", dram_gbps)
    if sram_kib is not None:
        for buf, kib in zip(("act", "weight", "out"), parse_sram_kib(sram_kib)):
            out[f"buffers.{buf}.kib"] = (f"--sram-kib {sram_kib}", kib)
    if area_json is not None:
        out["area_json"] = (f"--area-json {area_json}", str(area_json))
    return out


def resolve_arch(arch: str, overrides: dict[str, tuple[str, Any]]):
    """The architecture with every override applied; a bad override is refused naming the flag that gave it."""
    from qift_hw.sim.arch import load_arch

    load_arch(arch)
    for key, (flag, value) in overrides.items():
        try:
            load_arch(arch, {key: value})
        except QiftError as exc:
            raise QiftError(f"{flag}: {exc}") from None
    return load_arch(arch, {k: v for k, (_, v) in overrides.items()})


def _lm_head(lm_head: str, lm_head_bits: Optional[int]) -> Optional[str]:
    from qift_hw.study.accel_report import parse_lm_head

    if lm_head_bits is None:
        return parse_lm_head(lm_head)
    if lm_head_bits not in LM_HEAD_BITS:
        raise QiftError(f"--lm-head-bits must be one of {', '.join(map(str, LM_HEAD_BITS))} (0 leaves lm_head out), "
                        f"got {lm_head_bits}; or name a level set with --lm-head")
    return LM_HEAD_BITS[lm_head_bits]


def _name_parts(overrides: dict[str, tuple[str, Any]]) -> dict[str, Any]:
    """Run-folder name parts of the overrides: an older flag by its name (``array-16x8``), a --set by its field."""
    parts: dict[str, Any] = {}
    for key, (flag, value) in overrides.items():
        if flag.startswith("--set "):
            parts[f"set-{key}"] = value
        else:
            name, _, text = flag.removeprefix("--").partition(" ")
            parts[name] = text
    return parts


@app.command("estimate")
def estimate_cmd(
    arch: str = typer.Option("edge", "--arch", help="Accelerator: a preset in sim/accelerators/ (edge, hbm, "
                             "scalesim8, h100_roofline) or a path to an architecture YAML file."),
    sets: List[str] = typer.Option([], "--set", help="Override one architecture field, field.path=value (value read "
                                   "as YAML), e.g. --set dram.gbps=32; repeatable. Fields: docs/accelerator.md."),
    model: Optional[str] = typer.Option(None, "--model", help="smollm2, llama2-7b, llama3-8b (or a shape name), or a "
                                        "HF config.json file or folder (default: the --layer-map's model, else "
                                        "smollm2)."),
    levels: str = typer.Option("pot_mnz,int4,int8", "--levels", help="Level sets (weight formats) to compare, "
                               "comma-separated: pot_mnz (W2, shift-add PE), mnz, std, pm12, int3, int4, int8."),
    phase: str = typer.Option("both", "--phase", help="prefill, decode or both."),
    seqlen: int = typer.Option(512, "--seqlen", help=f"{SEQLEN_HELP} Prefill length (and the default context)."),
    context: Optional[int] = typer.Option(None, "--context", help="Decode: tokens already in the KV cache "
                                          "(default: --seqlen)."),
    batch: int = typer.Option(1, "--batch", help="Sequences run together (decode M = batch)."),
    lm_head: str = typer.Option("int8", "--lm-head", help="Level set of lm_head's weights, or none to leave it out."),
    lm_head_bits: Optional[int] = typer.Option(None, "--lm-head-bits", hidden=True,
                                               help="Older form of --lm-head: 0, 3, 4 or 8 bits."),
    attention: bool = typer.Option(True, "--attention/--no-attention", help="Count attention (INT x KV cache)."),
    gemm_csv: Optional[Path] = typer.Option(None, "--gemm-csv", help="Workload from a SCALE-Sim GEMM topology CSV "
                                            "(Layer, M, N, K; optional Format column) instead of a model."),
    layer_map: Optional[Path] = typer.Option(None, "--layer-map", help="Per-layer formats: a quantized checkpoint "
                                             "(.safetensors) or a pipeline results JSON; compared beside --levels."),
    layer_map_row: Optional[str] = typer.Option(None, "--layer-map-row", help="Label of the results-JSON row to "
                                                "take the map from (default: its only mixed row)."),
    array: Optional[str] = typer.Option(None, "--array", help=f"{ARRAY_HELP} Sets array.rows/cols."),
    dataflow: Optional[str] = typer.Option(None, "--dataflow", help="Prefill dataflow ws or os (sets dataflow; "
                                           "decode uses decode_dataflow)."),
    clock_mhz: Optional[float] = typer.Option(None, "--clock-mhz", help="Array clock in MHz (sets clock_mhz)."),
    dram_gbps: Optional[float] = typer.Option(None, "--dram-gbps", help="DRAM bandwidth in GB/s (sets dram.gbps)."),
    sram_kib: Optional[str] = typer.Option(None, "--sram-kib", help="SRAM KiB: one value for all buffers, or "
                                           "act,weight,out (sets buffers.*.kib)."),
    area_json: Optional[Path] = typer.Option(None, "--area-json", help="PE areas from `qift-hw rtl area` "
                                             "(rtl_area.json; sets area_json)."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Draw the roofline, breakdown and sweep plots "
                               "(the sweeps rerun the estimate at 5 array sizes and 9 bandwidths)."),
    out: Optional[Path] = out_option("summary.csv, layers.csv, estimate.json, arch.yaml, summary.md and plots"),
) -> None:
    """Tokens/s, energy per token and the bound of each weight format, per layer and in total, on an accelerator."""
    from rich.console import Console

    from qift_hw.core.shapes import load_model_shape
    from qift_hw.study.accel_report import (OUTPUT_FILES, PHASE_CHOICES, EstimateSpec, arch_source, build_result,
                                            check_spec, parse_levels, rich_tables, write_estimate)

    if phase not in PHASE_CHOICES:
        raise QiftError(f"--phase must be one of {', '.join(PHASE_CHOICES)}, got {phase!r}")
    overrides = {**flag_overrides(array, dataflow, clock_mhz, dram_gbps, sram_kib, area_json), **parse_sets(sets)}
    resolved = resolve_arch(arch, overrides)
    names = parse_levels(levels)
    head = _lm_head(lm_head, lm_head_bits)
    lmap = None
    if layer_map is not None:
        from qift_hw.bridge.layer_map import read_layer_map

        lmap = read_layer_map(layer_map, layer_map_row)
    if gemm_csv is not None and model is not None:
        raise QiftError("give --model or --gemm-csv, not both")
    shape = None
    if gemm_csv is None:
        shape = load_model_shape(model) if model is not None else (
            lmap.shape if lmap is not None and lmap.shape is not None else load_model_shape("smollm2"))
    spec = EstimateSpec(shape=shape, gemm_csv=None if gemm_csv is None else str(gemm_csv), levels=names,
                        layer_map=lmap, phases=PHASE_CHOICES[phase], seqlen=seqlen, context=context, batch=batch,
                        lm_head=head, attention=attention)
    check_spec(spec)
    spec.formats()
    settings = {"arch": resolved.name, "digest": resolved.digest()[:10],
                **_name_parts(overrides),
                "model": (model or shape.name) if shape is not None else None,
                "gemm": None if gemm_csv is None else gemm_csv.stem, "levels": "+".join(names),
                "layer_map": None if lmap is None else f"{Path(lmap.source).stem}-{lmap.digest[:8]}",
                "phase": phase, "seqlen": seqlen, "context": seqlen if context is None else context, "batch": batch,
                "lm_head": head or "none", "attention": attention}
    folder = run_folder(out, "estimate", **settings)
    check_out_folder(folder, OUTPUT_FILES)
    result = build_result(resolved, spec, arch_source(arch), {k: v for k, (_, v) in overrides.items()}, sweeps=plots)
    console = Console(width=max(Console().width, 150))
    for table in rich_tables(result):
        console.print(table)
    paths = write_estimate(folder, result, plots=plots)
    console.print(f"wrote {folder}/: " + ", ".join(p.name for p in paths))
