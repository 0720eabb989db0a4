"""`qift-hw explore GRID.yaml`: an accelerator design-space sweep on Dask, cached per point, with Pareto plots."""

from pathlib import Path
from typing import Optional

import typer

from qift_hw.cli.app import app
from qift_hw.cli.options import (check_cluster, check_out_folder, interrupted_grid, no_cache_option, out_option,
                                 report_grid, run_folder, scheduler_option, workers_option)


@app.command("explore")
def explore_cmd(
    grid_file: Path = typer.Argument(..., help="Grid YAML: lists of architecture fields (dotted), levels and "
                                     "workloads; the points are their cartesian product (docs/explore.md)."),
    out: Optional[Path] = out_option("explore.parquet/.csv/.json and the Pareto plots"),
    scheduler: Optional[str] = scheduler_option(), workers: Optional[int] = workers_option(),
    no_cache: bool = no_cache_option(),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Run every point of a grid through the accelerator model and write the tidy table and Pareto plots."""
    from qift_hw.study.explore import FILES, describe, find_cache, load_grid, run_explore, write_outputs
    from qift_hw.study.grid import failure_lines

    check_cluster(workers, scheduler)
    grid = load_grid(grid_file)
    folder = run_folder(out, "explore", grid=grid_file.stem)
    check_out_folder(folder, FILES)
    cache = None if no_cache else find_cache(grid)
    try:
        df, run, ppl_meta = run_explore(grid, cache=not no_cache, scheduler=scheduler, workers=workers,
                                        progress=progress)
    except KeyboardInterrupt:
        raise interrupted_grid(cache) from None
    failures = failure_lines(run, describe)
    paths = write_outputs(folder, df, run, grid, ppl_meta, failures)
    report_grid(run, failures, paths, rows=len(df))
