"""Weight statistics of every decoder linear before and after the QuaRot rotation (the `analyze` study).

`analyze_weights` loads nothing and writes nothing: it takes a model, measures it original, norm-fused and rotated,
and returns the result dict and the Q-Q points; `write_analysis` writes stats.json, stats.md, stats.csv and plots.
"""

from __future__ import annotations

from pathlib import Path

STATES = ("original", "fused", "rotated")


def collect_stats(model, state: str, rows: dict, progress: bool) -> None:
    """Weight statistics of every decoder linear of ``model`` into ``rows[name][state]``."""
    from tqdm.auto import tqdm

    from qift_hw.algo.models import iter_linears
    from qift_hw.algo.stats import weight_stats

    for name, lin in tqdm(iter_linears(model), desc=f"stats ({state})", unit="module", disable=not progress):
        rows.setdefault(name, {"name": name, "shape": list(lin.weight.shape)})[state] = weight_stats(lin.weight)


def plot_analysis(rows: list[dict], qq: dict, example: str, out: Path) -> list[Path]:
    """kurtosis.png (box plots per module kind and state, `plot_kurtosis`) and qq.png (Q-Q plot of ``example``)
    in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from qift_hw.core.io import save_figure
    from qift_hw.study.plots import plot_kurtosis

    written = [plot_kurtosis(rows, out / "kurtosis.png", STATES)]
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


def qq_pair(w) -> dict:
    """Q-Q points of a weight, whole tensor and rows standardized."""
    from qift_hw.algo.stats import qq_points, row_standardized

    return {"tensor": qq_points(w), "row": qq_points(row_standardized(w))}


def summary_lines(s: dict) -> str:
    """Median statistics original -> rotated as Markdown bullet lines."""
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


def analyze_weights(net, rotation_seed: int, example: str | None = None, progress: bool = False) -> tuple[dict, dict]:
    """Statistics of ``net`` (changed in place: norms fused, rotated) in the three states, and the Q-Q points of
    ``example`` (default: the module with the highest kurtosis before rotation)."""
    import torch

    from qift_hw.algo.models import iter_linears
    from qift_hw.algo.rotation import check_rotatable, fuse_norms, rotate_model
    from qift_hw.algo.stats import summarize, summarize_by_kind
    from qift_hw.core.errors import QiftError

    check_rotatable(net)
    linears = dict(iter_linears(net))
    names = list(linears)
    if example is not None and example not in linears:
        raise QiftError(f"--example {example} is not a decoder linear; e.g. {names[0]}")
    rows: dict = {}
    qq: dict = {}
    with torch.no_grad():
        collect_stats(net, "original", rows, progress)
        if example is None:
            example = max(names, key=lambda n: rows[n]["original"]["excess_kurtosis"])
        for mode, pts in qq_pair(linears[example].weight).items():
            qq[("original", mode)] = pts
        fuse_norms(net)
        collect_stats(net, "fused", rows, progress)
        info = rotate_model(net, seed=rotation_seed)
        collect_stats(net, "rotated", rows, progress)
        for mode, pts in qq_pair(dict(iter_linears(net))[example].weight).items():
            qq[("rotated", mode)] = pts
    table = [rows[n] for n in names]
    result = {
        "rotation": info.to_dict(),
        "example_module": example,
        "summary": {"original_vs_rotated": summarize(table, "original", "rotated"),
                    "fused_vs_rotated": summarize(table, "fused", "rotated")},
        "by_kind": summarize_by_kind(table, STATES),
        "modules": table,
    }
    return result, qq


def csv_rows(modules: list[dict]) -> list[dict]:
    """One flat row per module: name, shape and every statistic as ``<state>_<stat>``."""
    out = []
    for m in modules:
        row = {"name": m["name"], "shape": "x".join(map(str, m["shape"]))}
        for state in STATES:
            row.update({f"{state}_{k}": v for k, v in m[state].items()})
        out.append(row)
    return out


def write_analysis(result: dict, qq: dict, out: Path) -> tuple[str, list[Path]]:
    """stats.json, stats.md, stats.csv and the plots in ``out``; returns the summary head and the paths."""
    from qift_hw.algo.stats import markdown_table
    from qift_hw.core.io import write_json, write_text
    from qift_hw.core.provenance import provenance_line, write_csv

    out = Path(out)
    s = result["summary"]["original_vs_rotated"]
    head = (
        f"# Weight statistics: {result['model']} (rotation seed {result['rotation']['seed']})\n\n"
        f"{s['modules']} decoder linear modules. Median over modules, original -> rotated:\n\n"
        + summary_lines(s)
    )
    md = (
        head
        + "\n## Median per module kind (original, norm-fused, rotated)\n\n"
        + markdown_table(result["by_kind"], STATES, label="kind")
        + "\n## Every module\n\n"
        + markdown_table(result["modules"], STATES)
    )
    if "provenance" in result:
        md += "\n" + provenance_line(result["provenance"]) + "\n"
    paths = [write_json(out / "stats.json", result), write_text(out / "stats.md", md),
             write_csv(out / "stats.csv", csv_rows(result["modules"]))]
    paths += plot_analysis(result["modules"], qq, result["example_module"], out)
    return head, paths
