"""`qift-hw report`: one table, report and plots from the results of several `eval` / `sweep-ratio` runs."""

from __future__ import annotations

from pathlib import Path

import typer

from qift_hw.cli.app import app


@app.command("report")
def report_cmd(
    results: list[Path] = typer.Argument(..., help="results.json (or results.partial.json) files, or folders "
                                         "holding one, written by `qift-hw eval --out` / `sweep-ratio --out`."),
    out: Path = typer.Option(..., "--out", help="Folder for the merged results.json, results.md and plots."),
) -> None:
    """Merge the runs of several result files (same model, tokens and device) into one report."""
    from qift_hw.study.report import markdown_rows, merge_results, pivot_table, read_results, write_report

    parts = read_results(results, out)
    rows, meta = merge_results(parts)
    md = write_report(rows, out, meta)
    print(markdown_rows(rows))
    grid = pivot_table(rows)
    if grid:
        print(grid)
    print(f"report: {md} ({len(rows)} runs from {len(parts)} files)")
