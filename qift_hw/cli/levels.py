"""`qift-hw levels`: the level-set table and the inner/outer ratio analysis."""

from pathlib import Path
from typing import Optional

import typer

from qift_hw.cli.app import app


@app.command("levels")
def levels_cmd(
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write the level sets and the MSE-vs-ratio curve to this PNG."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the table as JSON."),
) -> None:
    """Print every level set: levels, inner/outer ratio, shift-friendliness and Gaussian MSE at the best scale."""
    from rich.console import Console
    from rich.table import Table

    from qift_hw.core.io import write_json
    from qift_hw.core.levels import level_table, ratio_sweep

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
    if json_out:
        write_json(json_out, {"level_sets": rows, "ratio_sweep": sweep})
        console.print(f"wrote {json_out}")
    if plot:
        from qift_hw.study.plots import plot_level_sets

        plot_level_sets(rows, sweep, plot)
        console.print(f"wrote {plot}")
