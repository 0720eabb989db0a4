"""Run one function over many points on Dask, each point's result cached as one JSON file.

Generic: a point is any JSON-able mapping and the function maps it to a list of row dicts (the accelerator
explorer's `estimate_point`, or an accuracy grid's evaluation). Points are grouped into chunks, one Dask task
each, because one estimate takes milliseconds and a Dask task costs about a millisecond of scheduling
(`sw/bench_explore.py` measures both). Workers are processes of a `distributed.LocalCluster` (one per core),
or those of an existing cluster given by its scheduler address.

Cache: one file per point in the cache folder, named ``<P>-<K>.json`` where K is a SHA-256 prefix of
(the point's identity, the function's qualified name, the code key) and P the same without the code key. A
rerun reads the files and runs nothing; an interrupted sweep keeps every point finished before the interrupt
(the client writes each file atomically as its chunk returns). A file with the same P but another K was written
by other code: it is not reused, and the run counts it as stale.

The code key is the package version plus a SHA-256 of the source files the function's module imports within
this package, followed transitively (an AST walk of the import statements). Not the git commit: a commit that
touches only docs or other layers would throw the whole cache away, while an uncommitted edit to the model would
keep stale results; the sources the function runs are exactly what can change its rows.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import logging
import math
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from qift_hw.core.errors import QiftError
from qift_hw.core.io import write_json

PointFn = Callable[[Mapping[str, Any]], list[dict]]
KEY_HEX = 24
"""Hex digits of each half of a cache file name (96 bits; the file's content is checked on reading too)."""
TASKS_PER_WORKER = 8
"""Auto chunking: about this many tasks per worker, so the slowest chunk does not leave the others idle."""
MAX_CHUNK = 64
WORKER_ENVIRON = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
"""Dask settings for local worker processes: Dask's default sets glibc's ``MALLOC_TRIM_THRESHOLD_``, and any
explicit malloc threshold turns off glibc's dynamic mmap threshold, so every large tensor became a fresh mmap
and its page faults: a GPTQ point ran 1.8x slower in a worker than in the calling process
(``sw/bench_grid.py``). Unset, workers allocate as the calling process does."""


@dataclass(frozen=True)
class PointResult:
    """What one point gave: its rows, or the one-line error that stopped it; ``cached`` when read from the cache."""

    index: int
    point: dict
    rows: list[dict] | None
    error: str | None = None
    cached: bool = False
    seconds: float = 0.0
    key: str = ""


@dataclass
class GridRun:
    """All points in input order, and counts of how each was obtained."""

    results: list[PointResult]
    function: str
    code: str
    cache_dir: str | None
    computed: int = 0
    cached: int = 0
    stale: int = 0
    failed: int = 0
    chunks: int = 0
    chunk_size: int = 0
    workers: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[PointResult]:
        return [r for r in self.results if r.error is not None]

    def summary(self) -> dict:
        """The counts as a JSON-able record (for a run's provenance file)."""
        return {"function": self.function, "code": self.code, "cache_dir": self.cache_dir,
                "points": len(self.results), "computed": self.computed, "cached": self.cached, "stale": self.stale,
                "failed": self.failed, "chunks": self.chunks, "chunk_size": self.chunk_size,
                "workers": self.workers, "seconds": round(self.seconds, 3), "notes": self.notes}


def function_name(fn: Callable) -> str:
    """``module.qualname`` of a function: part of every cache key."""
    return f"{fn.__module__}.{fn.__qualname__}"


def _module_file(name: str) -> Path | None:
    """The source file of a module, found on disk without importing it (nor its parent packages)."""
    mod = sys.modules.get(name)
    path = getattr(mod, "__file__", None)
    if path is not None:
        return Path(path) if str(path).endswith(".py") else None
    top, _, rest = name.partition(".")
    top_file = _module_file(top) if rest else None
    if not rest:
        try:
            spec = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            return None
        return Path(spec.origin) if spec is not None and spec.origin and spec.origin.endswith(".py") else None
    if top_file is None or top_file.name != "__init__.py":
        return None
    base = top_file.parent.joinpath(*rest.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _imported(tree: ast.Module, module: str, is_package: bool) -> set[str]:
    """Absolute names of the modules an AST imports (``from a import b`` may name module a.b, kept as both)."""
    out: set[str] = set()
    base = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = base.split(".")
                root = ".".join(parts[: len(parts) - node.level + 1])
                src = f"{root}.{node.module}" if node.module else root
            else:
                src = node.module or ""
            out.add(src)
            out.update(f"{src}.{a.name}" for a in node.names)
    return out


def source_closure(module: str, package: str | None = None) -> list[Path]:
    """The source files of ``module`` and of every module of ``package`` (default: its top-level package) that
    it imports, transitively, parents' ``__init__`` included; sorted."""
    package = package or module.split(".")[0]
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _module_file(name)
        if path is None:
            continue
        seen[name] = path
        parents = [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]
        tree = ast.parse(path.read_text(), filename=str(path))
        for dep in (*_imported(tree, name, path.name == "__init__.py"), *parents):
            if (dep == package or dep.startswith(package + ".")) and dep not in seen:
                todo.append(dep)
    return sorted(set(seen.values()))


def code_key(fn: Callable) -> str:
    """``<package version>+src.<sha256 prefix>`` of the sources ``fn`` runs (see the module docstring)."""
    mod = fn.__module__
    top = mod.split(".")[0]
    try:
        version = metadata.version(top.replace("_", "-"))
    except metadata.PackageNotFoundError:
        version = "0"
    h = hashlib.sha256()
    files = source_closure(mod)
    roots = [p.parent for p in files if p.name == "__init__.py" and p.parent.name == top] or [files[0].parent]
    for path in files:
        rel = os.path.relpath(path, roots[0].parent)
        h.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    return f"{version}+src.{h.hexdigest()[:16]}"


def _digest(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def cache_name(identity: Any, function: str, code: str) -> str:
    """The cache file name of a point: ``<hash(identity, function)>-<hash(identity, function, code)>.json``."""
    head = _digest({"identity": identity, "function": function})[:KEY_HEX]
    full = _digest({"identity": identity, "function": function, "code": code})[:KEY_HEX]
    return f"{head}-{full}.json"


def _read_entry(path: Path, identity: Any, function: str, code: str) -> list[dict] | None:
    """The rows of a cache file when it is whole and was written for this identity, function and code."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    ok = (isinstance(data, dict) and data.get("function") == function and data.get("code") == code
          and _digest(data.get("identity")) == _digest(identity) and isinstance(data.get("rows"), list))
    return data["rows"] if ok else None


def error_line(exc: BaseException) -> str:
    """One line: the exception type and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def run_chunk(fn: PointFn, points: Sequence[Mapping[str, Any]]) -> list[tuple[list[dict] | None, str | None, float]]:
    """Run ``fn`` on each point (a Dask task): (rows, None, seconds) or (None, error line, seconds) per point."""
    out = []
    for point in points:
        t0 = time.perf_counter()
        try:
            rows = fn(point)
            if not isinstance(rows, list) or not all(isinstance(r, Mapping) for r in rows):
                raise TypeError(f"{function_name(fn)} returned {type(rows).__name__}, not a list of dicts")
            out.append(([dict(r) for r in rows], None, time.perf_counter() - t0))
        except Exception as exc:  # one failing point must not take its chunk down
            out.append((None, error_line(exc), time.perf_counter() - t0))
    return out


def auto_chunk(todo: int, workers: int) -> int:
    """Points per task: about ``TASKS_PER_WORKER`` tasks per worker, at most ``MAX_CHUNK`` points each."""
    return max(1, min(MAX_CHUNK, math.ceil(todo / max(1, workers * TASKS_PER_WORKER))))


def start_client(scheduler: str | None = None, workers: int | None = None, processes: bool = True):
    """A Dask client: on the cluster at ``scheduler``, else on a new LocalCluster of ``workers`` single-threaded
    workers (default: one per core), processes or (``processes=False``) threads of this process."""
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            return Client(scheduler, timeout="10s")
        except (OSError, TimeoutError) as exc:
            raise QiftError(f"cannot reach the Dask scheduler at {scheduler} ({error_line(exc)}); start one "
                            "(`dask scheduler`) or leave --scheduler out for a local cluster") from None
    n = workers or os.cpu_count() or 1
    if n < 1:
        raise QiftError(f"--workers must be at least 1, got {n}")
    import dask

    with dask.config.set(WORKER_ENVIRON):
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=processes, dashboard_address=":0",
                               silence_logs=logging.ERROR)
    return Client(cluster)


def _close(client, owned: bool) -> None:
    if not owned:
        return
    cluster = getattr(client, "cluster", None)
    client.close()
    if cluster is not None:
        cluster.close()


def _progress(total: int, initial: int, enabled: bool, label: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc=label, unit="point", dynamic_ncols=True,
                file=sys.stderr)


def run_grid(fn: PointFn, points: Sequence[Mapping[str, Any]], *, cache_dir: str | os.PathLike | None = None,
             identity: Callable[[Mapping[str, Any]], Any] | None = None, code: str | None = None,
             client: Any = None, scheduler: str | None = None, workers: int | None = None, processes: bool = True,
             chunk_size: int | None = None, progress: bool = True, label: str = "points") -> GridRun:
    """Run ``fn`` on every point; results in input order.

    ``identity(point)`` (default: the point) is what the cache key hashes: give it everything the rows depend on
    that the point only names (a file's content digest for a path). Points with equal identities run once.
    ``cache_dir=None`` runs everything and writes nothing. ``client`` (a `distributed.Client`) is used as is;
    otherwise one is started on ``scheduler`` or on a local cluster, and only when some point is not cached.
    """
    t_start = time.perf_counter()
    name = function_name(fn)
    code = code if code is not None else code_key(fn)
    ident = identity or (lambda p: p)
    folder = Path(cache_dir) if cache_dir is not None else None
    run = GridRun([], name, code, str(folder) if folder else None)
    idents = [ident(p) for p in points]
    names = [cache_name(i, name, code) for i in idents]
    rows, stale, unreadable = _lookup(folder, idents, names, name, code) if folder is not None else ({}, 0, 0)
    todo_names = list(dict.fromkeys(n for n in names if n not in rows))
    first = {n: k for k, n in reversed(list(enumerate(names)))}
    run.cached = sum(1 for n in names if n in rows)
    run.stale = stale
    if run.stale:
        run.notes.append(f"{run.stale} point(s) had cache entries from another code version (not {code}); "
                         "recomputed")
    if unreadable:
        run.notes.append(f"{unreadable} cache entr(y/ies) unreadable or written for another point; recomputed")
    if todo_names:
        owned = client is None
        if owned:
            client = start_client(scheduler, workers, processes)
        try:
            run.workers = max(1, len(client.scheduler_info().get("workers", {})))
            size = chunk_size or auto_chunk(len(todo_names), run.workers)
            chunks = [todo_names[i:i + size] for i in range(0, len(todo_names), size)]
            run.chunks, run.chunk_size = len(chunks), size
            mult = Counter(names)
            bar = _progress(len(names), run.cached, progress, label)
            try:
                _run_chunks(client, fn, points, first, chunks, rows, folder, idents, name, code,
                            lambda chunk: bar.update(sum(mult[n] for n in chunk)))
            finally:
                bar.close()
        finally:
            _close(client, owned)
    for k, (point, fname) in enumerate(zip(points, names)):
        got, err, cached, secs = rows[fname]
        run.results.append(PointResult(k, dict(point), got, err, cached, secs, fname.removesuffix(".json")))
    run.failed = sum(1 for r in run.results if r.error is not None)
    run.computed = len(todo_names)
    run.seconds = time.perf_counter() - t_start
    return run


def _lookup(folder: Path, idents: list, names: list[str], function: str, code: str) -> tuple[dict, int, int]:
    """Cached rows by file name; how many points have only entries of another code version; how many entries
    could not be used (unreadable, or written for another point)."""
    if folder.exists() and not folder.is_dir():
        raise QiftError(f"cache {folder} is a file; give a folder (or run without the cache)")
    present = {p.name for p in folder.glob("*.json")} if folder.is_dir() else set()
    heads = {n.split("-", 1)[0] for n in present}
    rows: dict[str, tuple[list[dict] | None, str | None, bool, float]] = {}
    stale: set[str] = set()
    unreadable = 0
    for ident, fname in zip(idents, names):
        if fname in rows:
            continue
        got = _read_entry(folder / fname, ident, function, code) if fname in present else None
        if got is not None:
            rows[fname] = (got, None, True, 0.0)
        elif fname in present:
            unreadable += 1
        elif fname.split("-", 1)[0] in heads:
            stale.add(fname)
    return rows, len(stale), unreadable


def _run_chunks(client, fn, points, first, chunks, rows, folder, idents, name, code, advance) -> None:
    from distributed import as_completed

    futures = {client.submit(run_chunk, fn, [points[first[n]] for n in chunk], pure=False): chunk
               for chunk in chunks}
    try:
        for fut in as_completed(list(futures)):
            chunk = futures.pop(fut)
            try:
                results = fut.result()
            except Exception as exc:  # the task itself failed (a worker died, the function cannot be pickled)
                results = [(None, error_line(exc), 0.0)] * len(chunk)
            for fname, (got, err, secs) in zip(chunk, results):
                rows[fname] = (got, err, False, secs)
                if folder is not None and err is None:
                    write_json(folder / fname, {"function": name, "code": code, "identity": idents[first[fname]],
                                                "rows": got, "seconds": secs})
            advance(chunk)
    except BaseException:
        for fut in futures:
            fut.cancel()
        raise


def failure_lines(run: GridRun, describe: Callable[[Mapping[str, Any]], str] | None = None) -> list[str]:
    """One line per failed point: its index, a short description of the point and the error."""
    show = describe or (lambda p: json.dumps(p, sort_keys=True, default=str)[:200])
    return [f"point {r.index} ({show(r.point)}): {r.error}" for r in run.failures]
