"""Design-space exploration of the accelerator: a grid file, its points, the tidy table and its Pareto fronts.

A grid file (YAML) gives the architecture (a preset or file, ``arch``), any architecture field by its dotted
name (``array.rows``, ``dram.gbps``, ``buffers.weight.kib``, ``dataflow``), the weight format (``levels``: level
set names, or a per-layer map: a pipeline results JSON ``PATH#ROW LABEL`` or a quantized checkpoint) and the
workload (``model``, ``phase``, ``seqlen``, ``context``, ``batch``); each may be one value or a list, and the
points are the cartesian product of the lists. Every point is checked before anything runs (one QiftError naming
the field), then runs through `qift_hw.study.grid.run_grid` (Dask, content-hash cache). The rows become one
tidy table (one row per point x format x phase, every grid parameter a column), joined with the pipeline's
W2A4KV4 perplexity per format, with Pareto flags per workload. docs/explore.md is the reference.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Mapping, Sequence, get_origin

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from qift_hw.core.errors import QiftError
from qift_hw.core.provenance import REPO_ROOT
from qift_hw.study.grid import GridRun, run_grid

DEFAULT_PERPLEXITY = "docs/results/pipeline_h100/results.json"
"""The pipeline results whose W2A4KV4 perplexity per level set and mixed map the co-design plot uses."""
DEFAULT_CACHE = "runs/cache/explore"
"""One cache for every grid, so a grid that grows by one value only runs the new points."""
WORKLOAD_KEYS = ("model", "phase", "seqlen", "context", "batch")
"""The workload of a point: Pareto fronts compare designs within one workload."""
OBJECTIVES = {
    "tokens_area": (("tokens_per_s", True), ("area", False)),
    "energy_area": (("energy_per_token_uj", False), ("area", False)),
    "energy_ppl": (("energy_per_token_uj", False), ("perplexity", False)),
}
"""Pareto fronts: name -> ((column, maximize), ...); the table gets a boolean column ``pareto_<name>``."""


def _as_list(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _many(item: Any) -> Any:
    return Annotated[list[item], BeforeValidator(_as_list), Field(min_length=1)]


class GridSpec(BaseModel):
    """The non-architecture fields of a grid file (each list field also takes one value)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = None
    description: str = ""
    arch: _many(str) = ["edge"]
    levels: _many(str) = ["pot_mnz", "int4", "int8"]
    model: _many(str) = ["llama2-7b"]
    phase: _many(Literal["prefill", "decode"]) = ["prefill", "decode"]
    seqlen: _many(Annotated[int, Field(ge=1)]) = [512]
    context: _many(Annotated[int, Field(ge=0)] | None) = [None]
    batch: _many(Annotated[int, Field(ge=1)]) = [1]
    perplexity: str | None = DEFAULT_PERPLEXITY
    cache: str = DEFAULT_CACHE
    chunk_size: int | None = Field(None, ge=1, le=100000)


GRID_FIELDS = tuple(GridSpec.model_fields)
AXES = ("arch", "levels", "model", "phase", "seqlen", "context", "batch")
"""List fields of a grid file besides the architecture fields, in the order the points vary (last fastest)."""


@dataclasses.dataclass(frozen=True)
class Grid:
    """A checked grid file: its fields, the architecture fields swept (dotted name -> values, file order)."""

    spec: GridSpec
    arch_fields: dict[str, list]
    source: str
    raw: dict

    @property
    def name(self) -> str:
        return self.spec.name or Path(self.source).stem

    def axes(self) -> dict[str, list]:
        """Every list of the grid in product order: arch, the architecture fields, then levels and the workload."""
        s = self.spec
        return {"arch": list(s.arch), **self.arch_fields,
                **{k: list(getattr(s, k)) for k in AXES[1:]}}


