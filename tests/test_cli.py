"""The command line through its real entry point: one option name per concept, run folders by default (nothing
written to docs/results or the current folder), and the provenance record in every results file."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

from qift_hw.cli import app

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
PROVENANCE_KEYS = {"package", "version", "commit", "dirty", "libraries", "machine", "command", "utc"}


def qift(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """Run `python -m qift_hw ARGS` in ``cwd`` (the same entry point as the `qift-hw` console script)."""
    return subprocess.run([sys.executable, "-m", "qift_hw", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def files_under(folder: Path) -> set[Path]:
    return {p.relative_to(folder) for p in folder.rglob("*") if p.is_file()}


def options(*command: str) -> set[str]:
    """Every option flag of a command (``--x`` and ``--no-x`` forms)."""
    cmd = typer.main.get_command(app)
    for name in command:
        cmd = cmd.commands[name]
    return {o for p in cmd.params for o in (*p.opts, *p.secondary_opts) if o.startswith("--")}


def check_provenance(record: dict, *command_words: str) -> None:
    assert PROVENANCE_KEYS <= set(record)
    assert record["package"] == "qift-hw" and record["version"] != "unknown"
    assert len(record["commit"]) == 40 or record["commit"] == "unknown"
    assert {"torch", "transformers", "numba", "amaranth"} <= set(record["libraries"])
    assert record["libraries"]["torch"] and record["libraries"]["amaranth"]
    assert {"platform", "cpu", "cpu_count", "gpus"} <= set(record["machine"])
    assert record["command"].startswith("qift-hw ") and all(w in record["command"] for w in command_words)


@pytest.fixture(scope="module")
def estimate_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("cwd")
    before = files_under(RESULTS)
    res = qift(cwd, "estimate", "--model", "smollm2", "--array", "32x32", "--dataflow", "ws", "--seqlen", "512",
               "--area-json", str(RESULTS / "rtl_area.json"))
    return cwd, before, res


def test_estimate_without_out_writes_one_run_folder(estimate_run):
    cwd, before, res = estimate_run
    assert res.returncode == 0, res.stderr
    written = files_under(cwd)
    assert written and all(p.parts[0] == "runs" and p.parts[1] == "estimate" for p in written)
    folders = {p.parent for p in written}
    assert len(folders) == 1
    name = str(next(iter(folders)))
    for setting in ("arch-edge", "smollm2", "array-32x32", "dataflow-ws", "seqlen-512", "area-json-rtl-area"):
        assert setting in name
    assert files_under(RESULTS) == before


def test_estimate_records_provenance_and_area(estimate_run):
    cwd, _, res = estimate_run
    assert res.returncode == 0, res.stderr
    new = json.loads(next(cwd.rglob("estimate.json")).read_text())
    check_provenance(new["provenance"], "estimate", "--seqlen")
    assert new["arch"]["array"] == {"rows": 32, "cols": 32} and new["arch"]["area_json"].endswith("rtl_area.json")
    with open(next(cwd.rglob("summary.csv"))) as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["format"], r["phase"]) for r in rows] == [(f, p) for f in ("pot_mnz", "int4", "int8")
                                                         for p in ("prefill", "decode")]
    area = json.loads((RESULTS / "rtl_area.json").read_text())["rows"]
    cells = {r["params"]["kind"]: r["generic_cells"] for r in area
             if r.get("what") == "pe" and r["params"].get("acc_bits") == 32}
    for r in rows:
        assert int(float(r["array_cells"])) == cells[r["format"]] * 32 * 32


def test_estimate_rejects_old_and_bad_options(tmp_path):
    old = qift(tmp_path, "estimate", "--seq", "64")
    assert old.returncode != 0 and "--seq" in old.stderr
    bad = qift(tmp_path, "estimate", "--levels", "w2", "--seqlen", "16")
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0
    assert "pot_mnz" in bad.stderr and "int4" in bad.stderr
    arr = qift(tmp_path, "estimate", "--array", "32by32")
    assert arr.returncode == 2 and "32by32" in arr.stderr
    assert files_under(tmp_path) == set()


def test_levels_and_diagram_default_to_run_folders(tmp_path):
    before = files_under(RESULTS)
    res = qift(tmp_path, "levels")
    assert res.returncode == 0, res.stderr
    new = json.loads((tmp_path / "runs" / "levels" / "default" / "levels.json").read_text())
    check_provenance(new.pop("provenance"), "levels")
    old = json.loads((RESULTS / "levels.json").read_text())
    old.pop("provenance", None)
    assert new == old
    with open(tmp_path / "runs" / "levels" / "default" / "levels.csv") as fh:
        names = [r["name"] for r in csv.DictReader(fh)]
    assert names[:7] == ["std", "asym", "pm12", "mnz", "pot_mnz", "lloyd", "nf2"]
    res = qift(tmp_path, "rtl", "diagram")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "runs" / "rtl_diagram" / "default" / "rtl_block_diagram.png").is_file()
    assert all(p.parts[0] == "runs" for p in files_under(tmp_path))
    assert files_under(RESULTS) == before


def test_sim_trace_run_folder_and_names(tmp_path):
    res = qift(tmp_path, "sim", "trace", "--array", "2x3", "--levels", "mnz", "--seed", "3")
    assert res.returncode == 0, res.stderr
    (folder,) = {p.parent for p in files_under(tmp_path)}
    assert folder.parts[:2] == ("runs", "sim_trace") and "seed-3" in folder.name and "acc-bits-32" in folder.name
    meta = json.loads((tmp_path / folder / "trace.json").read_text())
    check_provenance(meta["provenance"], "sim", "trace")
    assert meta["acc_bits"] == 32 and meta["array"] == "2x3"


def test_one_name_per_concept():
    quant = {"--text", "--w2-layers", "--other-bits", "--calib-windows", "--calib-seqlen", "--calib-seed", "--a-bits",
             "--kv-bits", "--a-clip", "--kv-clip", "--rotate", "--no-rotate", "--rotation-seed", "--scale-method",
             "--act-order", "--true-sequential", "--one-pass", "--batch-size", "--device"}
    from qift_hw.cli.eval import QUANT_OPTIONS

    for cmd in ("eval", "sweep-ratio", "quantize"):
        opts = options(cmd)
        assert quant <= opts, (cmd, quant - opts)
        params = {p.name for p in typer.main.get_command(app).commands[cmd].params}
        assert set(QUANT_OPTIONS) <= params, (cmd, set(QUANT_OPTIONS) - params)
        assert "--seed" not in opts and "--json" not in opts
    assert {"--rotation-seed", "--device", "--out"} <= options("analyze") and "--seed" not in options("analyze")
    assert {"--levels", "--array", "--seqlen"} <= options("estimate")
    assert not {"--formats", "--seq"} & options("estimate")
    assert {"--levels", "--array", "--had-n", "--acc-bits"} <= options("rtl", "generate")
    assert not {"--kind", "--size"} & options("rtl", "generate")
    assert {"--levels", "--array-levels", "--array", "--had-n", "--had-quant", "--out"} <= options("rtl", "area")
    assert not {"--pe-kinds", "--array-kinds", "--sizes", "--hadamard"} & options("rtl", "area")
    assert {"--seed", "--out"} <= options("rtl", "verify") and "--json-out" not in options("rtl", "verify")
    assert {"--levels", "--array", "--seed", "--acc-bits"} <= options("sim", "trace")


def test_defaults_come_from_the_library():
    from qift_hw.algo.config import QuantConfig
    from qift_hw.cli.eval import quant_config
    from qift_hw.core import formats
    from qift_hw.sim.arch import Dram

    cfg = quant_config("pydoc", "cpu", {"a_clip": None, "kv_clip": None, "rotate": None})
    assert (cfg.a_clip, cfg.kv_clip, cfg.rotate) == (formats.ACT_CLIP, formats.KV_CLIP, True)
    assert (cfg.a_clip, cfg.kv_clip) == (0.9, 0.95)
    cfg = quant_config("pydoc", "cpu", {"a_clip": 0.8, "calib_seed": 5, "model": "x"}, levels="std")
    assert (cfg.a_clip, cfg.calib_seed, cfg.calib_source, cfg.device) == (0.8, 5, "pydoc", "cpu")
    assert QuantConfig().calib_seed == 0
    assert Dram().gbps == 16.0


def test_sweep_ratio_passes_every_quantization_option(monkeypatch):
    """sweep-ratio builds its runs from the same options as eval (clips, seeds, act-order, true-sequential)."""
    from typer.testing import CliRunner

    import qift_hw.cli.eval as cli_eval
    import qift_hw.study.experiments as experiments

    seen = {}

    def fake_run_points(points, *a, **kw):
        seen["configs"] = [p.config for p in points]

    monkeypatch.setattr(experiments, "run_points", fake_run_points)
    monkeypatch.setattr(cli_eval, "_setup", lambda *a: (None, None, __import__("torch").zeros(2, 8)))
    res = CliRunner().invoke(app, ["sweep-ratio", "--ratios", "0.3", "--method", "rtn", "--a-clip", "0.8",
                                   "--kv-clip", "0.85", "--rotation-seed", "7", "--calib-seed", "3", "--act-order",
                                   "--one-pass", "--device", "cpu", "--no-progress"])
    assert res.exit_code == 0, res.output
    (cfg,) = seen["configs"]
    assert (cfg.a_clip, cfg.kv_clip, cfg.rotation_seed, cfg.calib_seed) == (0.8, 0.85, 7, 3)
    assert cfg.act_order is True and cfg.true_sequential is False and cfg.levels == "ratio:0.3"


def test_report_files_carry_provenance_and_csv(tmp_path):
    from qift_hw.study.report import write_report

    rows = [{"label": "mnz gptq", "kind": "quant", "levels": "mnz", "method": "gptq", "ppl": 58.4, "weights": "W2",
             "a_bits": 4, "kv_bits": 4}]
    md = write_report(rows, tmp_path, {"title": "t", "command": "qift-hw eval --levels mnz"}).read_text()
    data = json.loads((tmp_path / "results.json").read_text())
    check_provenance(data["provenance"], "eval", "--levels")
    assert "Provenance: qift-hw" in md
    with open(tmp_path / "results.csv") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["setting"] == "W2A4KV4" and float(row["ppl"]) == 58.4


def test_analyze_without_out_writes_a_run_folder(tmp_path):
    from test_stats import _save_word_tokenizer

    from qift_hw.algo.models import tiny_llama

    folder = tmp_path / "model"
    tiny_llama(seed=0, hidden=64, intermediate=128).save_pretrained(folder)
    _save_word_tokenizer(folder)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    before = files_under(RESULTS)
    res = qift(cwd, "analyze", "--model", str(folder), "--rotation-seed", "2", "--device", "cpu", "--no-progress")
    assert res.returncode == 0, res.stderr
    written = files_under(cwd)
    assert {p.name for p in written} == {"stats.json", "stats.md", "stats.csv", "kurtosis.png", "qq.png"}
    (run,) = {p.parent for p in written}
    assert run.parts[:2] == ("runs", "analyze") and "rotation-seed-2" in run.name
    data = json.loads((cwd / run / "stats.json").read_text())
    check_provenance(data["provenance"], "analyze", "--rotation-seed")
    assert data["rotation"]["seed"] == 2
    with open(cwd / run / "stats.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(data["modules"]) == 14
    assert float(rows[0]["rotated_excess_kurtosis"]) == pytest.approx(data["modules"][0]["rotated"]["excess_kurtosis"])
    assert files_under(RESULTS) == before
