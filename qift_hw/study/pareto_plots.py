"""Pareto plots of a design-space exploration (matplotlib, headless): every design as a dot coloured by weight
format, the non-dominated designs of each workload ringed and joined by the front's staircase. One panel per
workload (prefill, decode, ...), one legend entry per format."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

from qift_hw.core.io import save_figure

MAX_PANELS = 4
MAX_FORMATS = 8
"""Formats past this many share one grey legend entry ("other formats")."""
PANEL_KEYS = ("model", "phase", "seqlen", "context", "batch")


def _panels(df: Any) -> list[tuple[str, Any]]:
    """(title, rows) per workload: the workload columns that vary across the table name each panel."""
    keys = [k for k in PANEL_KEYS if k in df and df[k].astype(str).nunique() > 1]
    if not keys:
        return [("", df)]
    out = []
    for values, part in df.groupby(keys, sort=False, dropna=False):
        values = values if isinstance(values, tuple) else (values,)
        out.append((", ".join(f"{k} {v}" for k, v in zip(keys, values)), part))
    return out


def _tick(value: float, _pos: int) -> str:
    return f"{value:,.0f}" if value >= 10 else f"{value:g}"


def _minor_tick(value: float, pos: int) -> str:
    """Label the 2x, 3x and 5x minor ticks of a log axis that spans less than two decades."""
    lead = f"{value:.0e}"[0]
    return _tick(value, pos) if lead in "235" else ""


def format_colors(formats: Sequence[str]) -> dict[str, Any]:
    """One colour per format, in order of first appearance; past MAX_FORMATS, grey."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    order = list(dict.fromkeys(str(f) for f in formats))
    return {f: (cmap(i % 10) if i < MAX_FORMATS else (0.6, 0.6, 0.6, 1.0)) for i, f in enumerate(order)}


def plot_front(df: Any, x: str, y: str, front: str, path: str | os.PathLike, *, xlabel: str, ylabel: str,
               title: str, logx: bool = True, logy: bool = True, note: str | None = None) -> Path:
    """Scatter ``y`` against ``x`` for every row, the rows flagged by column ``front`` highlighted and joined.
    A log axis whose values span less than a decade is drawn linear."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, NullFormatter

    missing = sorted(set(df["format"].astype(str)) - set(df[df[[x, y]].notna().all(axis=1)]["format"].astype(str)))
    df = df[df[[x, y]].notna().all(axis=1)]
    panels = _panels(df)
    shown = panels[:MAX_PANELS]
    colors = format_colors(df["format"])
    fig, axes = plt.subplots(1, len(shown), figsize=(5.2 * len(shown) + 1.8, 4.4), squeeze=False)
    for ax, (name, part) in zip(axes[0], shown):
        for fmt, rows in part.groupby(part["format"].astype(str), sort=False):
            ax.scatter(rows[x], rows[y], s=14, color=colors[fmt], alpha=0.35, linewidths=0)
        best = part[part[front]].sort_values([x, y])
        if len(best):
            ax.step(best[x], best[y], where="post", color="black", lw=1.0, zorder=2)
            ax.scatter(best[x], best[y], s=46, c=[colors[str(f)] for f in best["format"]], edgecolors="black",
                       linewidths=1.0, zorder=3)
        for axis, col, log, set_scale in ((ax.xaxis, x, logx, ax.set_xscale), (ax.yaxis, y, logy, ax.set_yscale)):
            vals = part[col].astype(float)
            span = vals.max() / vals.min() if vals.min() > 0 else math.inf
            set_scale("log" if log and span >= 10 else "linear")  # under a decade, a log axis has no ticks
            axis.set_major_formatter(FuncFormatter(_tick))
            axis.set_minor_formatter(FuncFormatter(_minor_tick) if log and span < 100 else NullFormatter())
        ax.set_xlabel(xlabel)
        ax.set_title(name or title, fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    handles = [Line2D([], [], marker="o", ls="", color=c, label=f) for f, c in list(colors.items())[:MAX_FORMATS]]
    if len(colors) > MAX_FORMATS:
        handles.append(Line2D([], [], marker="o", ls="", color=(0.6, 0.6, 0.6), label="other formats"))
    handles.append(Line2D([], [], marker="o", color="black", mfc="white", label="Pareto front"))
    fig.legend(handles=handles, loc="center right", fontsize=8, frameon=False)
    extra = [note] if note else []
    if missing:
        extra.append(f"no {xlabel.split(' (')[0]} or {ylabel.split(' (')[0]} for {', '.join(missing)} (not shown)")
    if len(panels) > len(shown):
        extra.append(f"{len(panels) - len(shown)} more workload(s) not shown; see the table")
    fig.suptitle(title, fontsize=11)
    if extra:
        fig.text(0.01, 0.01, "; ".join(extra), fontsize=7, color="dimgray")
    fig.tight_layout(rect=(0, 0.04 if extra else 0, 1 - 1.6 / fig.get_figwidth(), 0.95))
    written = save_figure(fig, path, dpi=120)
    plt.close(fig)
    return written


def plot_explore(df: Any, folder: str | os.PathLike, area_unit: str, ppl_note: str | None = None) -> list[Path]:
    """The three pictures of a sweep: tokens/s and energy per token against area, and (when the table has
    perplexities) energy per token against perplexity."""
    folder = Path(folder)
    area = f"area ({area_unit})"
    out = [
        plot_front(df, "area", "tokens_per_s", "pareto_tokens_area", folder / "pareto_tokens_area.png",
                   xlabel=area, ylabel="tokens/s", title="Throughput against area"),
        plot_front(df, "area", "energy_per_token_uj", "pareto_energy_area", folder / "pareto_energy_area.png",
                   xlabel=area, ylabel="energy per token (uJ)", title="Energy per token against area"),
    ]
    if "perplexity" in df and df["perplexity"].notna().any():
        out.append(plot_front(df, "perplexity", "energy_per_token_uj", "pareto_energy_ppl",
                              folder / "pareto_energy_ppl.png", xlabel="perplexity (W2A4KV4 pipeline)",
                              ylabel="energy per token (uJ)", title="Co-design: energy per token against perplexity",
                              note=ppl_note))
    return out
