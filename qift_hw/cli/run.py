"""`qift-hw run SPEC.yaml`: an accuracy experiment from a run spec, each point x seed a cached Dask grid point."""

from pathlib import Path
from typing import List, Optional

import typer

from qift_hw.cli.app import app
from qift_hw.cli.options import (check_cluster, check_out_folder, interrupted_grid, no_cache_option, out_option,
                                 report_grid, resolve_device, run_folder, scheduler_option, workers_option)


@app.command("run")
def run_cmd(
    spec_file: Path = typer.Argument(..., help="Run spec (YAML): model, text, calibration, points, seeds, "
                                     "evaluation (docs/pipeline.md, Run specs; examples in sim/specs)."),
    out: Optional[Path] = out_option("results_long.parquet/.csv, summary.md, run.json, spec.yaml and plots"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override a spec field: FIELD=VALUE (dotted, "
                                             "value in YAML), e.g. --set calibration.seeds=[0,1,2]; repeatable."),
    scheduler: Optional[str] = scheduler_option(), workers: Optional[int] = workers_option(),
    no_cache: bool = no_cache_option(),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar (one step per point)."),
    list_points: bool = typer.Option(False, "--list", help="Print the points x seeds and the resolved spec; run "
                                     "nothing."),
) -> None:
    """Run every point x seed of a spec (resuming from the cache) and write the long table, the aggregate over
    seeds and the plots."""
    import os

    from rich.console import Console

    from qift_hw.study.grid import failure_lines, run_grid
    from qift_hw.study.points import run_point
    from qift_hw.study.spec import check_sources, describe, expand, identity, load_spec, resolved_yaml
    from qift_hw.study.tidy import FILES, aggregate, long_table, write_outputs

    check_cluster(workers, scheduler)
    spec = load_spec(spec_file, list(set_ or []))
    if spec.device == "auto":
        spec = spec.model_copy(update={"device": resolve_device(None)})
    if spec.threads is None and not scheduler:  # the local cluster's workers share the cores
        cores = os.cpu_count() or 1
        spec = spec.model_copy(update={"threads": max(1, cores // (workers or cores))})
    check_sources(spec)
    points = expand(spec)
    if list_points:
        print(resolved_yaml(spec) + "\n".join(f"{k}: {describe(p)}" for k, p in enumerate(points)))
        return
    folder = run_folder(out, "run", spec=spec.name or spec_file.stem)
    check_out_folder(folder, FILES)
    cache = None if no_cache or spec.cache is None else Path(spec.cache)
    Console(stderr=True).print(f"{len(points)} point(s) x seed(s) from {spec_file}; cache {cache or 'off'}",
                               markup=False)
    try:
        run = run_grid(run_point, points, cache_dir=cache, identity=identity, scheduler=scheduler, workers=workers,
                       chunk_size=1, progress=progress, label=spec.name or spec_file.stem)
    except KeyboardInterrupt:
        raise interrupted_grid(cache) from None
    failures = failure_lines(run, describe)
    df = long_table(run)
    agg = aggregate(df)
    paths = write_outputs(folder, df, agg, run, resolved_yaml(spec), str(spec_file), failures)
    report_grid(run, failures, paths)
