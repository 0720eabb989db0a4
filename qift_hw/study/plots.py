"""Plots of the level sets (matplotlib, headless)."""

from __future__ import annotations

import os

from pathlib import Path

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
