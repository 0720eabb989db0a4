"""`qift-hw explore GRID.yaml`: an accelerator design-space sweep on Dask, cached per point, with Pareto plots."""

from pathlib import Path
from typing import Optional

import typer

from qift_hw.cli.app import app
from qift_hw.cli.options import (SCHEDULER_HELP, WORKERS_HELP, check_cluster, check_out_folder, out_option,
                                 run_folder)


@app.command("explore")
def explore_cmd(
    grid_file: Path = typer.Argument(..., help="Grid YAML: lists of architecture fields (dotted), levels and "
                                     "workloads; the points are their cartesian product (docs/explore.md)."),
    out: Optional[Path] = out_option("explore.parquet/.csv/.json and the Pareto plots"),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help=SCHEDULER_HELP),
    workers: Optional[int] = typer.Option(None, "--workers", help=WORKERS_HELP, show_default="one per core"),
    no_cache: bool = typer.Option(False, "--no-cache", help="Run every point; neither read nor write the cache."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Run every point of a grid through the accelerator model and write the tidy table and Pareto plots."""
    from rich.console import Console

    from qift_hw.cli import exits
    from qift_hw.study.explore import FILES, describe, find_cache, load_grid, run_explore, write_outputs
    from qift_hw.study.grid import failure_lines

    check_cluster(workers, scheduler)
    grid = load_grid(grid_file)
    folder = run_folder(out, "explore", grid=grid_file.stem)
    check_out_folder(folder, FILES)
    console = Console(stderr=True, soft_wrap=True)
    cache = None if no_cache else find_cache(grid)
    try:
        df, run, ppl_meta = run_explore(grid, cache=not no_cache, scheduler=scheduler, workers=workers,
                                        progress=progress)
    except KeyboardInterrupt:
        kept = f"finished points are cached in {cache}" if cache else "nothing is kept (--no-cache)"
        raise exits.Interrupted(f"interrupted; rerun the same command to resume ({kept})") from None
    failures = failure_lines(run, describe)
    paths = write_outputs(folder, df, run, grid, ppl_meta, failures)
    s = run.summary()
    console.print(f"{s['points']} points: {s['cached']} cached, {s['computed']} run ({s['failed']} failed) in "
                  f"{s['seconds']:.1f} s on {s['workers'] or 'no'} worker(s); {len(df)} rows")
    for note in run.notes:
        console.print(note, markup=False)
    for line in failures:
        console.print(f"failed {line}", markup=False, highlight=False)
    console.print("wrote " + ", ".join(str(p) for p in paths), markup=False, highlight=False)
    if failures:
        raise typer.Exit(exits.FAILURE)
