"""Run specs: schema errors, --set overrides, expansion against itertools.product, the shipped presets against
`eval --table`, a tiny end-to-end grid on Dask against the direct call (and its cached rerun), aggregation
against numpy/scipy written here."""

from __future__ import annotations

import itertools
import math
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml

from qift_hw.core.errors import QiftError
from qift_hw.study import points as points_mod
from qift_hw.study import spec as S
from qift_hw.study import tidy
from test_explore import client, qift  # noqa: F401  (the in-process Dask cluster fixture, the CLI runner)

SPECS = Path(__file__).resolve().parents[1] / "sim" / "specs"
CALLS: list[dict] = []
_LOCK = threading.Lock()


def counted_run_point(point):
    """`run_point`, counting its calls (the in-process worker shares this list)."""
    with _LOCK:
        CALLS.append(dict(point))
    return points_mod.run_point(point)


def base(**extra):
    return {"points": [{"levels": "mnz"}], **extra}


# --- schema -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("data, words", [
    (base(colour="red"), ["unknown field colour"]),
    ({"points": [{"levels": "mnz", "bitz": 2}]}, ["unknown field points.0.bitz"]),
    ({"points": [{"methods": "gptx"}]}, ["points.0.methods.0", "'gptq' or 'rtn'", "gptx"]),
    ({"points": [{"levels": "mzn"}]}, ["points.0.levels.0", "unknown level set", "pot_mnz"]),
    ({"points": [{"levels": "int4"}]}, ["points.0.levels.0", "2-bit"]),
    ({"points": [{"w2_layers": "middle:3"}]}, ["points.0.w2_layers.0"]),
    (base(calibration={"seeds": []}), ["calibration.seeds is an empty list"]),
    ({"points": []}, ["points is an empty list"]),
    (base(backend="gpu"), ["backend", "'torch', 'int' or 'sim'"]),
    (base(device="tpu"), ["device"]),
    (base(evaluation={"tasks": ["lambada_local"]}), ["evaluation.tasks", "no_such_runner"]),
])
def test_bad_spec_is_one_line_naming_the_field(data, words, monkeypatch):
    monkeypatch.setattr(S, "TASK_RUNNER", "qift_hw.study.no_such_runner")
    with pytest.raises(QiftError) as err:
        S.parse_spec(data, "spec x.yaml")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("spec x.yaml")
    for w in words:
        assert w in msg


