"""The architecture file (presets, overrides, one-line errors) and the workloads built from models and GEMM lists."""

from __future__ import annotations

import pytest

from qift_hw.core.errors import QiftError
from qift_hw.core.shapes import load_model_shape
from qift_hw.sim.arch import Arch, arch_from_data, list_presets, load_arch
from qift_hw.sim.workload import gemm_csv_workload, model_workload, parse_format_map, weight_bytes


def test_presets_load_and_the_issue_names_exist():
    names = list_presets()
    assert {"edge", "hbm", "scalesim8"} <= set(names)
    for n in names:
        a = load_arch(n)
        assert a.name == n and a.array.rows >= 1
    edge, hbm = load_arch("edge"), load_arch("hbm")
    assert edge.dram.gbps < 50 < 500 < hbm.dram.gbps  # LPDDR-class against HBM-class


def test_overrides_and_digest():
    a = load_arch("edge", {"array.rows": 64, "dram.gbps": 32.5, "buffers.weight.kib": 512})
    assert (a.array.rows, a.array.cols, a.dram.gbps, a.buffers.weight.kib) == (64, 32, 32.5, 512)
    assert a.bytes_per_cycle == pytest.approx(32.5e9 / (a.clock_mhz * 1e6))
    assert a.digest() != load_arch("edge").digest()
    assert load_arch("edge").digest() == load_arch("edge").digest()
    assert load_arch(a) is a


