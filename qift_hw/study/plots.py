"""Plots of the level sets and of perplexity runs (matplotlib, headless): perplexity per level set, perplexity
against bits per weight and model MB with its Pareto front, per-layer sensitivity with the W2 layers, per-layer
residuals as small multiples, and weight kurtosis per module kind."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

from qift_hw.core.errors import QiftError
from qift_hw.core.io import save_figure


def plot_level_sets(rows: list[dict], sweep: dict, path: str | os.PathLike) -> Path:
    """Left: each 2-bit level set's levels normalised to its outer magnitude. Right: Gaussian MSE vs ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    two_bit = [r for r in rows if r["bits"] == 2]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for i, r in enumerate(two_bit):
        lv = r["levels"]
        if r["kind"] == "asym":
            lv = [x - 1.5 for x in lv]
        m = max(abs(x) for x in lv)
        ax1.scatter([x / m for x in lv], [i] * len(lv), s=40)
    ax1.set_yticks(range(len(two_bit)), [r["name"] for r in two_bit])
    ax1.axvline(0, color="grey", lw=0.5)
    ax1.set_xlabel("level / outer level")
    ax1.set_title("2-bit level sets")
    ax2.plot(sweep["ratios"], sweep["mse"], color="black", lw=1.5, label="{+-r, +-1}")
    for k, r in enumerate(x for x in two_bit if x["ratio"] is not None):
        ax2.scatter([r["ratio"]], [r["gaussian_mse"]], zorder=3)
        ax2.annotate(r["name"], (r["ratio"], r["gaussian_mse"]), textcoords="offset points",
                     xytext=(-10 + 14 * (k % 2), 8 + 12 * k), fontsize=8, arrowprops={"arrowstyle": "-", "lw": 0.5})
    ax2.axvspan(0.25, 0.33, color="green", alpha=0.1, label="paper's good range")
    ax2.set_xlabel("inner / outer ratio")
    ax2.set_ylabel("Gaussian MSE at the best scale")
    ax2.set_title(f"best ratio {sweep['best_ratio']:.3f}")
    ax2.legend()
    fig.tight_layout()
    written = save_figure(fig, path, dpi=120)
    plt.close(fig)
    return written


# --- perplexity-run pictures (`qift-hw report`) -------------------------------------------------------------------

SCALE_BITS = 32
"""Bits of one per-output-channel scale (float32), shared by the K weights of a row."""
FLOAT_BITS = 16
"""Bits of a weight left in floating point (FP runs, embeddings, an untied LM head)."""
OFF_SCALE = 100.0
"""Pareto points whose perplexity exceeds this factor times the best are left off the axis and named below it."""
KIND_ORDER = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | os.PathLike, dpi: int = 120) -> Path:
    import matplotlib.pyplot as plt

    written = save_figure(fig, path, dpi=dpi)
    plt.close(fig)
    return written


def code_bits(level_set: str | None) -> int:
    """Bits of one weight code of a level set; None (a float weight) counts FLOAT_BITS."""
    from qift_hw.core.levels import get_level_set

    return FLOAT_BITS if level_set is None else get_level_set(level_set).bits


def layer_level_sets(row: dict, layers: int) -> list[str | None]:
    """A result row's level set per decoder layer (None: float weights, as in FP runs)."""
    if row.get("kind") != "quant":
        return [None] * layers
    sets = row.get("layer_level_sets") or [row["levels"]] * layers
    if len(sets) != layers:
        raise QiftError(f"run {row.get('label')!r} has {len(sets)} per-layer level sets but the model has {layers} "
                        "layers; give the model the run used")
    return list(sets)


def bits_per_weight(sets: Sequence[str | None], shape: Any) -> float:
    """Stored bits per decoder-linear weight: code bits plus SCALE_BITS / K (one scale per output row of K weights)
    for a quantized linear, FLOAT_BITS for a float one, averaged over every linear weighted by its weights."""
    total = weights = 0
    for ls in sets:
        for _, k, n, _ in shape.linears():
            total += n * k * code_bits(ls) + (0 if ls is None else n * SCALE_BITS)
            weights += n * k
    return total / weights


