"""Plots of an accelerator estimate (matplotlib, headless): roofline, breakdown by layer kind, design sweeps.

Each function takes the rows `study.accel_report` collects (layers.csv and summary.csv columns) and saves one PNG.
Formats are told apart by colour, phases by marker or panel, so legends stay short.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from qift_hw.core.errors import QiftError
from qift_hw.core.io import save_figure
from qift_hw.core.levels import get_level_set

KINDS = ("linear", "lm_head", "attention", "hadamard")
KIND_COLOURS = {"linear": "#4472c4", "lm_head": "#70ad47", "attention": "#ed7d31", "hadamard": "#a5a5a5"}
PHASE_MARKERS = {"prefill": "o", "decode": "^", "gemm": "s"}


def format_label(name: str) -> str:
    """``pot_mnz`` -> ``W2 pot_mnz`` (a layer map's label as it is)."""
    try:
        return f"W{get_level_set(name).bits} {name}"
    except QiftError:
        return name


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colours(formats: Sequence[str]) -> dict[str, str]:
    palette = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666"]
    return {f: palette[i % len(palette)] for i, f in enumerate(formats)}


def _save(fig, path: str | os.PathLike) -> Path:
    plt = _plt()
    fig.tight_layout()
    written = save_figure(fig, path, dpi=120)
    plt.close(fig)
    return written


def plot_roofline(layers: list[dict], formats: Sequence[str], peak_macs: float, dram_bytes_per_cycle: float,
                  title: str, path: str | os.PathLike) -> Path:
    """Every GEMM row as a point: arithmetic intensity (MACs per DRAM byte) against achieved MACs per cycle, under
    the compute roof (array cells) and the DRAM slope (bytes per cycle x intensity)."""
    plt = _plt()
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(7.5, 5))
    colours = _colours(formats)
    xs = []
    phases = []
    for r in layers:
        macs = r["M"] * r["K"] * r["N"]
        dram = sum(r.get(k, 0) or 0 for k in ("dram_act_read_bytes", "dram_weight_read_bytes", "dram_kv_read_bytes",
                                               "dram_out_write_bytes", "dram_kv_write_bytes"))
        if r["kind"] == "hadamard" or macs == 0 or dram <= 0 or r["total_cycles"] <= 0:
            continue
        x, y = macs / dram, macs / r["total_cycles"]
        xs.append(x)
        if r["phase"] not in phases:
            phases.append(r["phase"])
        ax.scatter([x], [y], s=28, color=colours.get(r["format"], "black"), marker=PHASE_MARKERS.get(r["phase"], "o"),
                   alpha=0.8, edgecolors="none", zorder=3)
    if xs:
        lo, hi = min(xs) / 3, max(xs) * 3
        ridge = peak_macs / dram_bytes_per_cycle
        lo, hi = min(lo, ridge / 10), max(hi, ridge * 10)
        ax.plot([lo, ridge, hi], [dram_bytes_per_cycle * lo, peak_macs, peak_macs], color="black", lw=1.2)
        ax.annotate(f"compute roof {peak_macs:,.0f} MACs/cycle", (hi, peak_macs), xytext=(-4, 4),
                    textcoords="offset points", ha="right", va="bottom", fontsize=8)
        ax.annotate(f"DRAM {dram_bytes_per_cycle:.3g} B/cycle", (lo, dram_bytes_per_cycle * lo), xytext=(4, 6),
                    textcoords="offset points", fontsize=8, rotation=0)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (MACs per DRAM byte)")
    ax.set_ylabel("achieved MACs per cycle")
    ax.set_title(title, fontsize=10)
    handles = [Line2D([], [], ls="", marker="s", color=colours[f], label=format_label(f)) for f in formats]
    handles += [Line2D([], [], ls="", marker=PHASE_MARKERS.get(p, "o"), color="grey", label=p) for p in phases]
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
    ax.grid(True, which="major", lw=0.3, alpha=0.5)
    return _save(fig, path)


def plot_breakdown(layers: list[dict], formats: Sequence[str], phases: Sequence[str], tokens: dict,
                   path: str | os.PathLike) -> Path:
    """Stacked bars per format, one panel per (quantity, phase): cycles and energy per token by layer kind.
    ``tokens[(format, phase)]``: tokens the phase produces (to divide by)."""
    plt = _plt()
    fig, axes = plt.subplots(2, len(phases), figsize=(3.6 * len(phases) + 1.6, 6.2), squeeze=False)
    for j, phase in enumerate(phases):
        for i, (key, unit, scale) in enumerate((("total_cycles_all", "cycles per token", 1.0),
                                                ("energy_pj_all", "energy per token (uJ)", 1e-6))):
            ax = axes[i][j]
            bottom = [0.0] * len(formats)
            for kind in KINDS:
                vals = []
                for f in formats:
                    tok = tokens.get((f, phase)) or 1
                    vals.append(sum((r.get(key) or 0) for r in layers if r["format"] == f and r["phase"] == phase
                                    and r["kind"] == kind) * scale / tok)
                if any(vals):
                    ax.bar(range(len(formats)), vals, bottom=bottom, color=KIND_COLOURS[kind],
                           label=kind if (i, j) == (0, 0) else None, width=0.6)
                    bottom = [b + v for b, v in zip(bottom, vals)]
            ax.set_xticks(range(len(formats)), [format_label(f) for f in formats], fontsize=8, rotation=20 if len(formats) > 3 else 0)
            ax.set_title(f"{phase}: {unit}", fontsize=9)
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
    fig.legend(loc="upper center", ncol=len(KINDS), fontsize=8, frameon=False, bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    written = save_figure(fig, path, dpi=120)
    plt.close(fig)
    return written


def plot_sweeps(sweeps: dict, formats: Sequence[str], phases: Sequence[str], marks: dict,
                path: str | os.PathLike) -> Path:
    """Tokens/s against array size (left) and DRAM bandwidth (right), one line per format, solid prefill and dashed
    decode; ``marks``: the estimate's own array size and bandwidth (dotted vertical lines)."""
    plt = _plt()
    from matplotlib.lines import Line2D
    from matplotlib.ticker import ScalarFormatter

    colours = _colours(formats)
    styles = {"prefill": "-", "decode": "--", "gemm": "-"}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (key, xlabel) in zip(axes, (("array", "array size (rows = cols)"), ("dram_gbps", "DRAM GB/s"))):
        rows = sweeps.get(key, [])
        for f in formats:
            for p in phases:
                pts = sorted((r["sweep_value"], r["tokens_per_s"]) for r in rows if r["format"] == f and r["phase"] == p)
                if pts:
                    ax.plot([x for x, _ in pts], [y for _, y in pts], styles.get(p, "-"), marker=".",
                            color=colours[f])
        if marks.get(key):
            ax.axvline(marks[key], color="grey", lw=0.8, ls=":")
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("tokens/s")
        ax.grid(True, which="major", lw=0.3, alpha=0.5)
    handles = [Line2D([], [], color=colours[f], label=format_label(f)) for f in formats]
    handles += [Line2D([], [], color="grey", ls=styles.get(p, "-"), label=p) for p in phases]
    axes[1].legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
    axes[0].set_title("tokens/s against array size", fontsize=10)
    axes[1].set_title("tokens/s against DRAM bandwidth", fontsize=10)
    return _save(fig, path)
