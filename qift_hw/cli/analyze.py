"""`qift-hw analyze`: weight statistics of every decoder linear before and after the QuaRot rotation."""

from __future__ import annotations

from pathlib import Path

import typer

from qift_hw.cli.app import app

STATES = ("original", "fused", "rotated")


def _collect(model, state: str, rows: dict, progress: bool) -> None:
    from tqdm.auto import tqdm

    from qift_hw.algo.models import iter_linears
    from qift_hw.algo.stats import weight_stats

    for name, lin in tqdm(iter_linears(model), desc=f"stats ({state})", unit="module", disable=not progress):
        rows.setdefault(name, {"name": name, "shape": list(lin.weight.shape)})[state] = weight_stats(lin.weight)


def _plot(rows: list[dict], qq: dict, example: str, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from qift_hw.core.io import save_figure

    written = []
    panels = (("excess_kurtosis", "|excess kurtosis|"), ("qq_error", "Q-Q error"),
              ("row_excess_kurtosis", "|excess kurtosis|, rows standardized"), ("row_qq_error", "Q-Q error, rows standardized"))
    fig, axes = plt.subplots(2, 2, figsize=(14, 7), sharex=True)
    x = range(len(rows))
    for ax, (key, label) in zip(axes.flat, panels):
        for state, style in zip(STATES, ("-", ":", "-")):
            ax.plot(x, [max(abs(r[state][key]), 1e-6) for r in rows], style, lw=0.8, label=state)
        ax.set_yscale("log")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    for ax in axes[1]:
        ax.set_xlabel("decoder linear (layer-major: q, k, v, o, gate, up, down)")
    fig.suptitle("Weight shape statistics per module, before and after rotation")
    fig.tight_layout()
    written.append(save_figure(fig, out / "kurtosis.png", dpi=110))
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.8))
    for ax, mode, title in ((axes[0], "tensor", "whole tensor standardized"), (axes[1], "row", "each row standardized")):
        lim = 0.0
        for state in ("original", "rotated"):
            q, z = qq[(state, mode)]
            ax.plot(q, z, ".", ms=3, label=state)
            lim = max(lim, max(abs(v) for v in q))
        ax.plot([-lim, lim], [-lim, lim], color="grey", lw=0.8, label="Gaussian")
        ax.set_xlabel("standard normal quantile")
        ax.set_ylabel("standardized weight quantile")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=8)
    fig.suptitle(f"Q-Q plot of {example}", fontsize=10)
    fig.tight_layout()
    written.append(save_figure(fig, out / "qq.png", dpi=120))
    plt.close(fig)
    return written


def _qq_pair(w) -> dict:
    from qift_hw.algo.stats import qq_points, row_standardized

    return {"tensor": qq_points(w), "row": qq_points(row_standardized(w))}


def _summary_lines(s: dict) -> str:
    def line(key: str, label: str) -> str:
        text = f"- {label}: {s[f'median_{key}_original']:.3g} -> {s[f'median_{key}_rotated']:.3g}"
        if f"median_{key}_reduction" in s:
            text += (f" (median reduction x{s[f'median_{key}_reduction']:.3g}, "
                     f"{s[f'modules_{key}_reduced']} of {s['modules']} modules reduced)")
        return text + "\n"

    return "".join(line(k, label) for k, label in (
        ("zero_centredness", "|mean|/std"), ("excess_kurtosis", "excess kurtosis"), ("qq_error", "Q-Q error"),
        ("row_excess_kurtosis", "excess kurtosis, rows standardized"),
        ("row_qq_error", "Q-Q error, rows standardized")))


@app.command("analyze")
def analyze(
    model: str = typer.Option(None, "--model", help="Model: default embedded SmolLM2, a HF folder, a .gguf file or a hub id."),
    out: Path = typer.Option(Path("docs/results/analyze"), "--out", help="Output folder for stats.json, stats.md and plots."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random Hadamard rotation."),
    device: str = typer.Option("cpu", "--device", help="Torch device: cpu or cuda."),
    example: str = typer.Option(None, "--example", help="Module for the Q-Q plot (default: highest kurtosis before rotation)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Zero-centredness, excess kurtosis and Q-Q error of every decoder linear: original, norm-fused, rotated."""
    import torch

    from qift_hw.core.errors import QiftError
    from qift_hw.core.io import write_json, write_text
    from qift_hw.algo.models import iter_linears, load_model
    from qift_hw.algo.rotation import check_rotatable, fuse_norms, rotate_model
    from qift_hw.algo.stats import markdown_table, summarize, summarize_by_kind

    torch.set_num_threads(min(2, torch.get_num_threads()))
    net, _ = load_model(model, device=device)
    check_rotatable(net)
    linears = dict(iter_linears(net))
    names = list(linears)
    if example is not None and example not in linears:
        raise QiftError(f"--example {example} is not a decoder linear; e.g. {names[0]}")
    rows: dict = {}
    qq: dict = {}
    with torch.no_grad():
        _collect(net, "original", rows, progress)
        if example is None:
            example = max(names, key=lambda n: rows[n]["original"]["excess_kurtosis"])
        for mode, pts in _qq_pair(linears[example].weight).items():
            qq[("original", mode)] = pts
        fuse_norms(net)
        _collect(net, "fused", rows, progress)
        info = rotate_model(net, seed=seed)
        _collect(net, "rotated", rows, progress)
        for mode, pts in _qq_pair(dict(iter_linears(net))[example].weight).items():
            qq[("rotated", mode)] = pts
    table = [rows[n] for n in names]
    kinds = summarize_by_kind(table, STATES)
    summary = {
        "original_vs_rotated": summarize(table, "original", "rotated"),
        "fused_vs_rotated": summarize(table, "fused", "rotated"),
    }
    result = {
        "model": model or "smollm2",
        "rotation": info.to_dict(),
        "example_module": example,
        "summary": summary,
        "by_kind": kinds,
        "modules": table,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "stats.json", result)
    s = summary["original_vs_rotated"]
    head = (
        f"# Weight statistics: {result['model']} (rotation seed {seed})\n\n"
        f"{s['modules']} decoder linear modules. Median over modules, original -> rotated:\n\n"
        + _summary_lines(s)
    )
    md = (
        head
        + "\n## Median per module kind (original, norm-fused, rotated)\n\n"
        + markdown_table(kinds, STATES, label="kind")
        + "\n## Every module\n\n"
        + markdown_table(table, STATES)
    )
    write_text(out / "stats.md", md)
    plots = _plot(table, qq, example, out)
    typer.echo(head.rstrip())
    typer.echo(f"wrote {out / 'stats.json'}, {out / 'stats.md'}, " + ", ".join(str(p) for p in plots))