def test_yaml_file_and_pe_map(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("array: {rows: 8, cols: 4}\npe: {pot_mnz: int8}\n")
    a = load_arch(p)
    assert a.name == "mine" and (a.array.rows, a.array.cols) == (8, 4)
    assert a.pe_of("pot_mnz") == "int8"
    assert a.pe_of("mnz") == "mnz" and a.pe_of("int3") == "int4" and a.pe_of("int8") == "int8"


@pytest.mark.parametrize("text, needle", [
    ("array: {rows: -1}\n", "array.rows"),
    ("dataflow: rs\n", "dataflow"),
    ("colour: blue\n", "unknown field colour"),
    ("buffers: {weight: {kib: 0}}\n", "buffers.weight.kib"),
    ("pe: {pot_mnz: int9}\n", "int9"),
    ("pe: {nosuchset: int8}\n", "nosuchset"),
    ("array: [1, 2\n", "not valid YAML"),
    ("- 1\n- 2\n", "must be a mapping"),
])
def test_bad_architecture_files_give_one_line(tmp_path, text, needle):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(QiftError) as e:
        load_arch(p)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_unknown_preset_and_bad_override():
    with pytest.raises(QiftError, match="unknown accelerator preset"):
        load_arch("nosuch")
    with pytest.raises(QiftError, match="not a section"):
        load_arch("edge", {"clock_mhz.x": 1})


def _smol():
    return load_model_shape("smollm2")


def test_model_workload_counts_every_mac_of_the_model():
    s = _smol()
    for phase, seq, batch in (("prefill", 64, 1), ("prefill", 16, 3), ("decode", 100, 2)):
        w = model_workload(s, phase, "pot_mnz", seqlen=seq, batch=batch)
        M = batch * (seq if phase == "prefill" else 1)
        assert w.tokens == M
        lin = sum(op.macs * op.count for op in w.ops if op.kind == "linear")
        h, i, d = s.hidden, s.intermediate, s.head_dim
        per_tok = h * s.heads * d * 2 + 2 * h * s.kv_heads * d + 3 * h * i  # q,o + k,v + gate,up,down
        assert lin == M * per_tok * s.layers
        kv_len = seq if phase == "prefill" else seq + 1
        att = sum(op.macs * op.count for op in w.ops if op.kind == "attention")
        per_seq = seq if phase == "prefill" else 1
        assert att == 2 * per_seq * kv_len * d * s.heads * s.layers * batch
        head = [op for op in w.ops if op.kind == "lm_head"]
        assert head[0].macs == M * h * s.vocab and head[0].level_set == "int8"


def test_decode_kv_cache_bytes():
    s = load_model_shape("llama3-8b")  # grouped KV heads: 8 of 32
    w = model_workload(s, "decode", "int4", seqlen=1000, context=999)
    qk = next(op for op in w.ops if op.name == "attn_qk")
    assert qk.N == 1000
    per_head_tok = s.head_dim * 4 / 8 + 8  # 4-bit values + FP32 scale and zero
    # the whole K cache of one layer is read once per step: kv_heads heads x 1000 tokens
    assert qk.kv_read_bytes * s.heads == pytest.approx(s.kv_heads * 1000 * per_head_tok)


def test_format_map_per_layer():
    s = _smol()
    fmap = {}
    for i in range(s.layers):
        for n, *_ in s.linears():
            part = "self_attn" if n[0] in "qkvo" else "mlp"
            fmap[f"model.layers.{i}.{part}.{n}"] = "int4" if i < 10 else "pot_mnz"
    w = model_workload(s, "decode", fmap)
    q = [op for op in w.ops if op.name == "q_proj"]
    assert {(op.level_set, op.count, op.layers) for op in q} == {("int4", 10, "0-9"), ("pot_mnz", 20, "10-29")}
    assert w.format == "mixed"
    with pytest.raises(QiftError, match="lacks"):
        parse_format_map({k: v for k, v in fmap.items() if "layers.3." not in k}, s)
    with pytest.raises(QiftError, match="another model"):
        parse_format_map({**fmap, "model.layers.40.mlp.up_proj": "int4"}, s)


def test_weight_bytes_are_packed():
    s = _smol()
    w = model_workload(s, "decode", "pot_mnz")
    q = next(op for op in w.ops if op.name == "q_proj")
    assert weight_bytes(q) == 576 * 576 // 4 + 4 * 576
    w3 = model_workload(s, "decode", "int3")
    d = next(op for op in w3.ops if op.name == "down_proj")
    assert weight_bytes(d) == 576 * (1536 * 3 // 8) + 4 * 576


def test_gemm_csv(tmp_path):
    p = tmp_path / "topo.csv"
    p.write_text("Layer, M, N, K,\nfc1, 64, 128, 256,\nfc2, 1, 10, 20,\n")
    w = gemm_csv_workload(p, "int8")
    assert [(o.name, o.M, o.K, o.N, o.level_set) for o in w.ops] == [("fc1", 64, 256, 128, "int8"),
                                                                     ("fc2", 1, 20, 10, "int8")]
    bad = tmp_path / "bad.csv"
    bad.write_text("Layer, M, K\nx, 1, 2\n")
    with pytest.raises(QiftError, match="lacks column"):
        gemm_csv_workload(bad)
    neg = tmp_path / "neg.csv"
    neg.write_text("Layer,M,N,K\nx,0,2,3\n")
    with pytest.raises(QiftError, match=">= 1"):
        gemm_csv_workload(neg)


def test_bad_workload_arguments():
    s = _smol()
    with pytest.raises(QiftError, match="phase"):
        model_workload(s, "train")
    with pytest.raises(QiftError, match="batch"):
        model_workload(s, "decode", batch=0)
    with pytest.raises(QiftError, match="level set"):
        model_workload(s, "decode", "int5")
    assert isinstance(load_arch(), Arch)


def test_accelerator_doc_tables_are_current():
    """docs/accelerator.md's preset figures and field table are what the model gives now."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, str(root / "sw" / "accelerator_doc_tables.py"), "--check"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_clock_and_luts_from_place_and_route():
    """clock_from_pnr runs each format at its PE's post-route Fmax (multiplier in LUTs) read from rtl_pnr.json."""
    import json
    from pathlib import Path

    from qift_hw.sim.accelerator import estimate

    pnr = Path(__file__).resolve().parents[1] / "docs" / "results" / "rtl_pnr.json"
    rows = json.loads(pnr.read_text())["rows"]
    pe = {}
    for r in rows:
        if r.get("what") == "pe" and r["acc_bits"] == 32 and r["dut_mult18"] == 0:
            pe.setdefault(r["kind"], r)
    arch = load_arch("edge", {"clock_from_pnr": True, "array.rows": 8, "array.cols": 8})
    res = estimate(arch, load_model_shape("smollm2"), levels=("pot_mnz", "int8"), phases=("prefill",), seqlen=32)
    by = {r["format"]: r for r in res["summary"]}
    for fmt in ("pot_mnz", "int8"):
        assert by[fmt]["clock_mhz"] == pe[fmt]["fmax_median"]
        assert by[fmt]["array_luts"] == pe[fmt]["dut_luts"] * 64
        assert by[fmt]["seconds"] == pytest.approx(by[fmt]["cycles"] / (pe[fmt]["fmax_median"] * 1e6))
    with pytest.raises(QiftError, match="pnr_json"):
        arch_from_data({"clock_from_pnr": True})
