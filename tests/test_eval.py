"""Perplexity against a direct per-token computation, and bad windows."""

import math

import pytest
import torch

from qift_hw.core.errors import QiftError
from qift_hw.algo.evaluate import evaluate_ppl, window_nlls
from qift_hw.algo.models import tiny_llama

torch.set_num_threads(2)


def test_ppl_equals_direct_token_average():
    model = tiny_llama(seed=1, layers=1)
    win = torch.randint(0, 256, (3, 24), generator=torch.Generator().manual_seed(0))
    total, count = 0.0, 0
    with torch.no_grad():
        for w in win:
            logits = model(w[None]).logits[0].double()
            for t in range(len(w) - 1):
                p = torch.exp(logits[t] - logits[t].max())
                total += -math.log(float(p[w[t + 1]] / p.sum()))
                count += 1
    expected = math.exp(total / count)
    assert evaluate_ppl(model, win, progress=False) == pytest.approx(expected, rel=1e-5)
    assert evaluate_ppl(model, win, batch_size=2, progress=False) == pytest.approx(expected, rel=1e-5)
    assert window_nlls(model, win, progress=False).shape == (3,)


@pytest.mark.parametrize("bad", [torch.zeros(0, 8, dtype=torch.long), torch.zeros(2, 1, dtype=torch.long),
                                 torch.zeros(8, dtype=torch.long)])
def test_bad_windows(bad):
    with pytest.raises(QiftError):
        evaluate_ppl(tiny_llama(layers=1), bad, progress=False)


def test_full_preset_has_the_paper_grid():
    from qift_hw.study.experiments import preset_points
    from qift_hw.algo.config import QuantConfig

    pts = preset_points("full", QuantConfig(), mixed="last:15")
    quant = [p for p in pts if p.kind == "quant"]
    grid = {(p.config.levels, p.config.method, p.config.w2_layers, p.config.a_bits) for p in quant
            if p.config.w2_layers != "none"}
    assert len(grid) == 7 * 2 * 3
    refs = {(p.config.other_bits, p.config.method) for p in quant if p.config.w2_layers == "none"}
    assert refs == {(4, "rtn"), (4, "gptq"), (3, "rtn"), (3, "gptq")}
    assert [p.kind for p in pts[:3]] == ["fp", "rotated_fp", "rotated_fp"]
    demo = preset_points("demo", QuantConfig(), mixed="last:15")
    assert [p.label for p in demo if p.kind == "quant"] == [
        "std gptq W2A4KV4", "mnz gptq W2A4KV4", "pot_mnz gptq W2A4KV4", "mnz gptq W2[last:15]/W4A4KV4"]


def test_report_tables(tmp_path):
    from qift_hw.study.report import pivot_table, write_report

    rows = [
        {"label": "FP", "kind": "fp", "ppl": 9.3, "weights": "W16", "a_bits": 16, "kv_bits": 16},
        {"label": "mnz gptq", "kind": "quant", "levels": "mnz", "method": "gptq", "ppl": 58.4, "weights": "W2",
         "a_bits": 4, "kv_bits": 4, "layer_rel_error": [0.1, 0.3], "mean_rel_error": 0.2},
        {"label": "std rtn", "kind": "quant", "levels": "std", "method": "rtn", "ppl": float("inf"), "weights": "W2",
         "a_bits": 4, "kv_bits": 4},
    ]
    grid = pivot_table(rows)
    assert "| mnz | - | 58.40 |" in grid and "| std | inf | - |" in grid
    md = write_report(rows, tmp_path, {"title": "t"}).read_text()
    assert "| FP | W16A16 |" in md and "0.300 (1)" in md
    assert (tmp_path / "results.json").is_file() and (tmp_path / "residuals.png").is_file()


def _part(command, rows, windows=8):
    return {"meta": {"command": command, "model": "smollm2", "text": "pydoc", "eval_windows": windows,
                     "seqlen": 2048, "device": "cpu"}, "rows": rows}


def _qrow(label, levels, method, ppl, a_bits=4):
    return {"label": label, "kind": "quant", "levels": levels, "method": method, "ppl": ppl, "weights": "W2",
            "a_bits": a_bits, "kv_bits": a_bits, "config": {"levels": levels, "method": method, "a_bits": a_bits}}


def test_merge_results_keeps_each_run_once_and_refuses_other_tokens():
    from qift_hw.core.errors import QiftError
    from qift_hw.study.report import merge_results, pivot_table

    fp = {"label": "FP", "kind": "fp", "ppl": 10.9, "weights": "W16", "a_bits": 16, "kv_bits": 16, "config": None}
    a = _part("eval a", [fp, _qrow("mnz rtn W2A4KV4", "mnz", "rtn", 9000.0)])
    b = _part("eval b", [dict(fp, ppl=11.0), _qrow("mnz gptq W2A4KV4", "mnz", "gptq", 70.0),
                         _qrow("mnz gptq W2A16", "mnz", "gptq", 30.0, a_bits=16)])
    rows, meta = merge_results([a, b])
    assert [r["label"] for r in rows] == ["FP", "mnz rtn W2A4KV4", "mnz gptq W2A4KV4", "mnz gptq W2A16"]
    assert rows[0]["ppl"] == 10.9 and meta["commands"] == ["eval a", "eval b"] and meta["eval_windows"] == 8
    assert "| mnz | 9000.00 | 70.00 | 30.00 |" in pivot_table(rows)  # settings in order of first appearance
    with pytest.raises(QiftError, match="eval_windows"):
        merge_results([a, _part("eval c", [fp], windows=27)])


def test_report_cli_merges_files_and_rejects_bad_ones(monkeypatch, capsys, tmp_path):
    import json
    import sys

    from qift_hw.cli import main

    def cli(*args):
        monkeypatch.setattr(sys, "argv", ["qift-hw", *args])
        try:
            main()
        except SystemExit as exc:
            return exc.code, capsys.readouterr()
        return 0, capsys.readouterr()

    (tmp_path / "a").mkdir()
    part_a = _part("eval a", [_qrow("std rtn W2A4KV4", "std", "rtn", 5e4)])
    (tmp_path / "a" / "results.json").write_text(json.dumps(part_a))
    (tmp_path / "b.json").write_text(json.dumps(_part("eval b", [_qrow("std gptq W2A4KV4", "std", "gptq", 98.5)])))
    code, out = cli("report", str(tmp_path / "a"), str(tmp_path / "b.json"), "--out", str(tmp_path / "m"))
    assert code == 0, out.err
    merged = json.loads((tmp_path / "m" / "results.json").read_text())
    assert [r["ppl"] for r in merged["rows"]] == [5e4, 98.5]
    assert "98.50" in (tmp_path / "m" / "results.md").read_text()
    (tmp_path / "bad.json").write_text("{not json")
    for bad in ("bad.json", "missing.json"):
        code, out = cli("report", str(tmp_path / bad), "--out", str(tmp_path / "m2"))
        assert code == 2 and out.err.startswith("error: ") and out.err.count("\n") == 1, out.err