def check_arch_field(key: str) -> None:
    """QiftError unless ``key`` is a dotted path to a field of the architecture file (`qift_hw.sim.arch.Arch`)."""
    from qift_hw.sim.arch import Arch

    model: Any = Arch
    parts = key.split(".")
    for i, part in enumerate(parts):
        fields = model.model_fields
        if part not in fields:
            where = ".".join(parts[:i]) or "the architecture file"
            raise QiftError(f"unknown field {key!r}: {where} has no field {part!r} (fields: {', '.join(fields)}); "
                            f"a grid takes {', '.join(GRID_FIELDS)} and dotted architecture fields "
                            "(docs/accelerator.md)")
        ann = fields[part].annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
            if i == len(parts) - 1:
                first = next(iter(ann.model_fields))
                raise QiftError(f"field {key!r} is a section; sweep one of its fields ({key}.{first}, ...)")
            continue
        if get_origin(ann) is dict and len(parts) == i + 2:
            return
        if i != len(parts) - 1:
            raise QiftError(f"unknown field {key!r}: {'.'.join(parts[:i + 1])} is a value, not a section")


def _spec_error(exc: ValidationError, where: str) -> QiftError:
    err = exc.errors()[0]
    loc = ".".join(str(x) for x in err["loc"] if not isinstance(x, int)) or "(top level)"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "too_short":
        return QiftError(f"{where}: field {loc} is an empty list; give at least one value")
    got = err.get("input")
    shown = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
    return QiftError(f"{where}: field {loc}: {msg}{shown}")


def parse_grid(data: Any, source: str = "grid") -> Grid:
    """A grid from a parsed YAML mapping: grid fields validated by `GridSpec`, other keys checked as dotted
    architecture fields, every list non-empty."""
    if not isinstance(data, dict):
        raise QiftError(f"{source} must be a mapping of fields, got {type(data).__name__}")
    base = {k: v for k, v in data.items() if k in GRID_FIELDS}
    arch_fields: dict[str, list] = {}
    for key, value in data.items():
        if key in GRID_FIELDS:
            continue
        try:
            check_arch_field(str(key))
        except QiftError as exc:
            raise QiftError(f"{source}: {exc}") from None
        values = _as_list(value)
        if not values:
            raise QiftError(f"{source}: field {key} is an empty list; give at least one value")
        arch_fields[str(key)] = values
    try:
        spec = GridSpec.model_validate(base)
    except ValidationError as exc:
        raise _spec_error(exc, source) from None
    return Grid(spec, arch_fields, source, dict(data))


