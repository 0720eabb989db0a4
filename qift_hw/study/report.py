"""Results tables (Markdown + JSON) and plots for perplexity runs and GPTQ residuals.

A result row is a plain dict: label, kind (fp / rotated_fp / quant), levels, method, weights (e.g. "W2",
"W4", "W2[first:15]/W4"), a_bits, kv_bits, ppl, mean_rel_error, layer_rel_error (list per layer), seconds and
the full config. `write_report` writes `results.json` (with the provenance record), `results.md`, `results.csv`
and the plots into one folder.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import shutil
import sys
from pathlib import Path

from qift_hw.core.errors import QiftError
from qift_hw.core.io import LOCK_NAME, lock_folder, save_figure, write_json, write_text
from qift_hw.core.levels import TWO_BIT_SETS
from qift_hw.core.provenance import provenance, provenance_line, write_csv


def _fmt(x, digits: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf"
        if abs(x) >= 1e4:
            return f"{x:.3g}"
        return f"{x:.{digits}f}"
    return str(x)


def setting_of(row: dict) -> str:
    """Column name of a row's precision setting, e.g. W2A16, W2A4KV4, W2[first:15]/W4 A4KV4."""
    a = "A16" if row.get("a_bits", 16) == 16 else f"A{row['a_bits']}"
    kv = "" if row.get("kv_bits", 16) == 16 else f"KV{row['kv_bits']}"
    return f"{row['weights']}{a}{kv}"


def markdown_rows(rows: list[dict]) -> str:
    """One line per run: setting, level set, method, perplexity, mean GPTQ residual, time."""
    head = "| run | setting | level set | method | ppl | mean rel. output error | seconds |\n|---|---|---|---|---:|---:|---:|\n"
    lines = []
    for r in rows:
        lines.append(
            f"| {r['label']} | {setting_of(r)} | {r.get('levels') or '-'} | {r.get('method') or '-'} | "
            f"{_fmt(r.get('ppl'))} | {_fmt(r.get('mean_rel_error'), 3)} | {_fmt(r.get('seconds'), 0)} |"
        )
    return head + "\n".join(lines) + "\n"


def pivot_table(rows: list[dict]) -> str:
    """Level sets down, (setting, method) across: the paper-style perplexity grid of the quantized runs."""
    quant = [r for r in rows if r["kind"] == "quant" and r.get("levels") in TWO_BIT_SETS]
    cols: list[tuple[str, str]] = []
    for r in quant:
        key = (setting_of(r), r["method"])
        if key not in cols:
            cols.append(key)
    if not cols:
        return ""
    settings = list(dict.fromkeys(c[0] for c in cols))
    cols.sort(key=lambda c: (settings.index(c[0]), {"rtn": 0, "gptq": 1}.get(c[1], 2)))
    cells = {(r["levels"], setting_of(r), r["method"]): r["ppl"] for r in quant}
    levels = [ls for ls in TWO_BIT_SETS if any(k[0] == ls for k in cells)]
    head = "| level set | " + " | ".join(f"{s} {m.upper()}" for s, m in cols) + " |\n"
    head += "|---|" + "---:|" * len(cols) + "\n"
    body = []
    for ls in levels:
        vals = [cells.get((ls, s, m)) for s, m in cols]
        body.append(f"| {ls} | " + " | ".join(_fmt(v) for v in vals) + " |")
    return head + "\n".join(body) + "\n"


def residual_table(rows: list[dict]) -> str:
    """Mean relative output error ||WX-QX||/||WX|| over each run's W2 layers, and its worst layer."""
    runs = [r for r in rows if r.get("layer_rel_error")]
    if not runs:
        return ""
    head = "| run | setting | mean over layers | min layer | max layer (index) |\n|---|---|---:|---:|---:|\n"
    lines = []
    for r in runs:
        errs = [(i, e) for i, e in enumerate(r["layer_rel_error"]) if e is not None]
        if not errs:
            continue
        worst = max(errs, key=lambda t: t[1])
        lines.append(f"| {r['label']} | {setting_of(r)} | {_fmt(r['mean_rel_error'], 3)} | "
                     f"{_fmt(min(e for _, e in errs), 3)} | {_fmt(worst[1], 3)} ({worst[0]}) |")
    return head + "\n".join(lines) + "\n"


def render_markdown(rows: list[dict], meta: dict) -> str:
    """The whole report as Markdown."""
    parts = [f"# {meta.get('title', 'qift-hw results')}\n"]
    if meta.get("command"):
        parts.append(f"Command: `{meta['command']}`\n")
    info = {k: v for k, v in meta.items() if k not in ("title", "command")}
    if info:
        parts.append("\n".join(f"- {k}: {v}" for k, v in info.items()) + "\n")
    parts.append("## All runs\n\n" + markdown_rows(rows))
    grid = pivot_table(rows)
    if grid:
        parts.append("## Perplexity by level set\n\n" + grid)
    res = residual_table(rows)
    if res:
        parts.append("## GPTQ residuals (relative output error per linear, averaged per layer)\n\n" + res)
    return "\n".join(parts)