def model_megabytes(sets: Sequence[str | None], shape: Any) -> float:
    """Stored model size (MB = 1e6 bytes): decoder linears at `bits_per_weight`, the embedding (and an untied LM
    head) at FLOAT_BITS; norms are left out (under 0.1 % of the weights)."""
    linear = shape.layers * shape.layer_params() * bits_per_weight(sets, shape)
    embed = (1 if shape.tied else 2) * shape.vocab * shape.hidden * FLOAT_BITS
    return (linear + embed) / 8e6


def _act(row: dict) -> str:
    a, kv = row.get("a_bits", 16), row.get("kv_bits", 16)
    return "A16" if a == 16 and kv == 16 else f"A{a}KV{kv}"


def _series(row: dict) -> str:
    """Legend group of a run on the Pareto plot: float, uniform W2/W3/W4, or mixed, and its activation setting."""
    if row["kind"] != "quant":
        return f"float W16 {_act(row)}"
    if "/" in row["weights"]:
        return f"mixed W2/W4 {_act(row)}"
    return f"{row['weights']} {_act(row)}"


def _metric(row: dict, task: str | None) -> float | None:
    """A run's perplexity (task None) or its accuracy on ``task`` (rows' ``tasks``: task name -> accuracy)."""
    v = row.get("ppl") if task is None else (row.get("tasks") or {}).get(task)
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def pareto_points(rows: list[dict], shape: Any, task: str | None = None) -> list[dict]:
    """Per run with a finite value (perplexity, or accuracy on ``task``): label, series, act, bits per weight, model
    MB, value and whether it is on the non-dominated front (fewer bits; lower perplexity or higher accuracy) of the
    runs with its activation setting."""
    import numpy as np

    from qift_hw.study.explore import pareto_mask

    pts = []
    for r in rows:
        value = _metric(r, task)
        if value is None:
            continue
        sets = layer_level_sets(r, shape.layers)
        pts.append({"label": r["label"], "series": _series(r), "act": _act(r), "method": r.get("method"),
                    "bits": bits_per_weight(sets, shape), "mb": model_megabytes(sets, shape), "value": value,
                    "front": False})
    for act in {p["act"] for p in pts}:
        group = [p for p in pts if p["act"] == act]
        mask = pareto_mask(np.array([[p["bits"], p["value"]] for p in group]), (False, task is not None))
        for p, on in zip(group, mask):
            p["front"] = bool(on)
    return pts


def plot_pareto(rows: list[dict], shape: Any, path: str | os.PathLike, task: str | None = None) -> Path | None:
    """Perplexity (or accuracy on ``task``) against bits per weight (bottom axis) and model MB (top axis; a linear
    map of the bits for one model), one non-dominated front per activation setting; perplexities far above the
    best are named below the axis, not drawn. None when no run has the value."""
    plt = _plt()
    pts = pareto_points(rows, shape, task)
    if not pts:
        return None
    best = min(p["value"] for p in pts)
    hidden = [p for p in pts if task is None and p["value"] > OFF_SCALE * best]
    shown = [p for p in pts if p not in hidden]
    acts = sorted({p["act"] for p in pts}, key=lambda a: (a != "A16", a))
    series = list(dict.fromkeys(p["series"].rsplit(" ", 1)[0] for p in sorted(pts, key=lambda p: -p["bits"])))
    markers = dict(zip(series, "s^Dvo<>ph"))
    colors = {a: f"C{i}" for i, a in enumerate(acts)}
    fig, ax = plt.subplots(figsize=(8.6, 4.6))
    for p in shown:
        kind = p["series"].rsplit(" ", 1)[0]
        ax.scatter(p["bits"], p["value"], marker=markers[kind], s=40 if p["front"] else 22, color=colors[p["act"]],
                   edgecolors="black" if p["front"] else "none", linewidths=0.9, alpha=1.0 if p["front"] else 0.55,
                   zorder=3)
    for act in acts:
        front = sorted((p["bits"], p["value"], p["label"]) for p in shown if p["act"] == act and p["front"])
        if front:
            ax.step([f[0] for f in front], [f[1] for f in front], where="post", color=colors[act], lw=1.0, zorder=2)
            for x, y, label in front:
                ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=6.5,
                            color=colors[act])
    if task is None:
        ax.set_yscale("log")
    ax.set_xscale("log", base=2)
    lo, hi = min(p["bits"] for p in pts), max(p["bits"] for p in pts)
    ticks = [t for t in (2, 3, 4, 6, 8, 16) if lo * 0.9 <= t <= hi * 1.1]
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("bits per decoder-linear weight (codes + one fp32 scale per output channel)")
    ax.set_ylabel("perplexity" if task is None else f"accuracy on {task}")
    ax.grid(True, which="both", alpha=0.25)
    per_bit = shape.layers * shape.layer_params() / 8e6
    base = (1 if shape.tied else 2) * shape.vocab * shape.hidden * FLOAT_BITS / 8e6
    top = ax.secondary_xaxis("top", functions=(lambda b: base + per_bit * b, lambda mb: (mb - base) / per_bit))
    top.set_xticks([round(base + per_bit * t) for t in ticks])
    from matplotlib.ticker import FuncFormatter, NullLocator

    top.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:.0f}"))
    top.xaxis.set_minor_locator(NullLocator())
    top.set_xlabel(f"model MB ({shape.name}; embedding in FP16)", fontsize=9)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], ls="", marker=markers[s], color="grey", label=s) for s in series]
    handles += [Line2D([], [], color=colors[a], marker="o", label=f"{a} (front)") for a in acts]
    fig.legend(handles=handles, loc="center right", fontsize=8, frameon=False)
    if hidden:
        names = ", ".join(sorted({p["label"].rsplit(" ", 1)[0] for p in hidden}))
        fig.text(0.01, 0.01, f"off the axis (perplexity > {OFF_SCALE:g} x best): {len(hidden)} runs ({names})",
                 fontsize=7, color="dimgray", wrap=True)
    fig.tight_layout(rect=(0, 0.05 if hidden else 0, 1 - 1.6 / fig.get_figwidth(), 1))
    return _save(fig, path)