def read_yaml(path: str | Path, what: str = "grid file") -> Any:
    """A YAML file's content ({} when empty): QiftError for an unreadable file or invalid YAML."""
    p = Path(path)
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise QiftError(f"cannot read {what} {p}: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise QiftError(f"{what} {p} is not valid YAML{at}: {getattr(exc, 'problem', exc)}") from None
    return {} if data is None else data


def load_grid(path: str | Path) -> Grid:
    """A grid file: QiftError on an unreadable file, invalid YAML, an unknown field, a bad value or an empty list."""
    p = Path(path)
    data = read_yaml(p)
    return parse_grid(data, f"grid file {p}")


def grid_params(grid: Grid) -> list[dict]:
    """The cartesian product of the grid's lists: one flat dict per point (grid names as keys)."""
    axes = grid.axes()
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


def find_file(path: str | Path) -> Path:
    """``path`` as given (relative to the current folder), else relative to the repository root."""
    p = Path(path)
    if p.exists() or p.is_absolute():
        return p
    alt = REPO_ROOT / p
    return alt if alt.exists() else p


def _file_digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


@lru_cache(maxsize=4096)
def _arch_record(arch: str, overrides_json: str) -> tuple[str, str | None, int]:
    """(digest of the resolved architecture, digest of its area file, PEs) of a preset or file with overrides."""
    from qift_hw.sim.arch import load_arch

    a = load_arch(arch, json.loads(overrides_json))
    area = _file_digest(find_file(a.area_json)) if a.area_json else None
    return a.digest(), area, a.array.rows * a.array.cols


@lru_cache(maxsize=256)
def _shape_record(model: str) -> dict:
    from qift_hw.core.shapes import load_model_shape

    return dataclasses.asdict(load_model_shape(model))


@lru_cache(maxsize=256)
def _layer_map(entry: str):
    from qift_hw.bridge.layer_map import read_layer_map

    path, _, row = entry.partition("#")
    return read_layer_map(find_file(path), row or None)


def is_level_set(entry: str) -> bool:
    """Whether a ``levels`` entry names a level set (else it is a per-layer map file)."""
    from qift_hw.core.levels import get_level_set

    try:
        get_level_set(entry)
    except (QiftError, KeyError, ValueError):
        return False
    return True


def _levels_value(entry: str, model: str) -> tuple[Any, str | None]:
    """The point's ``levels`` (a level set name, or ``{module: level set}`` checked against the model) and label."""
    if is_level_set(entry):
        return entry, None
    path = entry.partition("#")[0]
    if not find_file(path).is_file():
        raise QiftError(f"levels entry {entry!r} is neither a level set (pot_mnz, mnz, std, pm12, int3, int4, int8) "
                        "nor an existing results JSON or checkpoint (PATH or PATH#ROW LABEL)")
    from qift_hw.bridge.layer_map import check_layer_map
    from qift_hw.core.shapes import load_model_shape

    lmap = _layer_map(entry)
    formats_ = check_layer_map(lmap, load_model_shape(model))
    return formats_, lmap.row or lmap.label


def to_point(params: Mapping[str, Any]) -> dict:
    """The point `estimate_point` takes, from one flat parameter dict of `grid_params`."""
    point = {"arch": params["arch"], "set": {k: v for k, v in params.items() if k not in AXES}}
    levels, label = _levels_value(params["levels"], params["model"])
    point["levels"] = levels
    if label is not None:
        point["label"] = label
    point.update({k: params[k] for k in WORKLOAD_KEYS})
    return point


def identity(point: Mapping[str, Any]) -> dict:
    """What a point's rows depend on beyond its own fields: the resolved architecture (every field, the preset's
    content included), the area file's content and the model's dimensions. The cache key hashes this."""
    digest, area, _ = _arch_record(point["arch"], json.dumps(point["set"], sort_keys=True))
    return {"point": dict(point), "arch_digest": digest, "area_digest": area, "shape": _shape_record(point["model"])}


def check_points(params: Sequence[Mapping[str, Any]], source: str = "grid") -> list[dict]:
    """Every point built and its architecture and model resolved, before anything runs (one QiftError)."""
    out = []
    for p in params:
        try:
            point = to_point(p)
            identity(point)
        except QiftError as exc:
            raise QiftError(f"{source}: {exc}") from None
        out.append(point)
    return out


def default_function() -> Callable[[Mapping[str, Any]], list[dict]]:
    """`qift_hw.sim.accelerator.estimate_point`: the accelerator model's unit of work."""
    from qift_hw.sim.accelerator import estimate_point

    return estimate_point


# --- the table ------------------------------------------------------------------------------------------------

def pareto_mask(values: Any, maximize: Sequence[bool]) -> "Any":
    """Boolean mask of the non-dominated rows of an (n, k) array; ``maximize[j]`` says which way column j is
    better. A row with a NaN is never on the front; equal rows are all on it (neither dominates the other)."""
    import numpy as np

    v = np.asarray(values, dtype=float).reshape(len(values), len(maximize)).copy()
    for j, up in enumerate(maximize):
        if up:
            v[:, j] = -v[:, j]
    ok = np.all(np.isfinite(v), axis=1)
    mask = np.zeros(len(v), dtype=bool)
    idx = np.flatnonzero(ok)
    order = idx[np.lexsort(v[idx].T[::-1])]
    front: list[int] = []
    for i in order:  # lexicographic order: no later row can dominate an earlier one
        if front:
            f = v[front]
            if np.any(np.all(f <= v[i], axis=1) & np.any(f < v[i], axis=1)):
                continue
        front.append(int(i))
    mask[front] = True
    return mask


def perplexity_table(path: str | Path | None) -> tuple[dict[str, float], dict]:
    """Format label -> W2A4KV4 perplexity from a pipeline results JSON: each A4KV4 quantized row under its label,
    and under its level set when all its linears share one (GPTQ rows preferred over RTN). Also a description of
    the source for the provenance file. ``None``: no perplexity."""
    if not path:
        return {}, {"source": None}
    p = find_file(path)
    try:
        data = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise QiftError(f"perplexity file {p}: cannot read it as a pipeline results JSON ({exc}); set "
                        "`perplexity:` in the grid to a results.json of `qift-hw eval`, or to null") from None
    rows = data.get("rows") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise QiftError(f"perplexity file {p} has no 'rows' list; give a results.json of `qift-hw eval`")
    by_label: dict[str, float] = {}
    by_set: dict[str, tuple[int, float]] = {}
    for r in rows:
        if not isinstance(r, dict) or r.get("kind") != "quant" or r.get("a_bits") != 4 or r.get("kv_bits") != 4:
            continue
        ppl = r.get("ppl")
        if not isinstance(ppl, (int, float)):
            continue
        by_label[str(r.get("label"))] = float(ppl)
        sets = {x.get("level_set") for x in r.get("linears") or []} or set(r.get("layer_level_sets") or [])
        if len(sets) == 1:
            rank = 1 if r.get("method") == "gptq" else 0
            name = next(iter(sets))
            if name not in by_set or rank >= by_set[name][0]:
                by_set[name] = (rank, float(ppl))
    table = {**{k: v for k, (_, v) in by_set.items()}, **by_label}
    meta = data.get("meta") or {}
    return table, {"source": str(path), "digest": _file_digest(p), "model": meta.get("model") or "smollm2",
                   "setting": "W2A4KV4 (A4, KV4) quantized rows", "labels": sorted(table)}


def tidy_table(run: GridRun, params: Sequence[Mapping[str, Any]], ppl: Mapping[str, float] | None = None):
    """One row per point x returned row (format x phase): the point's grid parameters as columns, the function's
    columns, ``point``/``point_key``, ``array_pes`` and ``area`` (array cells, NaN for a PE the area file lacks;
    PEs when no row has cells),
    ``perplexity`` (NaN where the file has none for the format) and the ``pareto_*`` flags."""
    import pandas as pd

    records = []
    for res, par in zip(run.results, params):
        label = {"format": res.point["label"]} if res.point.get("label") else {}
        for row in res.rows or []:
            records.append({**par, **row, **label, **par, "point": res.index, "point_key": res.key,
                            "cached": res.cached})
    df = pd.DataFrame.from_records(records)
    if df.empty:
        return df
    df["array_pes"] = [_arch_record(p["arch"], json.dumps({k: v for k, v in p.items() if k not in AXES},
                                                          sort_keys=True))[2] for p in
                       (params[i] for i in df["point"])]
    cells = pd.to_numeric(df["array_cells"], errors="coerce") if "array_cells" in df else None
    use_cells = cells is not None and bool(cells.notna().any())
    df["area"] = cells if use_cells else df["array_pes"]
    df.attrs["area_unit"] = "array cells" if use_cells else "PEs"
    ppl = ppl or {}
    labels = [run.results[i].point.get("label") or run.results[i].point.get("levels") for i in df["point"]]
    fmt = df["format"] if "format" in df else labels
    df["perplexity"] = [ppl.get(str(f), ppl.get(str(lb), math.nan)) for f, lb in zip(fmt, labels)]
    add_pareto(df)
    return df


def add_pareto(df) -> None:
    """``pareto_<name>`` columns (see OBJECTIVES), each front taken within one workload."""
    import numpy as np
    import pandas as pd

    keys = [k for k in WORKLOAD_KEYS if k in df]
    groups = df.groupby(keys, sort=False, dropna=False).indices if keys else {(): np.arange(len(df))}
    for name, objectives in OBJECTIVES.items():
        cols = [c for c, _ in objectives]
        flag = np.zeros(len(df), dtype=bool)
        if all(c in df for c in cols):
            vals = df[cols].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
            for idx in groups.values():
                flag[idx] = pareto_mask(vals[idx], [up for _, up in objectives])
        df[f"pareto_{name}"] = flag


def run_explore(grid: Grid, fn: Callable | None = None, *, cache: bool = True, client: Any = None,
                scheduler: str | None = None, workers: int | None = None, processes: bool = True,
                progress: bool = True) -> tuple[Any, GridRun, dict]:
    """Check every point, run them (cached), and build the tidy table: (table, the grid run, perplexity source)."""
    params = grid_params(grid)
    points = check_points(params, f"grid {grid.source}")
    ppl, ppl_meta = perplexity_table(grid.spec.perplexity)
    run = run_grid(fn or default_function(), points, cache_dir=find_cache(grid) if cache else None,
                   identity=identity, client=client, scheduler=scheduler, workers=workers, processes=processes,
                   chunk_size=grid.spec.chunk_size, progress=progress, label=grid.name)
    return tidy_table(run, params, ppl), run, ppl_meta


def find_cache(grid: Grid) -> Path:
    """The grid's cache folder (``cache:``; default runs/cache/explore under the current folder)."""
    return Path(grid.spec.cache)


def describe(point: Mapping[str, Any]) -> str:
    """A point in one short line (for failure messages)."""
    lv = point.get("label") or point.get("levels")
    sets = ", ".join(f"{k}={v}" for k, v in point.get("set", {}).items())
    work = ", ".join(f"{k}={point.get(k)}" for k in WORKLOAD_KEYS if point.get(k) is not None)
    return f"arch={point.get('arch')}{', ' + sets if sets else ''}, levels={lv}, {work}"


def _shape_name(model: str) -> str:
    try:
        return _shape_record(model)["name"]
    except QiftError:
        return model


def ppl_note(ppl_meta: Mapping[str, Any], models: Sequence[str]) -> str | None:
    """Where the perplexity comes from, and a warning when it was measured on another model than the sweep's."""
    if not ppl_meta.get("source"):
        return None
    where = _shape_name(str(ppl_meta.get("model")))
    others = sorted({_shape_name(m) for m in models} - {where})
    text = f"perplexity: {where}, {ppl_meta['source']}"
    return text + (f" (not {', '.join(others)}: it ranks the formats)" if others else "")


TABLE = "explore.parquet"
FILES = (TABLE, "explore.csv", "explore.json")


def write_outputs(folder: str | Path, df: Any, run: GridRun, grid: Grid, ppl_meta: Mapping[str, Any],
                  failures: Sequence[str] = ()) -> list[Path]:
    """The table (Parquet with the provenance in its metadata, and CSV), the run record ``explore.json`` (grid,
    provenance, cache counts, failures, perplexity source, Pareto counts) and the plots."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from qift_hw.core.io import atomic_path, write_json
    from qift_hw.core.provenance import provenance, write_csv
    from qift_hw.study.pareto_plots import plot_explore

    folder = Path(folder)
    record = {"grid": {"source": grid.source, "name": grid.name, "fields": grid.raw}, "provenance": provenance(),
              "run": run.summary(), "failures": list(failures), "perplexity": dict(ppl_meta),
              "rows": int(len(df)), "area_unit": df.attrs.get("area_unit"),
              "pareto": {c: int(df[c].sum()) for c in df.columns if str(c).startswith("pareto_")}}
    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = {**(table.schema.metadata or {}), b"qift_explore": json.dumps(record, default=str).encode()}
    with atomic_path(folder / TABLE) as tmp:
        pq.write_table(table.replace_schema_metadata(meta), tmp)
    paths = [folder / TABLE, write_csv(folder / FILES[1], df.to_dict("records"), list(df.columns))]
    if len(df):
        note = ppl_note(ppl_meta, sorted(set(df["model"].astype(str)))) if "model" in df else None
        paths += plot_explore(df, folder, df.attrs.get("area_unit", "PEs"), note)
    record["files"] = [p.name for p in paths] + [FILES[2]]
    paths.append(write_json(folder / FILES[2], record))
    return paths
