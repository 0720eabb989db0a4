"""The report's pictures: bits per weight by hand, the Pareto front against brute-force dominance, and every plot
drawn from the committed results files."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from qift_hw.core.errors import QiftError
from qift_hw.core.shapes import ModelShape, load_model_shape
from qift_hw.study import plots

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
TINY = ModelShape("tiny", hidden=8, intermediate=16, layers=2, heads=2, kv_heads=1, head_dim=4, vocab=10, tied=True)
# Per layer (N, K): q 8x8, k 4x8, v 4x8, o 8x8, gate 16x8, up 16x8, down 8x16 -> 576 weights, 64 output rows.


def test_bits_per_weight_uniform_w2_by_hand():
    # 576 weights of 2 bits and 64 scales of 32 bits per layer
    assert plots.bits_per_weight(["mnz", "mnz"], TINY) == pytest.approx((2 * 576 + 32 * 64) / 576)


def test_bits_per_weight_w2_w4_mix_by_hand():
    # layer 0 at 2 bits, layer 1 at 4 bits, 64 fp32 scales in each
    assert plots.bits_per_weight(["pot_mnz", "int4"], TINY) == pytest.approx(
        (2 * 576 + 4 * 576 + 2 * 32 * 64) / (2 * 576))


def test_float_model_megabytes_is_two_bytes_a_weight():
    # 2 layers x 576 linear weights + 10 x 8 tied embedding, 2 bytes each
    assert plots.model_megabytes([None, None], TINY) == pytest.approx((2 * 576 + 80) * 2 / 1e6)
    assert plots.bits_per_weight([None, None], TINY) == 16


def test_layer_count_mismatch_is_refused():
    with pytest.raises(QiftError, match="per-layer level sets"):
        plots.layer_level_sets({"kind": "quant", "label": "x", "layer_level_sets": ["mnz"] * 3}, 2)


def _rows(folder: str) -> tuple[list[dict], dict]:
    data = json.loads((RESULTS / folder / "results.json").read_text())
    return data["rows"], data["meta"]


def _dominated(p: dict, pts: list[dict]) -> bool:
    return any(q["act"] == p["act"] and q["bits"] <= p["bits"] and q["value"] <= p["value"]
               and (q["bits"] < p["bits"] or q["value"] < p["value"]) for q in pts)


def test_pareto_front_matches_brute_force_dominance():
    rows, _ = _rows("pipeline_cpu")
    rng = random.Random(0)
    sets = ["mnz", "int4", "int3", "std"]
    for i in range(40):  # random mixes with ties in bits and perplexity
        rows.append({"label": f"r{i}", "kind": "quant", "weights": "W2/W4", "levels": "mnz",
                     "a_bits": rng.choice([4, 16]), "kv_bits": 4, "ppl": float(rng.choice([30, 40, 50, 60, 70])),
                     "layer_level_sets": [rng.choice(sets) for _ in range(30)]})
    pts = plots.pareto_points(rows, load_model_shape("smollm2"))
    assert len(pts) == len(rows)
    assert [p["front"] for p in pts] == [not _dominated(p, pts) for p in pts]
    assert any(p["front"] for p in pts) and not all(p["front"] for p in pts)


def test_accuracy_front_keeps_the_most_accurate_at_each_size(tmp_path):
    rows = [{"label": n, "kind": "quant", "weights": "W2", "levels": ls, "a_bits": 4, "kv_bits": 4, "ppl": 50.0,
             "tasks": {"qift_lastword": acc}} for n, ls, acc in
            (("a", "mnz", 0.30), ("b", "std", 0.20), ("c", "int4", 0.25), ("d", "int4", 0.40), ("e", "int3", 0.35))]
    pts = plots.pareto_points(rows, TINY, task="qift_lastword")
    # b (2 bits) and c (4 bits) are beaten by a (2 bits, 0.30); e (3 bits) and d (4 bits) buy accuracy with bits
    assert {p["label"] for p in pts if p["front"]} == {"a", "e", "d"}
    assert plots.plot_pareto(rows, TINY, tmp_path / "acc.png", task="qift_lastword").is_file()


@pytest.mark.parametrize("folder", ["pipeline_cpu", "pipeline_h100"])
def test_report_plots_from_committed_results(folder, tmp_path):
    from qift_hw.study.report import write_plots

    rows, meta = _rows(folder)
    made = write_plots(rows, tmp_path, meta)
    names = {p.name for p in made}
    assert {"ppl.png", "pareto.png", "residuals.png", "sensitivity.png"} <= names
    for p in made:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_kurtosis_boxes_from_committed_stats(tmp_path):
    from qift_hw.study.analysis import STATES

    modules = json.loads((RESULTS / "analyze" / "stats.json").read_text())["modules"]
    out = plots.plot_kurtosis(modules, tmp_path / "kurtosis.png", STATES)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
