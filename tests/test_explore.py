"""Design-space exploration: grid expansion, the Dask grid runner's cache (rerun, resume, code version), failing
points, grid-file errors, Pareto fronts against brute force, and one small sweep through the real model."""

from __future__ import annotations

import itertools
import json
import math
import threading

import numpy as np
import pytest

from qift_hw.core.errors import QiftError
from qift_hw.study import explore, grid

CALLS: list[dict] = []
_LOCK = threading.Lock()


def counted(point):
    """Stand-in point function: records its calls (in-process workers share this list)."""
    with _LOCK:
        CALLS.append(dict(point))
    if point.get("x") == 3:
        raise ValueError("x = 3 is refused\nsecond line of the message")
    return [{"x": point["x"], "square": point["x"] ** 2}, {"x": point["x"], "cube": point["x"] ** 3}]


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0")
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()


def run(points, cache, client, code="v1", **kw):
    CALLS.clear()
    return grid.run_grid(counted, points, cache_dir=cache, client=client, code=code, progress=False, **kw)


def expected_rows(x):
    return [{"x": x, "square": x ** 2}, {"x": x, "cube": x ** 3}]


# --- grid runner ------------------------------------------------------------------------------------------------

def test_rows_in_input_order_and_one_line_failure(tmp_path, client):
    points = [{"x": x} for x in (5, 3, 0, 7)]
    res = run(points, tmp_path, client, chunk_size=3)
    assert [r.rows for r in res.results] == [expected_rows(5), None, expected_rows(0), expected_rows(7)]
    assert res.failed == 1 and res.results[1].error == "ValueError: x = 3 is refused"
    lines = grid.failure_lines(res)
    assert len(lines) == 1 and "\n" not in lines[0] and lines[0].startswith("point 1 ")
    assert len(list(tmp_path.glob("*.json"))) == 3  # the failing point is not cached


def test_cached_rerun_calls_nothing(tmp_path, client):
    points = [{"x": x} for x in range(10) if x != 3]
    first = run(points, tmp_path, client)
    assert len(CALLS) == len(points) and first.computed == len(points)
    again = run(points, tmp_path, client)
    assert CALLS == []
    assert again.cached == len(points) and again.computed == 0
    assert [r.rows for r in again.results] == [r.rows for r in first.results] == [expected_rows(p["x"]) for p in points]
    assert all(r.cached for r in again.results)


def test_cached_rerun_needs_no_cluster(tmp_path):
    points = [{"x": x} for x in (1, 2)]
    CALLS.clear()
    grid.run_grid(counted, points, cache_dir=tmp_path, code="v1", processes=False, workers=1, progress=False)
    res = grid.run_grid(counted, points, cache_dir=tmp_path, code="v1", scheduler="tcp://192.0.2.1:1",
                        progress=False)  # an unreachable scheduler: never contacted when all points are cached
    assert res.cached == 2 and res.workers == 0


def test_interrupted_run_resumes_with_the_rest(tmp_path, client):
    points = [{"x": x} for x in range(20) if x != 3]
    run(points[:7], tmp_path, client)  # the part an interrupted sweep finished
    lost = sorted(tmp_path.glob("*.json"))[0]
    lost_x = json.loads(lost.read_text())["identity"]["x"]
    lost.unlink()  # and one entry lost
    res = run(points, tmp_path, client)
    assert sorted(c["x"] for c in CALLS) == sorted({p["x"] for p in points[7:]} | {lost_x})
    assert res.cached == 6 and res.computed == len(points) - 6
    assert [r.rows for r in res.results] == [expected_rows(p["x"]) for p in points]


def test_other_code_version_is_recomputed_and_said(tmp_path, client):
    points = [{"x": x} for x in (1, 2, 4)]
    run(points, tmp_path, client, code="v1")
    res = run(points, tmp_path, client, code="v2")
    assert len(CALLS) == 3 and res.stale == 3 and res.cached == 0
    assert any("another code version" in n for n in res.notes)
    back = run(points, tmp_path, client, code="v1")  # the old entries are kept, not overwritten
    assert CALLS == [] and back.cached == 3


