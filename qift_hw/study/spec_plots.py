"""Plots of a run spec's aggregate (matplotlib, headless), error bars = one standard deviation over seeds.

`ppl_levels.png`: perplexity per 2-bit level set, one panel per weight quantizer (GPTQ on a linear axis of its
own, so its differences stay visible; RTN, whose W2 perplexities reach 1e8, beside it, on a log axis when its
values span more than a factor of 20), one series
per setting (W2A16, W2A4KV4, mixed); FP and the W4/W3 references as dashed lines. `calib_curve.png`: perplexity
against calibration tokens, one line per level set and setting, when the spec varies the calibration size; when
its values span more than a factor of 20 the axis is logarithmic and the bars run from the smallest to the largest
seed (a standard deviation bar would cross zero there).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from qift_hw.core.io import save_figure

REF_STYLES = ("--", ":", "-.", (0, (5, 1, 1, 1)), (0, (1, 1)))
METHOD_ORDER = ("gptq", "rtn")
LOG_SPAN = 20.0
"""The RTN panel (its means) and the calibration curve (its seeds) turn logarithmic beyond this factor."""


def _err(part: Any) -> list[float]:
    return [0.0 if math.isnan(s) else s for s in part["std"].astype(float)]


def _is_ref(agg: Any) -> Any:
    return (agg["kind"] != "quant") | agg["levels"].astype(str).str.startswith("int")


def _largest_calib(q: Any) -> Any:
    """The rows at each (method, setting, levels)'s largest calibration size (the level-set plot's points)."""
    if q.empty:
        return q
    tokens = q["calib_tokens"].fillna(0)
    top = tokens.groupby([q["method"], q["setting"], q["levels"]]).transform("max")
    return q[tokens == top]


def plot_levels(agg: Any, path: str | Path) -> Path | None:
    """Perplexity per level set with error bars (see the module docstring); None when there is no W2 point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    q = _largest_calib(agg[~_is_ref(agg)])
    if q.empty:
        return None
    refs = agg[_is_ref(agg)]
    methods = [m for m in METHOD_ORDER if m in set(q["method"])]
    levels = list(dict.fromkeys(q["levels"]))
    settings = list(dict.fromkeys(q["setting"]))
    fig, axes = plt.subplots(1, len(methods), figsize=(1.2 + 0.9 * len(levels) * len(methods) + 2, 4.2),
                             squeeze=False)
    width = 0.8 / max(1, len(settings))
    for ax, method in zip(axes[0], methods):
        part = q[q["method"] == method]
        for k, st in enumerate(settings):
            s = part[part["setting"] == st]
            if s.empty:
                continue
            x = [levels.index(lv) + (k - (len(settings) - 1) / 2) * width for lv in s["levels"]]
            ax.errorbar(x, s["mean"], yerr=_err(s), fmt="o", capsize=3, label=st)
        mref = refs[(refs["kind"] != "quant") | (refs["method"] == method)]
        for j, (_, r) in enumerate(mref.iterrows()):
            name = r["label"] if r["kind"] != "quant" else f"{r['levels']} {r['setting']}"
            ax.axhline(r["mean"], color="grey", lw=0.9, ls=REF_STYLES[j % len(REF_STYLES)],
                       label=f"{name} {r['mean']:.1f}")
        ax.set_xticks(range(len(levels)), levels, rotation=30)
        span = part["mean"].max() / max(part["mean"].min(), 1e-9)
        log = method == "rtn" and span > LOG_SPAN
        ax.set_title(f"{method.upper()}" + (" (log axis)" if log else ""))
        if log:
            ax.set_yscale("log")
        ax.set_ylabel("perplexity (mean +- std over seeds)" if part["std"].notna().any() else "perplexity (one run)")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.tight_layout()
    out = save_figure(fig, path, dpi=130)
    plt.close(fig)
    return out


def plot_calibration(agg: Any, path: str | Path) -> Path | None:
    """Perplexity against calibration tokens (log2 axis) with error bars; None unless some point has several
    calibration sizes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    q = agg[~_is_ref(agg)].dropna(subset=["calib_tokens"])
    series = [(key, part.sort_values("calib_tokens")) for key, part in q.groupby(["method", "setting", "levels"],
                                                                                 sort=False)]
    series = [(k, p) for k, p in series if p["calib_tokens"].nunique() > 1]
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    lows = [v for _, p in series for v in p["min"].astype(float) if v > 0]
    log = bool(lows) and max(v for _, p in series for v in p["max"].astype(float)) / min(lows) > LOG_SPAN
    for (method, st, lv), part in series:
        yerr = [(part["mean"] - part["min"]).fillna(0), (part["max"] - part["mean"]).fillna(0)] if log \
            else _err(part)
        ax.errorbar(part["calib_tokens"], part["mean"], yerr=yerr, marker="o", capsize=3,
                    label=f"{lv} {method} {st}")
    ax.set_xscale("log", base=2)
    if log:
        ax.set_yscale("log")
    ticks = sorted({int(t) for _, part in series for t in part["calib_tokens"]})
    ax.set_xticks(ticks, [f"{t:,}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("calibration tokens (windows x seqlen)")
    ax.set_ylabel("perplexity (mean, bars min..max over seeds; log axis)" if log
                  else "perplexity (mean +- std over seeds)")
    ax.grid(alpha=0.3, which="both" if log else "major")
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    out = save_figure(fig, path, dpi=130)
    plt.close(fig)
    return out


def plot_run(agg: Any, folder: str | Path) -> list[Path]:
    """The plots that the aggregate has data for."""
    folder = Path(folder)
    made = [plot_levels(agg, folder / "ppl_levels.png"), plot_calibration(agg, folder / "calib_curve.png")]
    return [p for p in made if p is not None]
