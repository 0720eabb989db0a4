"""v1 and Hadamard closed forms, model shapes from config.json, PE areas read from the RTL flow's report."""

import json

import pytest

from qift_hw.core.errors import QiftError
from qift_hw.core.shapes import load_model_shape
from qift_hw.sim.cycle_model import had_cycles
from qift_hw.sim.pe_area import pe_areas


def test_hadamard_cycles():
    """Parallel unit: one vector a cycle, then fill, log2(2^k) butterflies, 1 K stage, 4 quantizer stages.
    Lane unit (lanes < n), per vector: LOAD R + butterfly passes c (R + 1) + K stage K R + scale 9 + OUT R."""
    assert had_cycles(1, 64, 64) == 1 + 1 + 6 + 4
    assert had_cycles(5, 64, 128) == 5 + 1 + 6 + 4
    # n = 1536 = 12 x 128 on 32 lanes: R = 48 rows, c = 7 - 5 = 2 passes beyond the in-beat stages
    assert had_cycles(10, 1536, 32) == 10 * (48 + 2 * 49 + 12 * 48 + 9 + 48)
    # 48 lanes is no power of two: the unit is built with 32
    assert had_cycles(10, 1536, 48) == had_cycles(10, 1536, 32)
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


def test_pe_areas(tmp_path):
    rows = [{"what": "pe", "params": {"kind": k, "acc_bits": b}, "generic_cells": c, "ice40_lut4": c // 3}
            for k, c, b in (("pot_mnz", 300, 32), ("int4", 400, 32), ("int8", 700, 32), ("int8", 500, 16))]
    area = tmp_path / "area.json"
    area.write_text(json.dumps({"rows": rows}))
    assert pe_areas(area, 32) == {"pot_mnz": {"generic_cells": 300, "ice40_lut4": 100},
                                  "int4": {"generic_cells": 400, "ice40_lut4": 133},
                                  "int8": {"generic_cells": 700, "ice40_lut4": 233}}
    assert pe_areas(area, 16) == {"int8": {"generic_cells": 500, "ice40_lut4": 166}}
    with pytest.raises(QiftError, match="rtl area"):
        pe_areas(tmp_path / "no.json", 32)