def plot_sensitivity(rows: list[dict], path: str | os.PathLike) -> Path | None:
    """Per-layer sensitivity score of each run that chose its W2 layers by sensitivity, the layers it quantized to
    W2 highlighted; runs with the same scores and choice share a panel. None when no run has scores."""
    plt = _plt()
    panels: dict[tuple, list[str]] = {}
    for r in rows:
        if r.get("sensitivity"):
            key = (tuple(r["sensitivity"]), tuple(r.get("w2_layers") or ()))
            panels.setdefault(key, []).append(r["label"])
    if not panels:
        return None
    fig, axes = plt.subplots(len(panels), 1, figsize=(8.6, 2.6 * len(panels) + 0.6), squeeze=False)
    for ax, ((scores, w2), labels) in zip(axes[:, 0], panels.items()):
        colors = ["C3" if i in w2 else "C0" for i in range(len(scores))]
        ax.bar(range(len(scores)), scores, color=colors)
        ax.set_yscale("log")
        ax.set_ylabel("score e(W2) - e(W4)", fontsize=8)
        ax.set_title(f"{', '.join(labels)}: {len(w2)} of {len(scores)} layers at W2", fontsize=9)
        ax.set_xticks(range(0, len(scores), 2))
        ax.grid(axis="y", alpha=0.3)
    axes[-1, 0].set_xlabel("decoder layer")
    from matplotlib.patches import Patch

    fig.legend(handles=[Patch(color="C3", label="chosen for W2"), Patch(color="C0", label="kept at W4")],
               loc="upper right", fontsize=8, frameon=False, ncol=2)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return _save(fig, path)