def test_corrupt_entry_is_recomputed(tmp_path, client):
    points = [{"x": 1}, {"x": 2}]
    run(points, tmp_path, client)
    victim = sorted(tmp_path.glob("*.json"))[0]
    victim.write_text("{not json")
    res = run(points, tmp_path, client)
    assert len(CALLS) == 1 and res.cached == 1
    assert [r.rows for r in res.results] == [expected_rows(1), expected_rows(2)]


def test_identity_decides_the_key_and_equal_points_run_once(tmp_path, client):
    points = [{"x": 1, "tag": "a"}, {"x": 1, "tag": "b"}, {"x": 2, "tag": "a"}]
    res = run(points, tmp_path, client, identity=lambda p: {"x": p["x"]})
    assert sorted(c["x"] for c in CALLS) == [1, 2]
    assert res.results[0].rows == res.results[1].rows == expected_rows(1)


def test_code_key_follows_the_imported_sources():
    files = grid.source_closure("qift_hw.study.explore")
    names = {f"{p.parent.name}/{p.name}" for p in files}
    assert {"study/explore.py", "study/grid.py", "core/errors.py", "core/io.py"} <= names
    assert "cli/explore.py" not in names
    key = grid.code_key(explore.to_point)
    assert key == grid.code_key(explore.to_point) and "+src." in key


def test_auto_chunk_batches_small_points():
    assert grid.auto_chunk(1000, 2) == 63
    assert grid.auto_chunk(10, 2) == 1
    assert grid.auto_chunk(10 ** 6, 16) == grid.MAX_CHUNK


# --- grid files -------------------------------------------------------------------------------------------------

