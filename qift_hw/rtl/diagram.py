"""Block diagram of the RTL (PE array, sign-and-shift PE, Hadamard unit), drawn with matplotlib for docs/rtl.md."""

from __future__ import annotations

from pathlib import Path

from qift_hw.core.io import save_figure


def _box(ax, x, y, w, h, text, color="#eef3fb", edge="#2c3e50", size=8, weight="normal"):
    from matplotlib.patches import FancyBboxPatch

    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02", fc=color, ec=edge, lw=1.2))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size, weight=weight)


def _arrow(ax, x0, y0, x1, y1, text="", color="#2c3e50", size=7, offset=(0, 0)):
    ax.annotate("", xy=(x1, y1), xytext=(x0, y0), arrowprops=dict(arrowstyle="->", color=color, lw=1.1))
    if text:
        ax.text((x0 + x1) / 2 + offset[0], (y0 + y1) / 2 + offset[1], text, fontsize=size, color=color,
                ha="center", va="center")


def _array_panel(ax) -> None:
    ax.set_title("(a) R x C PE array, weight-stationary pass", fontsize=10)
    R = C = 3
    s, g = 1.6, 0.5
    for r in range(R):
        for c in range(C):
            x, y = 1.5 + c * (s + g), 6.5 - r * (s + g)
            _box(ax, x, y, s, s, f"PE({r},{c})\nwreg: code\nareg  preg\novf  pv", size=7)
            if c < C - 1:
                _arrow(ax, x + s, y + s * 0.65, x + s + g, y + s * 0.65)
            if r < R - 1:
                _arrow(ax, x + s * 0.5, y, x + s * 0.5, y - g)
        _arrow(ax, 0.1, 6.5 - r * (s + g) + s * 0.65, 1.5, 6.5 - r * (s + g) + s * 0.65,
               f"a_in[{r}]\n(skew +{r})", offset=(0, 0.35))
    for c in range(C):
        x = 1.5 + c * (s + g) + s * 0.5
        _arrow(ax, x, 9.3, x, 6.5 + s, f"w_in[{c}]\np_in[{c}]\npv_in", offset=(0.5, 0.2))
        _arrow(ax, x, 6.5 - (R - 1) * (s + g), x, 1.3, f"p_out[{c}]\novf_out\npv_out", offset=(0.55, -0.1))
    ax.text(0.1, 0.05, "en = 0 stalls every register; R load cycles (w_load), then M+R+C-1 stream cycles.\n"
            "Output (m, c) on p_out[c] at stream cycle m+R+c. OS pass: accumulators stay, codes move down,\n"
            "then R drain cycles shift results out bottom-first (out_valid).", fontsize=7, va="bottom")
    ax.set_xlim(0, 8.2)
    ax.set_ylim(0, 10.6)


def _pe_panel(ax) -> None:
    ax.set_title("(b) sign-and-shift PE (PoT-MNZ)", fontsize=10)
    _box(ax, 0.3, 6.8, 1.6, 0.9, "a (INT4)", "#fdf2e9")
    _box(ax, 0.3, 4.6, 1.6, 0.9, "code w[1:0]", "#fdf2e9")
    _box(ax, 2.7, 6.6, 2.0, 1.3, "mux\na  |  a << 2\n(sel w[0])")
    _box(ax, 5.4, 6.6, 1.5, 1.3, "XOR\nsign w[1]")
    _box(ax, 7.5, 6.3, 1.9, 1.9, "adder\nacc + t ^ s\n+ carry-in s")
    _box(ax, 7.5, 3.7, 1.9, 1.4, "saturate\nto acc_bits\n(ovf |= clamp)")
    _box(ax, 7.5, 1.3, 1.9, 1.4, "acc reg\n+ ovf (sticky)", "#e8f8f5")
    _arrow(ax, 1.9, 7.25, 2.7, 7.25)
    _arrow(ax, 4.7, 7.25, 5.4, 7.25)
    _arrow(ax, 6.9, 7.25, 7.5, 7.25)
    _arrow(ax, 1.9, 5.05, 3.7, 6.6, "bit 0", offset=(-0.3, 0.1))
    _arrow(ax, 1.9, 5.05, 6.15, 6.6, "bit 1 (sign)", offset=(0.6, -0.35))
    _arrow(ax, 8.45, 6.3, 8.45, 5.1)
    _arrow(ax, 8.45, 3.7, 8.45, 2.7)
    ax.annotate("", xy=(9.4, 7.0), xytext=(9.4, 2.0),
                arrowprops=dict(arrowstyle="->", color="#2c3e50", lw=1.1, connectionstyle="arc3,rad=0.35"))
    ax.text(9.95, 4.5, "acc", fontsize=7, rotation=90, va="center")
    ax.text(0.3, 0.2, "MNZ: a | a + (a << 1); std: 0 | a | a << 1 by code.\nNo multiplier: INT4xINT4 and INT8xINT8 "
            "baselines\nuse the same ports with a * w.", fontsize=7)
    ax.set_xlim(0, 10.3)
    ax.set_ylim(0, 9)


def _hadamard_panel(ax) -> None:
    ax.set_title("(c) Hadamard unit, n = K x 2^k lanes", fontsize=10)
    _box(ax, 0.2, 3.5, 1.5, 2.0, "x[0..n-1]\n16-bit\nmantissas\n+ x_valid", "#fdf2e9")
    xs = [2.3, 4.0, 5.7]
    labels = ["butterfly\nstride 1\n(+/-, +1 bit)", "butterfly\nstride 2", "... stride\n2^(k-1)"]
    for x, lab in zip(xs, labels):
        _box(ax, x, 3.5, 1.4, 2.0, lab + "\n[reg]", size=7)
    _box(ax, 7.4, 3.5, 1.6, 2.0, "K x K +-1\nrow sums\n(H_K, adds)\n[reg]", size=7)
    _box(ax, 9.5, 3.5, 2.6, 2.0, "INT4 quantizer (4 stages)\nmax|y| -> s = fp32(fp32(A c)/7)\n"
         "8 integer thresholds\nq = clamp(rne(y/s)) per lane\n[reg]", "#fdebd0", size=7)
    _box(ax, 12.6, 3.5, 1.5, 2.0, "q[0..n-1]\nINT4\n+ s (FP32)\n+ exponent", "#e8f8f5")
    for a, b in ((1.7, 2.3), (3.7, 4.0), (5.4, 5.7), (7.1, 7.4), (9.0, 9.5), (12.1, 12.6)):
        _arrow(ax, a, 4.5, b, 4.5)
    ax.text(9.05, 4.75, "y", fontsize=7)
    ax.text(0.2, 1.3, "One vector per cycle; latency k (+1 if K > 1) + 4 cycles; en stalls the pipeline. Width grows "
            "k + ceil(log2 K) bits (formats.had_out_bits).\nThe quantizer is bit-exact to formats.had_output_quant "
            "with integer logic only; 1/sqrt(n) and the block exponent are applied where the scale is used.",
            fontsize=7)
    ax.set_xlim(0, 14.3)
    ax.set_ylim(0.9, 5.8)


def draw(path: Path) -> Path:
    """Draw the three-panel block diagram to ``path`` (PNG, written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(13, 8.5))
    grid = fig.add_gridspec(2, 2, height_ratios=[1.4, 0.6])
    panels = [fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1]), fig.add_subplot(grid[1, :])]
    _array_panel(panels[0])
    _pe_panel(panels[1])
    _hadamard_panel(panels[2])
    for ax in panels:
        ax.set_xticks([])
        ax.set_yticks([])
        for sp in ax.spines.values():
            sp.set_visible(False)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return Path(path)