def plot_ratio_sweep(rows: list[dict], path: str | os.PathLike) -> Path:
    """Perplexity against the inner/outer ratio of the symmetric set {+-r, +-1}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = sorted((r["ratio"], r["ppl"], r["method"]) for r in rows if r.get("ratio") is not None)
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in sorted({m for _, _, m in pts}):
        xs = [x for x, _, m in pts if m == method]
        ys = [y for _, y, m in pts if m == method]
        ax.plot(xs, ys, marker="o", label=method)
    ax.axvspan(0.25, 0.33, color="green", alpha=0.1, label="paper's good range")
    ax.set_xlabel("inner / outer ratio")
    ax.set_ylabel("perplexity")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    written = save_figure(fig, path, dpi=120)
    plt.close(fig)
    return written


MERGE_KEYS = ("model", "text", "eval_windows", "seqlen", "device")
"""Meta fields that must agree for runs to share one table (the same model, tokens and device)."""
SAME_RUN_FIELDS = ("ppl", "mean_rel_error", "layer_rel_error")
"""Row fields compared when a run is seen in two results files (a difference is reported)."""


def merge_results(parts: list[dict]) -> tuple[list[dict], dict]:
    """Rows and meta of several results files ({"meta", "rows"}) as one table.

    Runs must share MERGE_KEYS (else QiftError naming the field); a run (label and config) seen twice is kept once,
    the first time, with a warning on stderr when its results (SAME_RUN_FIELDS) differ between the files. The merged meta keeps the shared fields and lists each part's command.
    """
    if not parts:
        raise QiftError("no results to merge")
    ref = parts[0].get("meta", {})
    for i, part in enumerate(parts[1:], start=2):
        meta = part.get("meta", {})
        for k in MERGE_KEYS:
            if meta.get(k) != ref.get(k):
                raise QiftError(f"results {i} has {k}={meta.get(k)!r} but results 1 has {ref.get(k)!r}; "
                                "only runs on the same model, tokens and device share a table")
    rows, seen = [], {}
    for i, part in enumerate(parts, start=1):
        for row in part.get("rows", []):
            key = (row.get("label"), json.dumps(row.get("config"), sort_keys=True))
            if key not in seen:
                seen[key] = (i, row)
                rows.append(row)
                continue
            first, old = seen[key]
            differ = [f for f in SAME_RUN_FIELDS if old.get(f) != row.get(f)]
            if differ:
                print(f"warning: run {row.get('label')!r} is in results {first} and {i} with different {differ[0]} "
                      f"({_fmt(old.get(differ[0]), 6)} and {_fmt(row.get(differ[0]), 6)}); the table keeps results "
                      f"{first}'s; drop one of the files to choose", file=sys.stderr)
    meta = {"title": "qift-hw results (merged)", **{k: ref.get(k) for k in MERGE_KEYS if k in ref},
            "commands": [p.get("meta", {}).get("command") for p in parts]}
    return rows, meta


CSV_COLUMNS = ("label", "kind", "weights", "a_bits", "kv_bits", "levels", "method", "ratio", "ppl",
               "mean_rel_error", "seconds")
"""Columns of results.csv (per-layer residuals and the full config stay in results.json)."""


RESULTS = "results.json"
PARTIAL = "results.partial.json"
RESULT_FILES = (RESULTS, PARTIAL, "results.md", "results.csv")
"""The files a results folder receives; an earlier run's are moved aside to `PREVIOUS_PREFIX` names."""
PREVIOUS_PREFIX = "results.previous."

_CLAIMED: dict[Path, int] = {}


def claim_results_folder(folder: str | os.PathLike) -> Path:
    """Make this process the one writer of a results folder until it exits.

    Locks the folder (QiftError at once if another run holds it) and moves an earlier run's files aside
    (results.json -> results.previous.json, ...), so that neither they nor a mix of two runs can be read as this
    run's results. Called again by the same process, it does nothing.
    """
    folder = Path(folder)
    key = folder.resolve()
    if key not in _CLAIMED:
        created = not folder.exists()
        _CLAIMED[key] = lock_folder(folder)
        if created:
            atexit.register(_remove_if_unused, folder)
        for name in RESULT_FILES:
            if (folder / name).is_file():
                os.replace(folder / name, folder / (PREVIOUS_PREFIX + name.removeprefix("results.")))
    return folder