def write(tmp_path, text, name="g.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_grid_is_the_cartesian_product(tmp_path):
    g = explore.load_grid(write(tmp_path, """
array.rows: [8, 16]
dram.gbps: [8, 16, 32]
buffers.weight.kib: 64
dataflow: [ws, os]
levels: [pot_mnz, int8]
model: smollm2
phase: [prefill, decode]
seqlen: [128, 256]
"""))
    got = explore.grid_params(g)
    lists = {"arch": ["edge"], "array.rows": [8, 16], "dram.gbps": [8, 16, 32], "buffers.weight.kib": [64],
             "dataflow": ["ws", "os"], "levels": ["pot_mnz", "int8"], "model": ["smollm2"],
             "phase": ["prefill", "decode"], "seqlen": [128, 256], "context": [None], "batch": [1]}
    want = [dict(zip(lists, combo)) for combo in itertools.product(*lists.values())]
    assert len(got) == 2 * 3 * 2 * 2 * 2 * 2 == 96
    assert sorted(map(json.dumps, got)) == sorted(map(json.dumps, want))
    p = explore.to_point(got[0])
    assert p["set"] == {"array.rows": 8, "dram.gbps": 8, "buffers.weight.kib": 64, "dataflow": "ws"}
    assert {k: p[k] for k in ("arch", "levels", "model", "phase", "seqlen", "context", "batch")} == {
        "arch": "edge", "levels": "pot_mnz", "model": "smollm2", "phase": "prefill", "seqlen": 128, "context": None,
        "batch": 1}


@pytest.mark.parametrize("text, words", [
    ("array.rows: [8\nlevels: int4\n", ["not valid YAML", "line"]),
    ("- 1\n- 2\n", ["mapping"]),
    ("array.rowz: [8]\n", ["unknown field", "array.rowz", "rowz"]),
    ("colour: red\n", ["unknown field", "colour"]),
    ("array: 8\n", ["section", "array.rows"]),
    ("array.rows: []\n", ["array.rows", "empty list"]),
    ("levels: []\n", ["levels", "empty list"]),
    ("phase: [prefill, sideways]\n", ["phase", "sideways"]),
    ("seqlen: [0]\n", ["seqlen", "greater than or equal to 1"]),
])
def test_bad_grid_file_is_one_clear_error(tmp_path, text, words):
    with pytest.raises(QiftError) as err:
        explore.load_grid(write(tmp_path, text))
    msg = str(err.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg


@pytest.mark.parametrize("text, words", [
    ("array.rows: [8, -4]\nmodel: smollm2\n", ["array.rows", "-4"]),
    ("dataflow: diagonal\nmodel: smollm2\n", ["dataflow", "diagonal"]),
    ("levels: [pot_mnz, nosuchset]\nmodel: smollm2\n", ["nosuchset", "neither a level set"]),
    ("model: nosuchmodel\n", ["nosuchmodel"]),
    ("arch: nosuchpreset\nmodel: smollm2\n", ["nosuchpreset"]),
])
def test_bad_values_are_refused_before_anything_runs(tmp_path, text, words):
    g = explore.load_grid(write(tmp_path, text))
    with pytest.raises(QiftError) as err:
        explore.check_points(explore.grid_params(g))
    msg = str(err.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg


def test_shipped_grids_load_and_check():
    from qift_hw.core.provenance import REPO_ROOT

    for path in sorted((REPO_ROOT / "sim" / "explore").glob("*.yaml")):
        g = explore.load_grid(path)
        points = explore.check_points(explore.grid_params(g))
        assert len(points) >= 100, path


# --- Pareto fronts ----------------------------------------------------------------------------------------------

def brute_force_front(values, maximize):
    """Row i is on the front unless some row j is at least as good everywhere and better somewhere."""
    sign = np.where(maximize, -1.0, 1.0)
    v = np.asarray(values, float) * sign
    out = []
    for i in range(len(v)):
        if not np.all(np.isfinite(v[i])):
            out.append(False)
            continue
        dominated = any(np.all(np.isfinite(v[j])) and np.all(v[j] <= v[i]) and np.any(v[j] < v[i])
                        for j in range(len(v)) if j != i)
        out.append(not dominated)
    return np.array(out)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("maximize", [(False, False), (True, False), (False, True, False)])
def test_pareto_front_matches_brute_force(seed, maximize):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    v = rng.integers(0, 8, size=(n, len(maximize))).astype(float)  # small integers: many ties
    if seed % 2:
        v[rng.integers(0, n)] = np.nan
    np.testing.assert_array_equal(explore.pareto_mask(v, maximize), brute_force_front(v, maximize))


def test_pareto_flags_are_per_workload():
    import pandas as pd

    df = pd.DataFrame({"phase": ["prefill", "prefill", "decode", "decode"], "model": "m", "tokens_per_s": [10, 5, 1, 2],
                       "area": [1, 1, 1, 1], "energy_per_token_uj": [1, 1, 1, 1], "perplexity": [1, 2, 1, 2]})
    explore.add_pareto(df)
    assert df["pareto_tokens_area"].tolist() == [True, False, False, True]
    assert df["pareto_energy_ppl"].tolist() == [True, False, True, False]


# --- the real model, end to end (in-process workers) ------------------------------------------------------------

def test_small_sweep_writes_table_plots_and_joins_perplexity(tmp_path, client):
    import pandas as pd

    from qift_hw.core.provenance import REPO_ROOT

    ppl_file = REPO_ROOT / explore.DEFAULT_PERPLEXITY
    g = explore.load_grid(write(tmp_path, f"""
array.rows: [16, 32]
array.cols: 32
levels: [pot_mnz, int8]
model: smollm2
phase: [prefill, decode]
seqlen: 64
cache: {tmp_path / 'cache'}
perplexity: {ppl_file}
"""))
    df, res, ppl_meta = explore.run_explore(g, client=client, progress=False)
    assert res.failed == 0 and res.computed == 8 and len(df) == 8
    assert set(df["array.rows"]) == {16, 32} and set(df["phase"]) == {"prefill", "decode"}
    rows = json.loads(ppl_file.read_text())["rows"]
    pot = [r["ppl"] for r in rows if r["label"] == "pot_mnz gptq W2A4KV4"]
    assert df.loc[df["levels"] == "pot_mnz", "perplexity"].eq(pot[0]).all()
    assert df.loc[df["levels"] == "int8", "perplexity"].isna().all()  # the pipeline has no W8 row
    paths = explore.write_outputs(tmp_path / "out", df, res, g, ppl_meta)
    names = {p.name for p in paths}
    assert {"explore.parquet", "explore.csv", "explore.json", "pareto_tokens_area.png", "pareto_energy_area.png",
            "pareto_energy_ppl.png"} <= names
    back = pd.read_parquet(tmp_path / "out" / "explore.parquet")
    assert len(back) == 8 and back["tokens_per_s"].tolist() == df["tokens_per_s"].tolist()
    record = json.loads((tmp_path / "out" / "explore.json").read_text())
    assert record["provenance"]["package"] == "qift-hw" and record["run"]["computed"] == 8
    again, res2, _ = explore.run_explore(g, client=client, progress=False)
    assert res2.cached == 8 and again["tokens_per_s"].tolist() == df["tokens_per_s"].tolist()
    assert not math.isnan(df["energy_per_token_uj"].iloc[0])


def test_existing_scheduler_by_address(tmp_path, client):
    res = grid.run_grid(counted, [{"x": 1}, {"x": 2}], cache_dir=tmp_path, code="v1", progress=False,
                        scheduler=client.scheduler.address)
    assert res.computed == 2 and [r.rows for r in res.results] == [expected_rows(1), expected_rows(2)]


def _worker_env() -> dict:
    import os

    return {k: os.environ.get(k) for k in ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS")}


def test_local_workers_keep_glibcs_dynamic_malloc_thresholds(monkeypatch):
    """Dask's default worker environment sets MALLOC_TRIM_THRESHOLD_, which fixes glibc's mmap threshold and made
    GPTQ points 1.8x slower in a worker (sw/bench_grid.py); the runner's local workers must not get it, and the
    calling process's environment must stay as it was."""
    import os

    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    client = grid.start_client(workers=1)
    try:
        (env,) = client.run(_worker_env).values()
    finally:
        grid._close(client, True)
    assert env == {"MALLOC_TRIM_THRESHOLD_": None, "OMP_NUM_THREADS": "1"}
    assert "MALLOC_TRIM_THRESHOLD_" not in os.environ


# --- the command line (real entry point, in this process; workers of the in-process cluster by address) -------

def qift(monkeypatch, capsys, *args):
    import sys

    from qift_hw.cli import main

    monkeypatch.setattr(sys, "argv", ["qift-hw", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    out = capsys.readouterr()
    return exc.value.code, out.err


def test_cli_sweep_rerun_and_failing_point(tmp_path, client, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, """
buffers.weight.kib: [256, 0.25]
levels: pot_mnz
model: smollm2
phase: [prefill, decode]
seqlen: 64
perplexity: null
""")
    args = ("explore", "g.yaml", "--out", "out", "--scheduler", client.scheduler.address, "--no-progress")
    code, err = qift(monkeypatch, capsys, *args)
    assert code == 1, err
    failed = [line for line in err.splitlines() if line.startswith("failed ")]
    assert len(failed) == 2 and all("buffers.weight.kib=0.25" in f and "too small" in f for f in failed)
    record = json.loads((tmp_path / "out" / "explore.json").read_text())
    assert record["rows"] == 2 and len(record["failures"]) == 2 and record["run"]["failed"] == 2
    assert record["provenance"]["command"].startswith("qift-hw explore g.yaml")
    assert (tmp_path / "runs" / "cache" / "explore").is_dir()  # the default cache, under the current folder
    code, err = qift(monkeypatch, capsys, *args)
    assert code == 1 and "2 cached, 2 run (2 failed)" in err  # failures are not cached: they run again


def test_cli_bad_grid_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "array.rows: [16]\nbatchsize: 4\n")
    code, err = qift(monkeypatch, capsys, "explore", "g.yaml", "--no-progress")
    assert code == 2 and err.count("\n") == 1 and "unknown field 'batchsize'" in err
    assert not (tmp_path / "runs").exists()


def test_cli_workers_with_scheduler_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "model: smollm2\n")
    code, err = qift(monkeypatch, capsys, "explore", "g.yaml", "--workers", "2", "--scheduler", "tcp://x:1")
    assert code == 2 and "--workers" in err and err.count("\n") == 1
