"""`qift-hw report`: one table, report and plots from the results of several `eval` / `sweep-ratio` runs."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from qift_hw.cli.app import app
from qift_hw.core.errors import QiftError


@app.command("report")
def report_cmd(
    results: list[Path] = typer.Argument(..., help="results.json (or results.partial.json) files, or folders "
                                         "holding one, written by `qift-hw eval --out` / `sweep-ratio --out`."),
    out: Path = typer.Option(..., "--out", help="Folder for the merged results.json, results.md and plots."),
) -> None:
    """Merge the runs of several result files (same model, tokens and device) into one report."""
    from qift_hw.study.report import markdown_rows, merge_results, pivot_table, write_report

    parts = []
    for path in results:
        if path.is_dir():
            found = [path / n for n in ("results.json", "results.partial.json") if (path / n).is_file()]
            if not found:
                raise QiftError(f"{path} holds no results.json; give the file written by `qift-hw eval --out`")
            path = found[0]
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise QiftError(f"{path} does not exist") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise QiftError(f"{path} is not a results JSON file ({exc})") from None
        if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
            raise QiftError(f"{path} has no 'rows' list; give the results.json written by `qift-hw eval --out`")
        parts.append(data)
    rows, meta = merge_results(parts)
    md = write_report(rows, out, meta)
    print(markdown_rows(rows))
    grid = pivot_table(rows)
    if grid:
        print(grid)
    print(f"report: {md} ({len(rows)} runs from {len(parts)} files)")
