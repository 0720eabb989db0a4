"""Results of a run spec as tables: the long table (one row per point x seed, every setting a column) and the
aggregate over seeds (mean, standard deviation, n and the 95 % confidence interval of the mean per point).

The confidence interval is Student's t: mean +- t(0.975, n-1) * std / sqrt(n), with the sample standard deviation
(ddof=1); with one seed std and the interval are empty (NaN), not zero.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from qift_hw.algo.config import QuantConfig
from qift_hw.study.grid import GridRun

LONG = "results_long"
SUMMARY = "summary"
FILES = (f"{LONG}.parquet", f"{LONG}.csv", f"{SUMMARY}.md", f"{SUMMARY}.csv", "run.json", "spec.yaml")
CONFIG_COLUMNS = ("levels", "method", "w2_layers", "other_bits", "a_bits", "kv_bits", "a_clip", "kv_clip",
                  "scale_method", "act_order", "rotate", "calib_windows", "calib_seqlen", "calib_seed",
                  "rotation_seed", "calib_source")
"""Settings taken from each point's QuantConfig (None for FP)."""
POINT_COLUMNS = ("point_id", "group", "kind", "label", "model", "text", "backend", "device", "eval_seqlen")
KEY_COLUMNS = ("point_id", "group", "kind", "label", "setting", "levels", "method", "w2_layers", "other_bits",
               "a_bits", "kv_bits", "scale_method", "act_order", "calib_windows", "calib_seqlen", "calib_tokens",
               "eval_windows", "eval_seqlen", "backend")
"""Columns that are equal across the seed repeats of a point (kept in the aggregate)."""
INT_COLUMNS = ("calib_seed", "rotation_seed", "calib_windows", "calib_seqlen", "calib_tokens", "other_bits",
               "a_bits", "kv_bits", "eval_windows", "eval_seqlen", "n_w2_layers")
"""Integer columns that may be empty (pandas' nullable Int64, so 3 stays 3, not 3.0)."""


def setting(weights: str | None, a_bits: Any, kv_bits: Any) -> str:
    """E.g. W2A4KV4, W2A16, W2[sensitivity:15]/W4A4KV4, W16A4KV4."""
    a = "A16" if _missing(a_bits) else f"A{int(a_bits)}"
    kv = "" if _missing(kv_bits) or int(kv_bits) == 16 else f"KV{int(kv_bits)}"
    return f"{weights or 'W16'}{a}{kv}"


def long_table(run: GridRun):
    """One row per point x seed, in spec order; a failed point keeps its row with ``ppl`` NaN and ``error``."""
    import pandas as pd

    records = []
    for res in run.results:
        p = res.point
        cfg = p.get("config") or {}
        row = (res.rows or [{}])[0]
        rec: dict[str, Any] = {"point": res.index, **{k: p.get(k) for k in POINT_COLUMNS}}
        rec.update({k: cfg.get(k) for k in CONFIG_COLUMNS})
        rec["calib_seed"], rec["rotation_seed"] = p.get("calib_seed"), p.get("rotation_seed")
        if p["kind"] != "quant":
            for k in ("levels", "method", "w2_layers", "other_bits", "calib_windows", "calib_seqlen",
                      "scale_method", "act_order", "calib_source"):
                rec[k] = None
        if p["kind"] == "quant" and p.get("calib_seed") is None:  # reads no calibration (RTN, fixed map)
            rec["calib_windows"] = rec["calib_seqlen"] = None
        if p["kind"] == "fp":
            rec["a_bits"] = rec["kv_bits"] = 16
        weights = None
        if p["kind"] == "quant":
            qc = QuantConfig.from_dict(cfg)
            rec["levels"], weights = qc.weights_name(), qc.weights_label()
        rec["setting"] = setting(weights, rec["a_bits"], rec["kv_bits"])
        rec["calib_tokens"] = (rec["calib_windows"] * rec["calib_seqlen"]) if rec["calib_windows"] else None
        w2 = row.get("w2_layers")
        rec.update({
            "ppl": row.get("ppl", math.nan), "mean_rel_error": row.get("mean_rel_error"),
            "eval_windows": row.get("eval_windows"), "n_w2_layers": len(w2) if isinstance(w2, list) else None,
            "w2_layer_list": " ".join(map(str, w2)) if isinstance(w2, list) else None,
            "resumed_layers": int(row.get("resumed_layers") or 0),
            "seconds": row.get("seconds", res.seconds), "eval_seconds": row.get("eval_seconds"),
            "cached": res.cached, "point_key": res.key, "error": res.error,
        })
        for task, acc in (row.get("tasks") or {}).items():
            rec[f"task:{task}"] = acc
        records.append(rec)
    df = pd.DataFrame.from_records(records)
    if len(df):
        df["ppl"] = pd.to_numeric(df["ppl"], errors="coerce")
        for col in INT_COLUMNS:
            df[col] = pd.array(pd.to_numeric(df[col], errors="coerce"), dtype="Int64")
    return df


