"""`qift-hw analyze`: weight statistics of every decoder linear before and after the QuaRot rotation."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from qift_hw.cli.app import app
from qift_hw.cli.options import (check_out_folder, device_option, out_option, resolve_device, rotation_seed_option,
                                 run_folder)


@app.command("analyze")
def analyze(
    model: str = typer.Option(None, "--model", help="Model: default embedded SmolLM2, a HF folder, a .gguf file or a hub id."),
    out: Optional[Path] = out_option("stats.json, stats.md, stats.csv and plots"),
    rotation_seed: Optional[int] = rotation_seed_option,
    device: Optional[str] = device_option,
    example: str = typer.Option(None, "--example", help="Module for the Q-Q plot (default: highest kurtosis before rotation)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Zero-centredness, excess kurtosis and Q-Q error of every decoder linear: original, norm-fused, rotated."""
    import torch

    from qift_hw.algo.models import load_model
    from qift_hw.algo.config import QuantConfig
    from qift_hw.core.provenance import provenance
    from qift_hw.study.analysis import analyze_weights, write_analysis

    seed = QuantConfig.rotation_seed if rotation_seed is None else rotation_seed
    folder = run_folder(out, "analyze", model=model or "smollm2", rotation_seed=seed, example=example)
    check_out_folder(folder, ("stats.json", "stats.md", "stats.csv", "kurtosis.png", "qq.png"))
    torch.set_num_threads(min(2, torch.get_num_threads()))
    net, _ = load_model(model, device=resolve_device(device))
    stats, qq = analyze_weights(net, seed, example, progress)
    result = {"model": model or "smollm2", **stats, "provenance": provenance()}
    head, paths = write_analysis(result, qq, folder)
    typer.echo(head.rstrip())
    typer.echo("wrote " + ", ".join(str(p) for p in paths))