def plot_residuals(rows: list[dict], path: str | os.PathLike) -> Path | None:
    """Relative output error per layer: one panel per (method, setting), one colour per level set with one shared
    legend beside the panels; ratio-sweep runs are thin grey lines. None when no run measured it."""
    plt = _plt()
    runs = [r for r in rows if r.get("layer_rel_error") and any(e is not None for e in r["layer_rel_error"])]
    if not runs:
        return None
    groups: dict[str, list[dict]] = {}
    for r in runs:
        groups.setdefault(f"{(r.get('method') or '').upper()} {r['setting']}", []).append(r)
    sets = list(dict.fromkeys(r["levels"] for r in runs if not str(r["levels"]).startswith("ratio:")))
    colors = {s: f"C{i % 10}" for i, s in enumerate(sets)}
    cols = min(2, len(groups))
    nrows = math.ceil(len(groups) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols + 1.8, 2.7 * nrows + 0.4), squeeze=False,
                             sharex=True)
    for ax, (title, part) in zip(axes.flat, groups.items()):
        for r in part:
            errs = r["layer_rel_error"]
            xs = [i for i, e in enumerate(errs) if e is not None]
            ratio = str(r["levels"]).startswith("ratio:")
            ax.plot(xs, [errs[i] for i in xs], lw=0.7 if ratio else 1.2, color="0.7" if ratio else colors[r["levels"]],
                    marker=None if ratio else ".", ms=3, zorder=1 if ratio else 2)
        w2 = [set(r.get("w2_layers") or ()) for r in part if "/" in r["weights"]]
        for i in sorted(set.intersection(*w2)) if w2 else ():
            ax.axvspan(i - 0.5, i + 0.5, color="C3", alpha=0.07, lw=0)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(groups):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("||WX-QX|| / ||WX||", fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("decoder layer")
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Line2D([], [], color=colors[s], marker=".", label=s) for s in sets]
    if any(str(r["levels"]).startswith("ratio:") for r in runs):
        handles.append(Line2D([], [], color="0.7", lw=0.7, label="ratio:r sweep"))
    if any("/" in r["weights"] for r in runs):
        handles.append(Patch(color="C3", alpha=0.15, label="W2 layers (mixed)"))
    fig.legend(handles=handles, loc="center right", fontsize=8, frameon=False, title="level set", title_fontsize=8)
    fig.suptitle("Relative output error per layer (mean over the layer's linears)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1 - 1.7 / fig.get_figwidth(), 0.96))
    return _save(fig, path)


def plot_ppl(rows: list[dict], path: str | os.PathLike) -> Path | None:
    """Perplexity per level set through `spec_plots.plot_levels` (one picture for single runs and seeded specs):
    GPTQ on a linear axis, RTN beside it on a log axis, FP and integer references as lines. Rows need a
    ``setting``; ratio-sweep runs are left to the ratio plot."""
    import pandas as pd

    from qift_hw.study.spec_plots import plot_levels

    keep = [r for r in rows if r.get("ppl") is not None and math.isfinite(r["ppl"])
            and not str(r.get("levels")).startswith("ratio:")]
    agg = pd.DataFrame([{"label": r["label"], "kind": r["kind"], "levels": r.get("levels"), "method": r.get("method"),
                         "setting": r["setting"], "mean": r["ppl"], "std": math.nan, "calib_tokens": None}
                        for r in keep])
    return plot_levels(agg, path) if len(agg) else None


def _box_kind(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def plot_kurtosis(modules: list[dict], path: str | os.PathLike, states: Sequence[str]) -> Path:
    """|excess kurtosis| of every decoder linear as box plots per module kind and state (whole tensor, and each
    row standardized), on a log axis: what the rotation does to each kind's outliers."""
    plt = _plt()
    kinds = [k for k in KIND_ORDER if any(_box_kind(m["name"]) == k for m in modules)]
    kinds += sorted({_box_kind(m["name"]) for m in modules} - set(kinds))
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.4), sharey=False)
    width = 0.8 / len(states)
    panels = (("excess_kurtosis", "whole tensor"), ("row_excess_kurtosis", "each row standardized"))
    for ax, (key, title) in zip(axes, panels):
        for j, state in enumerate(states):
            data = [[max(abs(m[state][key]), 1e-4) for m in modules if _box_kind(m["name"]) == k] for k in kinds]
            pos = [i + (j - (len(states) - 1) / 2) * width for i in range(len(kinds))]
            ax.boxplot(data, positions=pos, widths=width * 0.85, patch_artist=True, showfliers=True,
                       boxprops={"facecolor": f"C{j}", "alpha": 0.75}, medianprops={"color": "black"},
                       flierprops={"marker": ".", "ms": 3, "markeredgecolor": f"C{j}"})
        ax.set_xticks(range(len(kinds)), [k.replace("_proj", "") for k in kinds])
        ax.set_yscale("log")
        ax.set_ylabel("|excess kurtosis|")
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    from matplotlib.patches import Patch

    fig.legend(handles=[Patch(color=f"C{j}", alpha=0.75, label=s) for j, s in enumerate(states)],
               loc="center right", fontsize=9, frameon=False)
    fig.suptitle(f"Weight kurtosis per module kind ({len(modules)} decoder linears), before and after rotation",
                 fontsize=11)
    fig.tight_layout(rect=(0, 0, 1 - 1.2 / fig.get_figwidth(), 0.95))
    return _save(fig, path, dpi=110)