def t_quantile(n: int) -> float:
    """t(0.975, n-1): the two-sided 95 % quantile of Student's t (NaN below two samples)."""
    if n < 2:
        return math.nan
    from scipy.stats import t

    return float(t.ppf(0.975, n - 1))


def aggregate(df, value: str = "ppl"):
    """Per point (its seed repeats): the key columns, n (finished seeds), mean, std (ddof=1), ci95 (the half
    width of the 95 % interval of the mean), min and max of ``value``; points in first-seen order."""
    import pandas as pd

    keys = [k for k in KEY_COLUMNS if k in df]
    out = []
    for pid, part in df.groupby("point_id", sort=False):
        if "point_key" in part:
            part = part.drop_duplicates("point_key")  # one point listed in two groups counts once
        vals = pd.to_numeric(part[value], errors="coerce").dropna().to_numpy(dtype=float)
        n = len(vals)
        std = float(vals.std(ddof=1)) if n > 1 else math.nan
        first = part.iloc[0]
        out.append({**{k: first[k] for k in keys}, "seeds": int(len(part)), "n": n,
                    "mean": float(vals.mean()) if n else math.nan, "std": std,
                    "ci95": t_quantile(n) * std / math.sqrt(n) if n > 1 else math.nan,
                    "min": float(vals.min()) if n else math.nan, "max": float(vals.max()) if n else math.nan})
    return pd.DataFrame.from_records(out)


def _missing(x: Any) -> bool:
    import pandas as pd

    return x is None or bool(pd.isna(x))


def _fmt(x: Any, digits: int = 2) -> str:
    if _missing(x):
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}" if abs(x) < 1e5 else f"{x:.3g}"
    return str(x)


def summary_markdown(agg, title: str = "Perplexity over seeds") -> str:
    """The aggregate as a Markdown table (mean +- std, n, 95 % CI of the mean, range)."""
    head = ("| point | setting | calib | n | mean | std | 95% CI | min | max |\n"
            "|---|---|---|---|---|---|---|---|---|")
    lines = [f"## {title}", "", head]
    for _, r in agg.iterrows():
        calib = "-" if _missing(r.get("calib_windows")) else f"{r['calib_windows']} x {r['calib_seqlen']}"
        ci = "-" if _missing(r["ci95"]) else f"{r['mean'] - r['ci95']:.2f} .. {r['mean'] + r['ci95']:.2f}"
        lines.append(f"| {r['label']} | {r['setting']} | {calib} | {r['n']}/{r['seeds']} | {_fmt(r['mean'])} | "
                     f"{_fmt(r['std'])} | {ci} | {_fmt(r['min'])} | {_fmt(r['max'])} |")
    return "\n".join(lines) + "\n"


def write_outputs(folder: str | Path, df, agg, run: GridRun, spec_yaml: str, source: str,
                  failures: Sequence[str] = (), plots: bool = True) -> list[Path]:
    """The long table (Parquet with the run record in its metadata, and CSV), the aggregate (Markdown and CSV),
    ``run.json`` (spec, provenance, cache counts, failures, files), the resolved ``spec.yaml`` and the plots."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    from qift_hw.core.io import atomic_path, write_json, write_text
    from qift_hw.core.provenance import provenance, provenance_line, write_csv
    from qift_hw.study.spec_plots import plot_run

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    prov = provenance()
    record = {"spec": {"source": source, "resolved": yaml.safe_load(spec_yaml)}, "provenance": prov,
              "run": run.summary(), "failures": list(failures), "rows": int(len(df)), "points": int(len(agg))}
    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = {**(table.schema.metadata or {}), b"qift_run": json.dumps(record, default=str).encode()}
    with atomic_path(folder / FILES[0]) as tmp:
        pq.write_table(table.replace_schema_metadata(meta), tmp)
    paths = [folder / FILES[0], write_csv(folder / FILES[1], df.to_dict("records"), list(df.columns))]
    notes = [f"- {n}" for n in run.notes] + [f"- failed {f}" for f in failures]
    md = (f"# Run spec {source}\n\n{summary_markdown(agg)}\n" + ("\n".join(notes) + "\n\n" if notes else "")
          + f"{provenance_line(prov)}\n")
    paths += [write_text(folder / FILES[2], md), write_csv(folder / FILES[3], agg.to_dict("records"),
                                                           list(agg.columns))]
    paths.append(write_text(folder / FILES[5], spec_yaml))
    if plots and len(agg):
        paths += plot_run(agg, folder)
    record["files"] = [p.name for p in paths] + [FILES[4]]
    paths.append(write_json(folder / FILES[4], record))
    return paths