def test_bad_files(tmp_path):
    with pytest.raises(QiftError, match="cannot read spec file"):
        S.load_spec(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("points: [\n")
    with pytest.raises(QiftError, match="not valid YAML at line"):
        S.load_spec(tmp_path / "bad.yaml")
    with pytest.raises(QiftError, match="no such file or folder"):
        S.check_sources(S.parse_spec(base(model="./no/such/model")))
    with pytest.raises(QiftError, match="missing.txt"):
        S.check_sources(S.parse_spec(base(text=str(tmp_path / "missing.txt"))))
    S.check_sources(S.parse_spec(base()))


def test_cli_refuses_bad_specs_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text("points: [{levels: mnz}]\nmodel: ./no/such/folder\n")
    for args, words in ((["--set", "calibration.seeds=[]"], "calibration.seeds is an empty list"),
                        (["--set", "points.0.colour=red"], "unknown field points.0.colour"),
                        (["--workers", "0"], "--workers must be at least 1"),
                        ([], "no such file or folder")):
        code, err = qift(monkeypatch, capsys, "run", "s.yaml", *args)
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()  # nothing written, no cluster started


def test_overrides_replace_fields():
    data = base(calibration={"windows": 64})
    spec = S.parse_spec(data, overrides=["calibration.seeds=[3, 4]", "points.0.levels=[std, nf2]",
                                         "evaluation.windows=5", "backend=int"])
    assert spec.calibration.seeds == [3, 4] and spec.calibration.windows == 64
    assert spec.points[0].levels == ["std", "nf2"] and spec.evaluation.windows == 5 and spec.backend == "int"
    assert data["calibration"] == {"windows": 64}  # the parsed file is not changed
    with pytest.raises(QiftError, match="points has 1 item"):
        S.parse_spec(data, overrides=["points.3.levels=std"])
    with pytest.raises(QiftError, match="field.path=value"):
        S.parse_spec(data, overrides=["calibration.seeds"])
    with pytest.raises(QiftError, match="unknown field calibration.sedes"):
        S.parse_spec(data, overrides=["calibration.sedes=[1]"])


def test_resolved_spec_round_trips():
    spec = S.parse_spec(base(calibration={"seeds": [1, 2]}))
    again = S.parse_spec(yaml.safe_load(S.resolved_yaml(spec)))
    assert again == spec and again.calibration.windows == 128


# --- expansion --------------------------------------------------------------------------------------------------

def test_expansion_is_points_times_seeds():
    group = {"levels": ["std", "mnz"], "methods": ["rtn", "gptq"], "w2_layers": ["all", "last:2"],
             "a_bits": [4, 16], "calib_windows": [8, 16], "rotation_seeds": [0, 5]}
    seeds = [0, 1, 2]
    spec = S.parse_spec({"points": [{"kind": "fp"}, group], "calibration": {"seeds": seeds}})
    got = [(p["config"]["w2_layers"], p["config"]["a_bits"], p["config"]["calib_windows"], p["config"]["method"],
            p["config"]["levels"], p["calib_seed"], p["rotation_seed"]) for p in S.expand(spec)[1:]]
    want = [(w2, a, cw, m, lv, cs if m == "gptq" else None, rs) for w2, a, cw, m, lv, cs, rs in itertools.product(
        group["w2_layers"], group["a_bits"], group["calib_windows"], group["methods"], group["levels"], seeds,
        group["rotation_seeds"]) if m == "gptq" or cs == seeds[0]]  # RTN with a fixed map reads no calibration
    assert got == want
    pts = S.expand(spec)
    assert pts[0]["kind"] == "fp" and pts[0]["calib_seed"] is None and pts[0]["config"] is None
    ids = {p["point_id"] for p in pts[1:]}
    assert len(ids) == len({w[:5] for w in want})  # the seeds of a point share its id
    assert len({str(S.identity(p)) for p in pts}) == len(pts)


@pytest.mark.parametrize("name", ["demo", "full"])
def test_shipped_preset_specs_equal_eval_table(name):
    from qift_hw.study.experiments import preset_points

    spec = S.load_spec(SPECS / f"{name}.yaml")
    ref = preset_points(name, S.base_config(spec))
    got = S.expand(spec)
    assert [(p["label"], p["kind"]) for p in got] == [(p.label, p.kind) for p in ref]
    for p, r in zip(got, ref):
        if r.config is None:
            assert p["config"] is None
        else:
            assert {k: v for k, v in p["config"].items() if k not in ("device", "batch_size")} == r.config.identity()


def test_shipped_specs_load():
    seeds = S.expand(S.load_spec(SPECS / "seeds.yaml"))
    w2 = [p for p in seeds if p["kind"] == "quant" and p["config"]["w2_layers"] == "all"]
    assert len(w2) == 7 * 3 and {p["calib_seed"] for p in w2} == {0, 1, 2}
    curve = S.expand(S.load_spec(SPECS / "calib_curve.yaml"))
    assert sorted({p["config"]["calib_windows"] for p in curve}) == [8, 16, 32, 64, 128]
    assert {p["config"]["levels"] for p in curve} == {"std", "mnz", "pot_mnz"} and len(curve) == 45


# --- aggregation ------------------------------------------------------------------------------------------------

def test_aggregate_against_numpy():
    import pandas as pd
    from scipy import stats

    rng = np.random.default_rng(0)
    rows, want = [], {}
    for pid, n in (("a", 3), ("b", 5), ("c", 1)):
        vals = rng.normal(50, 5, n)
        rows += [{"point_id": pid, "label": pid, "ppl": v} for v in vals]
        want[pid] = vals
    rows.append({"point_id": "b", "label": "b", "ppl": math.nan})  # a failed seed
    agg = tidy.aggregate(pd.DataFrame(rows)).set_index("point_id")
    for pid, vals in want.items():
        r = agg.loc[pid]
        assert r["n"] == len(vals) and r["mean"] == pytest.approx(np.mean(vals))
        if len(vals) > 1:
            sd = np.std(vals, ddof=1)
            lo, hi = stats.t.interval(0.95, len(vals) - 1, loc=np.mean(vals), scale=sd / np.sqrt(len(vals)))
            assert r["std"] == pytest.approx(sd) and r["ci95"] == pytest.approx((hi - lo) / 2)
        else:
            assert math.isnan(r["std"]) and math.isnan(r["ci95"])
    assert agg.loc["b", "seeds"] == 6 and agg.loc["b", "n"] == 5


# --- end to end on a tiny model ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A saved 2-layer tiny LLaMA with a word tokenizer, and a text of its words."""
    from test_stats import _save_word_tokenizer

    from qift_hw.algo.models import tiny_llama

    folder = tmp_path_factory.mktemp("tiny")
    tiny_llama(seed=0, hidden=64, intermediate=128, layers=2).save_pretrained(folder / "model")
    _save_word_tokenizer(folder / "model")
    words = np.random.default_rng(1).integers(0, 100, 4000)
    (folder / "text.txt").write_text(" ".join(f"w{i}" for i in words))
    return folder


def test_tiny_grid_equals_direct_call_and_reruns_from_cache(tiny, tmp_path, client):
    from qift_hw.algo.config import QuantConfig
    from qift_hw.algo.data import get_windows
    from qift_hw.algo.evaluate import evaluate_ppl
    from qift_hw.algo.models import load_model
    from qift_hw.study.experiments import Point, run_points
    from qift_hw.study.grid import run_grid

    data = {"model": str(tiny / "model"), "text": str(tiny / "text.txt"), "cache": None, "run_root": None,
            "calibration": {"windows": 4, "seqlen": 16, "seeds": [0, 1]},
            "evaluation": {"windows": 3, "seqlen": 16},
            "points": [{"kind": "fp"},
                       {"levels": ["mnz", "std"], "methods": "rtn", "w2_layers": "all", "a_bits": 4, "kv_bits": 4},
                       {"levels": "mnz", "methods": "gptq", "w2_layers": "last:1", "other_bits": 16,
                        "calib_windows": 2}]}
    spec = S.parse_spec(data)
    pts = S.expand(spec)
    assert len(pts) == 1 + 2 + 2  # RTN reads no calibration: once, not once per calibration seed
    CALLS.clear()
    points_mod.LOADS.clear()
    run = run_grid(counted_run_point, pts, cache_dir=tmp_path / "cache", identity=S.identity, client=client,
                   code="test", progress=False)
    assert run.failed == 0 and len(CALLS) == len(pts) and run.computed == len(pts)
    assert points_mod.LOADS == [str((tiny / "model").resolve())]  # one model load for all points of the worker

    model, tok = load_model(str(tiny / "model"))
    ev = get_windows(tok, str(tiny / "text.txt"), "eval", 16, 3)
    text = str(tiny / "text.txt")
    configs = [QuantConfig(levels=lv, method="rtn", w2_layers="all", calib_source=text, calib_windows=4,
                           calib_seqlen=16) for lv in ("mnz", "std")]
    configs += [QuantConfig(levels="mnz", method="gptq", w2_layers="last:1", other_bits=16, calib_source=text,
                            calib_windows=2, calib_seqlen=16, calib_seed=seed) for seed in (0, 1)]
    for res, cfg in zip(run.results[1:], configs, strict=True):
        (direct,) = run_points([Point(cfg.label(), "quant", cfg)], model, tok, ev, progress=False)
        assert res.rows[0]["ppl"] == pytest.approx(direct["ppl"], rel=1e-6)
    assert run.results[0].rows[0]["ppl"] == pytest.approx(evaluate_ppl(model, ev, progress=False), rel=1e-6)

    CALLS.clear()
    again = run_grid(counted_run_point, pts, cache_dir=tmp_path / "cache", identity=S.identity, client=client,
                     code="test", progress=False)
    assert CALLS == [] and again.cached == len(pts)
    assert [r.rows for r in again.results] == [r.rows for r in run.results]

    df = tidy.long_table(again)
    seeds = df["calib_seed"].iloc[1:]
    assert len(df) == len(pts) and list(seeds.isna()) == [True, True, False, False] and list(seeds[2:]) == [0, 1]
    agg = tidy.aggregate(df)
    assert list(agg["n"]) == [1, 1, 1, 2]
    assert list(agg["setting"]) == ["W16A16", "W2A4KV4", "W2A4KV4", "W2[last:1]/W16A4KV4"]
    paths = tidy.write_outputs(tmp_path / "out", df, agg, again, S.resolved_yaml(spec), "tiny.yaml")
    names = {p.name for p in paths}
    assert set(tidy.FILES) <= names and "ppl_levels.png" in names
    assert "| mnz rtn W2A4KV4 |" in (tmp_path / "out" / "summary.md").read_text()


def test_unloadable_model_fails_its_points_only(tiny, tmp_path, client):
    from qift_hw.study.grid import run_grid

    bad = tmp_path / "broken"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    good = S.expand(S.parse_spec({"model": str(tiny / "model"), "text": str(tiny / "text.txt"),
                                  "evaluation": {"windows": 2, "seqlen": 16}, "points": [{"kind": "fp"}]}))
    broken = [{**good[0], "model": str(bad)}]
    run = run_grid(points_mod.run_point, good + broken, cache_dir=tmp_path / "cache", identity=S.identity,
                   client=client, code="test", progress=False)
    assert run.results[0].error is None and run.results[1].error.startswith("QiftError: cannot load model")
    assert len(list((tmp_path / "cache").glob("*.json"))) == 1  # the finished point is kept


def test_long_table_counts_resumed_layers():
    """A point that resumed finished layers from its run folder reports their number (an int), as run_points does."""
    from qift_hw.study.grid import GridRun, PointResult

    spec = S.parse_spec({"points": [{"levels": "mnz", "methods": "gptq", "w2_layers": "all"}],
                         "calibration": {"seeds": [0, 1]}})
    pts = S.expand(spec)
    results = [PointResult(i, p, [{"ppl": 70.0 + i, "resumed_layers": n}]) for i, (p, n) in enumerate(zip(pts, (30, 0)))]
    df = tidy.long_table(GridRun(results, "run_point", "test", None))
    assert list(df["resumed_layers"]) == [30, 0] and list(df["ppl"]) == [70.0, 71.0]


@pytest.mark.parametrize("spread, log", [((1000.0, 4000.0, 60000.0), True), ((110.0, 130.0, 150.0), False)])
def test_calibration_curve_goes_logarithmic_with_min_max_bars_when_seeds_span_widely(tmp_path, monkeypatch,
                                                                                     spread, log):
    """A std-like point whose seeds span 60x must not get a linear axis with a +-std bar below zero."""
    import pandas as pd

    from qift_hw.study import spec_plots

    rows = []
    for w, vals in ((8, spread), (32, (70.0, 72.0, 75.0))):
        rows += [{"point_id": f"p{w}", "kind": "quant", "label": "std", "setting": "W2A4KV4", "levels": "std",
                  "method": "gptq", "calib_tokens": w * 512, "ppl": v} for v in vals]
    figs = []
    monkeypatch.setattr(spec_plots, "save_figure", lambda fig, path, dpi: figs.append(fig) or Path(path))
    spec_plots.plot_calibration(tidy.aggregate(pd.DataFrame(rows)), tmp_path / "c.png")
    (ax,) = figs[0].axes
    assert ax.get_yscale() == ("log" if log else "linear")
    bars = [seg for coll in ax.collections for seg in coll.get_segments() if seg[0, 0] == 8 * 512]
    lo, hi = min(s[:, 1].min() for s in bars), max(s[:, 1].max() for s in bars)
    if log:
        assert (lo, hi) == (spread[0], spread[-1])
    else:
        sd = float(np.std(spread, ddof=1))
        assert lo == pytest.approx(np.mean(spread) - sd) and hi == pytest.approx(np.mean(spread) + sd)
