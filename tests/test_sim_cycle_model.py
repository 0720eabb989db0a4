"""Cycle and traffic model: closed forms against the cycle-stepped array, model totals, and the estimate."""

import json

import numpy as np
import pytest

from qift_hw.core.errors import QiftError
from qift_hw.sim.array import array_gemm
from qift_hw.sim.cycle_model import HwConfig, gemm_row, had_cycles, model_report, ws_m_tile
from qift_hw.core.shapes import MODELS, load_model_shape


@pytest.mark.parametrize("dataflow", ["ws", "os"])
@pytest.mark.parametrize("M,K,N,R,C", [(5, 9, 7, 4, 3), (1, 16, 8, 4, 4), (9, 5, 3, 2, 5)])
def test_gemm_row_cycles_equal_stepped_array(dataflow, M, K, N, R, C):
    # SRAMs sized so that the WS chunking really splits M (m_tile = 4 rows of C 32-bit partial sums)
    hw = HwConfig(rows=R, cols=C, dataflow=dataflow, out_sram_kib=4 * C * 4 / 1024)
    row = gemm_row("g", M, K, N, 2, hw)
    mt = ws_m_tile(M, K, hw) if dataflow == "ws" else None
    rng = np.random.default_rng(M + K)
    _, _, cycles = array_gemm(rng.integers(-8, 8, (M, K)), rng.integers(0, 4, (N, K)), R, C, dataflow, m_tile=mt)
    assert row.compute_cycles == cycles
    assert row.macs == M * K * N
    assert 0 < row.util <= 1


def test_model_report_totals_and_formats():
    shape = MODELS["smollm2"]
    hw = HwConfig(dataflow="os", dram_gbps=16)
    reps = {b: model_report(shape, hw, b, "decode", seq=256) for b in (2, 4, 8)}
    lin_macs = sum(K * N for _, K, N, _ in shape.linears()) * shape.layers
    rows = reps[2]["rows"]
    assert sum(r["macs"] * r["count"] for r in rows if r["kind"] == "linear" and r["name"] != "lm_head") == lin_macs
    w_bytes = [sum(r["dram_read_bytes"] * r["count"] for r in reps[b]["rows"] if r["kind"] == "linear")
               for b in (2, 4, 8)]
    assert w_bytes[0] < w_bytes[1] < w_bytes[2]
    assert reps[2]["totals"]["cycles"] <= reps[8]["totals"]["cycles"]
    for r in rows:
        assert r["cycles"] == max(r["compute_cycles"], r["dram_cycles"])
    pre = model_report(shape, HwConfig(), 2, "prefill", seq=64)
    assert pre["totals"]["tokens"] == 64 and 0 < pre["totals"]["pe_util"] <= 1


def test_hadamard_cycles():
    """Vectors x ceil(n / lanes), one vector's fill, log2(2^k) butterflies, 1 K stage, 4 quantizer stages."""
    assert had_cycles(1, 64, 64) == 1 + 1 + 6 + 4
    assert had_cycles(10, 1536, 32) == 10 * 48 + 48 + 7 + 1 + 4
    assert had_cycles(0, 64, 8) == 0


def test_config_json_and_errors(tmp_path):
    cfg = {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 3, "num_attention_heads": 4,
           "num_key_value_heads": 2, "vocab_size": 1000, "model_type": "llama"}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    s = load_model_shape(str(tmp_path))
    assert (s.hidden, s.intermediate, s.layers, s.heads, s.kv_heads, s.head_dim) == (256, 768, 3, 4, 2, 64)
    with pytest.raises(QiftError, match="unknown model"):
        load_model_shape("nope-7b")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(QiftError, match="lacks"):
        load_model_shape(str(tmp_path / "bad.json"))
    with pytest.raises(QiftError):
        HwConfig(dataflow="rs")


def test_estimate_reports_every_format_and_phase():
    from qift_hw.sim.estimate import run_estimate

    shape = load_model_shape("smollm2")
    hw = HwConfig(rows=16, cols=16, dataflow="os")
    res = run_estimate(shape, hw, seqlen=64)
    assert set(res["reports"]) == {f"{f}_{p}" for f in ("w2", "w4", "w8") for p in ("prefill", "decode")}
    assert res["context"] == 64 and res["array"] == "16x16"
    for bits, fmt in ((2, "w2"), (4, "w4"), (8, "w8")):
        q = next(r for r in res["reports"][f"{fmt}_decode"]["rows"] if r["name"] == "q_proj")
        assert q["dram_read_bytes"] >= shape.hidden * shape.heads * shape.head_dim * bits // 8
    with pytest.raises(QiftError, match="pot_mnz"):
        run_estimate(shape, hw, seqlen=64, levels=["mnz"])


def test_estimate_pe_areas(tmp_path):
    from qift_hw.sim.estimate import run_estimate

    rows = [{"what": "pe", "params": {"kind": k, "acc_bits": 32}, "generic_cells": c, "ice40_lut4": c // 3}
            for k, c in (("pot_mnz", 300), ("int4", 400), ("int8", 700))]
    area = tmp_path / "area.json"
    area.write_text(json.dumps({"rows": rows}))
    res = run_estimate(load_model_shape("smollm2"), HwConfig(rows=8, cols=8), seqlen=16, area_json=area)
    per = res["pe_area"]["per_format"]
    assert per["w2"]["array_generic_cells"] == 300 * 64 and per["w8"]["pe"] == "int8"
    with pytest.raises(QiftError, match="rtl area"):
        run_estimate(load_model_shape("smollm2"), HwConfig(rows=8, cols=8), seqlen=16, area_json=tmp_path / "no.json")