def _remove_if_unused(folder: Path) -> None:
    """At exit: remove a results folder this process created and wrote nothing into (a run that failed early)."""
    if folder.is_dir() and all(p.name == LOCK_NAME for p in folder.iterdir()):
        shutil.rmtree(folder, ignore_errors=True)


def results_file(folder: str | os.PathLike) -> Path:
    """The results file of a results folder: results.json, or results.partial.json when only it exists or it is
    the newer of the two (an interrupted rerun; said on stderr)."""
    folder = Path(folder)
    done, partial = folder / RESULTS, folder / PARTIAL
    if not partial.is_file():
        if not done.is_file():
            raise QiftError(f"{folder} holds no {RESULTS}; give the folder written by `qift-hw eval --out`")
        return done
    if done.is_file() and done.stat().st_mtime_ns >= partial.stat().st_mtime_ns:
        return done
    if done.is_file():
        print(f"warning: {folder}: using {PARTIAL}, newer than {RESULTS} (an unfinished rerun)", file=sys.stderr)
    return partial


def read_results(paths: list[Path], out: Path | None = None) -> list[dict]:
    """The results ({"meta", "rows", ...}) of results files or folders (see `results_file`), for `merge_results`;
    refuses `out` (where the merged report goes) when it is one of the input folders."""
    parts = []
    target = out.resolve() if out is not None else None
    for path in paths:
        path = Path(path)
        if target is not None and (path if path.is_dir() else path.parent).resolve() == target:
            raise QiftError(f"--out {out} is the folder of input {path}; writing there would replace that run's "
                            "results: give another --out")
        if path.is_dir():
            path = results_file(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise QiftError(f"{path} does not exist") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise QiftError(f"{path} is not a results JSON file ({exc})") from None
        if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
            raise QiftError(f"{path} has no 'rows' list; give the results.json written by `qift-hw eval --out`")
        parts.append(data)
    return parts


def _results(rows: list[dict], meta: dict) -> dict:
    return {"meta": meta, "rows": rows, "provenance": provenance(meta.get("command"))}


def write_partial(rows: list[dict], folder: str | os.PathLike, meta: dict) -> Path:
    """results.partial.json: the rows so far, so an interrupted run keeps what it measured."""
    return write_json(claim_results_folder(folder) / PARTIAL, _results(rows, meta))


def write_report(rows: list[dict], folder: str | os.PathLike, meta: dict | None = None, plots: bool = True) -> Path:
    """Write results.json (rows, meta, provenance; it replaces this run's results.partial.json), results.md,
    results.csv and plots (png) into `folder` (claimed: `claim_results_folder`); returns the Markdown path."""
    folder = claim_results_folder(folder)
    meta = dict(meta or {})
    results = _results(rows, meta)
    write_json(folder / RESULTS, results)
    (folder / PARTIAL).unlink(missing_ok=True)
    write_csv(folder / "results.csv", [{**r, "setting": setting_of(r)} for r in rows], ("setting", *CSV_COLUMNS))
    md = folder / "results.md"
    write_text(md, render_markdown(rows, meta) + "\n" + provenance_line(results["provenance"]) + "\n")
    if plots and rows:
        write_plots(rows, folder, meta)
    return md


def write_plots(rows: list[dict], folder: str | os.PathLike, meta: dict) -> list[Path]:
    """The report's pictures that its rows have data for: ppl.png, pareto.png (needs the model's shape: meta
    "model", default smollm2) and pareto_<task>.png per lm-eval task in the rows' ``tasks``, sensitivity.png,
    residuals.png, ratio_sweep.png."""
    from qift_hw.core.shapes import load_model_shape
    from qift_hw.study.plots import plot_pareto, plot_ppl, plot_residuals, plot_sensitivity

    folder = Path(folder)
    rows = [{**r, "setting": setting_of(r)} for r in rows]
    made = [plot_ppl(rows, folder / "ppl.png"), plot_sensitivity(rows, folder / "sensitivity.png"),
            plot_residuals(rows, folder / "residuals.png")]
    try:
        shape = load_model_shape(meta.get("model") or "smollm2")
        made.append(plot_pareto(rows, shape, folder / "pareto.png"))
        for task in dict.fromkeys(t for r in rows for t in (r.get("tasks") or {})):
            made.append(plot_pareto(rows, shape, folder / f"pareto_{task}.png", task))
    except QiftError as exc:
        print(f"warning: no pareto.png: {exc}", file=sys.stderr)
    if any(r.get("ratio") is not None for r in rows):
        made.append(plot_ratio_sweep(rows, folder / "ratio_sweep.png"))
    return [p for p in made if p is not None]
