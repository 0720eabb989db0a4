"""`qift-hw levels`: the level-set table and the inner/outer ratio analysis."""

from pathlib import Path
from typing import Optional

import typer

from qift_hw.cli.app import app
from qift_hw.cli.options import check_out_folder, out_option, run_folder


@app.command("levels")
def levels_cmd(
    out: Optional[Path] = out_option("levels.json, levels.csv and levels.png (the sets and the MSE-vs-ratio curve)"),
) -> None:
    """Print every level set: levels, inner/outer ratio, shift-friendliness and Gaussian MSE at the best scale."""
    from rich.console import Console
    from rich.table import Table

    from qift_hw.core.io import write_json
    from qift_hw.core.levels import level_table, ratio_sweep
    from qift_hw.core.provenance import provenance, write_csv
    from qift_hw.study.plots import plot_level_sets

    folder = run_folder(out, "levels")
    check_out_folder(folder, ("levels.json", "levels.csv", "levels.png"))
    rows = level_table()
    table = Table(title="Level sets (levels in units of the per-channel scale)")
    for col in ("name", "bits", "levels", "inner/outer", "shift", "Gaussian MSE", "best scale"):
        table.add_column(col, justify="right" if col not in ("name", "levels") else "left")
    for r in rows:
        levels = r["levels"] if isinstance(r["levels"], str) else ", ".join(f"{x:g}" for x in r["levels"])
        table.add_row(r["name"], str(r["bits"]), levels, "-" if r["ratio"] is None else f"{r['ratio']:.3f}",
                      "yes" if r["shift_friendly"] else "no", f"{r['gaussian_mse']:.4f}", f"{r['best_scale']:.4f}")
    console = Console(width=max(Console().width, 110))
    console.print(table)
    sweep = ratio_sweep()
    console.print(f"Gaussian MSE over inner/outer ratio 0.05..0.7: best ratio {sweep['best_ratio']:.3f} "
                  f"(MSE {sweep['best_mse']:.4f})")
    paths = [write_json(folder / "levels.json", {"level_sets": rows, "ratio_sweep": sweep, "provenance": provenance()}),
             write_csv(folder / "levels.csv", rows), plot_level_sets(rows, sweep, folder / "levels.png")]
    console.print("wrote " + ", ".join(str(p) for p in paths))
