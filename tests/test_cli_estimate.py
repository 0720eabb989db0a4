"""`qift-hw estimate` on the architecture file, through the real entry point: the run folder and its stable files,
the older flags and `--set` as architecture fields, per-layer formats from a layer map, and bad input (one line,
exit 2, nothing written)."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from qift_hw.study.accel_report import LAYER_COLUMNS, OUTPUT_FILES, SUMMARY_COLUMNS, arch_field_rows

ROOT = Path(__file__).resolve().parents[1]
SLOW = pytest.mark.slow
"""Bad-input cases beyond one representative of each kind (every subprocess costs seconds)."""
STABLE_SUMMARY = ("format", "phase", "tokens", "cycles", "tokens_per_s", "energy_per_token_uj", "bound")
"""The columns issue 11 promises scripts in summary.csv."""
SMOLLM2_LAYERS = 30
SMOLLM2_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                   "mlp.up_proj", "mlp.down_proj")


def qift(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qift_hw", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def files_under(folder: Path) -> set[Path]:
    return {p.relative_to(folder) for p in folder.rglob("*") if p.is_file()}


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path) as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames), list(reader)


def assert_one_line_error(res: subprocess.CompletedProcess, *words: str) -> None:
    assert res.returncode == 2, (res.returncode, res.stdout[-1500:], res.stderr[-1500:])
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert all(w in lines[0] for w in words), lines[0]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("cwd")
    res = qift(cwd, "estimate", "--model", "smollm2")
    return cwd, res


def test_run_folder_holds_the_stable_files(default_run):
    cwd, res = default_run
    assert res.returncode == 0, res.stderr
    (folder,) = {p.parent for p in files_under(cwd)}
    assert folder.parts[:2] == ("runs", "estimate")
    for setting in ("arch-edge", "model-smollm2", "levels-pot-mnz+int4+int8", "phase-both", "seqlen-512", "context-512",
                    "batch-1"):
        assert setting in folder.name
    names = {p.name for p in files_under(cwd)}
    assert names == set(OUTPUT_FILES)
    head, rows = read_csv(cwd / folder / "summary.csv")
    assert tuple(head[:len(STABLE_SUMMARY)]) == STABLE_SUMMARY
    assert [(r["format"], r["phase"]) for r in rows] == [(f, p) for f in ("pot_mnz", "int4", "int8")
                                                         for p in ("prefill", "decode")]
    assert all(r["bound"] in ("compute", "dram", "buffer") for r in rows)
    lhead, lrows = read_csv(cwd / folder / "layers.csv")
    assert set(LAYER_COLUMNS) <= set(lhead) and tuple(lhead[:len(LAYER_COLUMNS)]) == LAYER_COLUMNS
    # one row per op of the workload: 7 linears + 2 Hadamard + 2 attention + lm_head, per format and phase
    assert len(lrows) == 12 * 6
    data = json.loads((cwd / folder / "estimate.json").read_text())
    assert data["provenance"]["command"].startswith("qift-hw estimate")
    arch = yaml.safe_load((cwd / folder / "arch.yaml").read_text())
    edge = yaml.safe_load((ROOT / "sim" / "accelerators" / "edge.yaml").read_text())
    assert arch == data["arch"]
    for key in ("array", "dataflow", "decode_dataflow", "clock_mhz", "dram"):
        assert arch[key] == edge[key], key
    assert data["arch_digest"][:10] in folder.name
    md = (cwd / folder / "summary.md").read_text()
    assert "| format |" in md and "Provenance:" in md
    assert set(SUMMARY_COLUMNS[:7]) == set(STABLE_SUMMARY)


def test_old_flags_and_set_map_onto_the_architecture(tmp_path):
    res = qift(tmp_path, "estimate", "--array", "16x8", "--dataflow", "os", "--clock-mhz", "500", "--dram-gbps", "8",
               "--sram-kib", "64,96,32", "--set", "buffers.weight.double_buffered=false", "--set", "timing=v1",
               "--phase", "decode", "--no-plots", "--out", "a")
    assert res.returncode == 0, res.stderr
    arch = yaml.safe_load((tmp_path / "a" / "arch.yaml").read_text())
    assert (arch["array"]["rows"], arch["array"]["cols"]) == (16, 8)
    assert arch["dataflow"] == "os" and arch["clock_mhz"] == 500 and arch["dram"]["gbps"] == 8
    assert [arch["buffers"][b]["kib"] for b in ("act", "weight", "out")] == [64, 96, 32]
    assert arch["buffers"]["weight"]["double_buffered"] is False and arch["timing"] == "v1"
    assert {p.name for p in files_under(tmp_path / "a")} == {"summary.csv", "layers.csv", "estimate.json",
                                                             "arch.yaml", "summary.md"}
    # the same fields through --set give the same architecture and the same rows
    res2 = qift(tmp_path, "estimate", "--set", "array.rows=16", "--set", "array.cols=8", "--set", "dataflow=os",
                "--set", "clock_mhz=500", "--set", "dram.gbps=8", "--set", "buffers.act.kib=64", "--set",
                "buffers.weight.kib=96", "--set", "buffers.out.kib=32", "--set",
                "buffers.weight.double_buffered=false", "--set", "timing=v1", "--phase", "decode", "--no-plots",
                "--out", "b")
    assert res2.returncode == 0, res2.stderr
    a, b = (json.loads((tmp_path / d / "estimate.json").read_text()) for d in ("a", "b"))
    assert a["arch_digest"] == b["arch_digest"] and a["summary"] == b["summary"]


def _gemm_csv(path: Path, header: str = "Layer, M, N, K,") -> Path:
    path.write_text(f"{header}\nfc1, 64, 256, 512,\nfc2, 1, 512, 256,\n")
    return path


def test_gemm_csv_workload(tmp_path):
    _gemm_csv(tmp_path / "g.csv")
    res = qift(tmp_path, "estimate", "--gemm-csv", "g.csv", "--levels", "pot_mnz,int8", "--no-plots", "--out", "o")
    assert res.returncode == 0, res.stderr
    _, rows = read_csv(tmp_path / "o" / "summary.csv")
    assert [(r["format"], r["phase"]) for r in rows] == [("pot_mnz", "gemm"), ("int8", "gemm")]
    _, lrows = read_csv(tmp_path / "o" / "layers.csv")
    assert [(r["layer"], int(r["M"]), int(r["K"]), int(r["N"])) for r in lrows[:2]] == [("fc1", 64, 512, 256),
                                                                                         ("fc2", 1, 256, 512)]


def _results_json(path: Path, int4_layers: range, layers: int = SMOLLM2_LAYERS, model: str = "smollm2") -> Path:
    linears = [{"layer": i, "name": f"model.layers.{i}.{n}", "level_set": "int4" if i in int4_layers else "pot_mnz"}
               for i in range(layers) for n in SMOLLM2_LINEARS]
    path.write_text(json.dumps({"meta": {"model": model}, "rows": [{"label": "fp", "kind": "fp"},
                                                                     {"label": "mixed", "linears": linears}]}))
    return path


def test_layer_map_sets_each_layers_format(tmp_path):
    _results_json(tmp_path / "results.json", range(0, 15))
    res = qift(tmp_path, "estimate", "--model", "smollm2", "--levels", "pot_mnz,int4", "--layer-map", "results.json",
               "--no-plots", "--out", "o")
    assert res.returncode == 0, res.stderr
    _, rows = read_csv(tmp_path / "o" / "summary.csv")
    by = {(r["format"], r["phase"]): r for r in rows}
    label = "map:int4+pot_mnz"
    assert {f for f, _ in by} == {"pot_mnz", "int4", label}
    for phase in ("prefill", "decode"):
        assert (label, phase) in by
    # decode streams the weights from DRAM: the half-W2 map sits strictly between uniform W2 and uniform W4
    w2, w4, mix = (float(by[(f, "decode")]["tokens_per_s"]) for f in ("pot_mnz", "int4", label))
    assert w4 < mix < w2
    e2, e4, emix = (float(by[(f, "decode")]["energy_per_token_uj"]) for f in ("pot_mnz", "int4", label))
    assert e2 < emix < e4
    _, lrows = read_csv(tmp_path / "o" / "layers.csv")
    q = [r for r in lrows if r["format"] == label and r["phase"] == "decode" and r["layer"] == "q_proj"]
    assert sorted((r["level_set"], r["layers"], int(r["count"])) for r in q) == [("int4", "0-14", 15),
                                                                                  ("pot_mnz", "15-29", 15)]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A quantized 1-layer tiny LLaMA exported as the pipeline exports (RTN, pot_mnz)."""
    from qift_hw.algo.checkpoint import save_quantized
    from qift_hw.algo.config import QuantConfig
    from qift_hw.algo.models import tiny_llama
    from qift_hw.algo.quantize import quantize_model

    model = tiny_llama(seed=3, layers=1)
    qm = quantize_model(model, None, QuantConfig(levels="pot_mnz", method="rtn", scale_method="maxabs"),
                        progress=False)
    return save_quantized(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", qm)


def test_checkpoint_layer_map(tmp_path, tiny_checkpoint):
    """Without --model the checkpoint's own config is the model; with another --model: one clear error."""
    res = qift(tmp_path, "estimate", "--layer-map", str(tiny_checkpoint), "--levels", "int8", "--phase", "decode",
               "--no-plots", "--out", "o")
    assert res.returncode == 0, res.stderr
    _, lrows = read_csv(tmp_path / "o" / "layers.csv")
    fmts = {r["format"] for r in lrows}
    assert fmts == {"int8", "map:pot_mnz"}
    assert {int(r["K"]) for r in lrows if r["layer"] == "q_proj"} == {64}
    bad = qift(tmp_path, "estimate", "--model", "smollm2", "--layer-map", str(tiny_checkpoint), "--out", "bad")
    assert_one_line_error(bad, "another model", "smollm2")
    assert not (tmp_path / "bad").exists()


BAD_YAML = "array: {rows: 32, cols: [\n"
UNKNOWN_FIELD = "array: {rows: 32, cols: 32}\ndram: {gbps: 16, latency_ns: 80}\n"
NEGATIVE = "array: {rows: -4, cols: 32}\n"


@pytest.mark.parametrize("setup,args,words", [
    pytest.param({}, ("--set", "array.depth=3"), ("--set array.depth=3", "unknown field array.depth"), id="set-key"),
    pytest.param({}, ("--set", "dram.gbps"), ("--set", "field.path=value"), id="set-form", marks=SLOW),
    pytest.param({}, ("--set", "dram.gbps=-5"), ("--set dram.gbps=-5", "dram.gbps"), id="set-negative", marks=SLOW),
    pytest.param({"a.yaml": BAD_YAML}, ("--arch", "a.yaml"), ("a.yaml", "not valid YAML"), id="malformed-yaml"),
    pytest.param({"a.yaml": UNKNOWN_FIELD}, ("--arch", "a.yaml"), ("unknown field dram.latency_ns",),
                 id="unknown-field"),
    pytest.param({"a.yaml": NEGATIVE}, ("--arch", "a.yaml"), ("array.rows", "-4"), id="negative-size"),
    pytest.param({}, ("--arch", "nosuch"), ("nosuch", "edge"), id="unknown-preset", marks=SLOW),
    pytest.param({"g.csv": "Layer, M, K,\nfc1, 4, 8,\n"}, ("--gemm-csv", "g.csv"), ("g.csv", "lacks column", "N"),
                 id="gemm-columns"),
    pytest.param({"r.json": "other"}, ("--model", "llama2-7b", "--layer-map", "r.json"),
                 ("another model",), id="results-other-model"),
    pytest.param({}, ("--levels", "nf2"), ("nf2", "no hardware PE"), id="level-set-without-pe", marks=SLOW),
    pytest.param({}, ("--phase", "train"), ("--phase", "train"), id="phase", marks=SLOW),
    pytest.param({}, ("--batch", "0"), ("--batch",), id="batch", marks=SLOW),
    pytest.param({}, ("--lm-head-bits", "-8"), ("--lm-head-bits", "-8"), id="old-lm-head-bits", marks=SLOW),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, setup, args, words):
    for name, text in setup.items():
        if text == "other":
            _results_json(tmp_path / name, range(0, 15))
        else:
            (tmp_path / name).write_text(text)
    before = files_under(tmp_path)
    res = qift(tmp_path, "estimate", *args)
    assert_one_line_error(res, *words)
    assert files_under(tmp_path) == before and not (tmp_path / "runs").exists()


def test_docs_list_every_architecture_field():
    """docs/accelerator.md's field table is the one generated from the schema (regenerate with
    `python -m qift_hw.study.accel_report`), so it names every field of the architecture file."""
    from qift_hw.study.accel_report import arch_field_table

    doc = (ROOT / "docs" / "accelerator.md").read_text()
    assert arch_field_table() in doc
    for row in arch_field_rows():
        assert f"`{row['field']}`" in doc
