"""`scalesim_compute` against SCALE-Sim 3.0.0: a brute-force rebuild of its demand matrices, and its own outputs.

Three references, none of them the closed forms: (a) the demand matrices built fold by fold as
scalesim/compute/systolic_compute_{ws,os}.py does (operand slices padded with -1, fill/drain gap rows, skew),
whose row count minus one is SCALE-Sim's stall-free "Total Cycles"; (b) tests/data/scalesim_reference.json, the
real tool's COMPUTE and DETAILED_ACCESS reports on 20 small GEMMs (made by sw/scalesim_compare.py --reference);
(c) a slow test that runs the real tool when its venv (sw/scalesim_env.sh) exists.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qift_hw.core.errors import QiftError
from qift_hw.sim.cycle_model import os_gemm_cycles, ws_gemm_cycles
from qift_hw.sim.dataflow import gemm_compute
from qift_hw.sim.scalesim_compat import fold_rows, folds, scalesim_compute, scalesim_utilisation

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = json.loads((ROOT / "tests/data/scalesim_reference.json").read_text())


def _skew(m: np.ndarray) -> np.ndarray:
    rows, cols = m.shape
    out = np.full((rows + cols - 1, cols), -1)
    for c in range(cols):
        out[c:c + rows, c] = m[:, c]
    return out


def _pad_cols(m: np.ndarray, width: int) -> np.ndarray:
    return np.concatenate([m, np.full((m.shape[0], width - m.shape[1]), -1)], axis=1)


def _gap(rows: int, width: int) -> np.ndarray:
    return np.full((rows, width), -1)


def brute_force(dataflow: str, M: int, K: int, N: int, R: int, C: int) -> dict:
    """SCALE-Sim's per-fold demand matrices for GEMM operands ifmap (M x K), filter (K x N), ofmap (M x N)."""
    ifmap = np.arange(M * K).reshape(M, K)
    filt = np.arange(K * N).reshape(K, N) + 10_000_000
    ofmap = np.arange(M * N).reshape(M, N) + 20_000_000
    dem = {"ifmap": [], "filter": [], "ofmap": []}
    reads = dict.fromkeys(dem, 0)
    if dataflow == "ws":  # Sr = K on rows, Sc = N on columns, T = M in time
        for fc in range(math.ceil(N / C)):
            cols = slice(fc * C, min(fc * C + C, N))
            for fr in range(math.ceil(K / R)):
                ks = slice(fr * R, min(fr * R + R, K))
                a = ifmap[:, ks]
                reads["ifmap"] += a.size
                dem["ifmap"].append(_skew(np.concatenate([_gap(R, R), _pad_cols(a, R), _gap(C - 1, R)])))
                w = filt[ks, cols]
                reads["filter"] += w.size
                w = np.concatenate([_pad_cols(w, C), _gap(R - w.shape[0], C)])[::-1]
                dem["filter"].append(np.concatenate([w, _gap(R + C + M - 2, C)]))
                o = ofmap[:, cols]
                reads["ofmap"] += o.size
                dem["ofmap"].append(_skew(np.concatenate([_gap(2 * R - 1, C), _pad_cols(o, C)])))
    else:  # Sr = M on rows, Sc = N on columns, T = K in time
        for fc in range(math.ceil(N / C)):
            cols = slice(fc * C, min(fc * C + C, N))
            for fr in range(math.ceil(M / R)):
                ms = slice(fr * R, min(fr * R + R, M))
                a = ifmap[ms, :].T
                reads["ifmap"] += a.size
                dem["ifmap"].append(_skew(np.concatenate([_pad_cols(a, R), _gap(C - 1, R)])))
                w = filt[:, cols]
                reads["filter"] += w.size
                dem["filter"].append(_skew(np.concatenate([_pad_cols(w, C), _gap(R - 1, C)])))
                o = ofmap[ms, cols]
                reads["ofmap"] += o.size
                o = np.concatenate([_pad_cols(o, C), _gap(R - o.shape[0], C)])[::-1]
                reads["ofmap"] += o.shape[0] + o.shape[1]  # counted again per fold, as the OS module does
                dem["ofmap"].append(_skew(np.concatenate([_gap(K - 1, C), o])))
    rows = {k: sum(m.shape[0] for m in v) for k, v in dem.items()}
    assert len(set(rows.values())) == 1, rows
    return {"rows": rows["ifmap"], "folds": len(dem["ifmap"]), **reads}


dims = st.integers(1, 40)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(["ws", "os"]), dims, dims, dims, st.integers(1, 12), st.integers(1, 12))
def test_closed_form_equals_brute_force_demand_matrices(dataflow, M, K, N, R, C):
    ref = brute_force(dataflow, M, K, N, R, C)
    c = scalesim_compute(dataflow, M, K, N, R, C)
    assert c.cycles == ref["rows"] - 1
    assert (c.tiles, c.ii * c.tiles) == (ref["folds"], ref["rows"])
    assert (c.act_words, c.weight_words, c.out_words, c.psum_in_words) == \
           (ref["ifmap"], ref["filter"], ref["ofmap"], 0)


def _shape(case: dict) -> tuple:
    return tuple(case[k] for k in ("dataflow", "M", "K", "N", "R", "C"))


def _check_against_tool(case: dict) -> None:
    c = scalesim_compute(*_shape(case))
    assert case["full_total_cycles"] - case["full_stall_cycles"] == c.cycles, case
    assert (case["full_ifmap_sram_reads"], case["full_filter_sram_reads"], case["full_ofmap_sram_writes"]) == \
           (c.act_words, c.weight_words, c.out_words), case
    u = scalesim_utilisation(*_shape(case), stall_cycles=case["full_stall_cycles"])
    assert u.overall == pytest.approx(case["full_overall_util"], rel=1e-9)
    assert u.mapping_efficiency == pytest.approx(case["full_mapping_eff"], rel=1e-9)
    assert u.compute == pytest.approx(case["full_compute_util"], rel=1e-9)


@pytest.mark.parametrize("case", REFERENCE["cases"], ids=lambda c: "{}-{}x{}x{}-{}x{}".format(*_shape(c)))
def test_closed_form_equals_scalesim_reports(case):
    assert REFERENCE["scalesim"] == "3.0.0" and case["full_stall_cycles"] == 0
    _check_against_tool(case)


def test_reference_covers_edges():
    shapes = [_shape(c) for c in REFERENCE["cases"]]
    assert len(shapes) >= 20 and {s[0] for s in shapes} == {"ws", "os"}
    assert any(s[1] == 1 for s in shapes) and any(s[4] != s[5] for s in shapes)
    assert any(s[2] % s[4] and s[3] % s[5] for s in shapes)  # edge folds in both directions


def test_fold_helpers_and_zero_and_bad_input():
    assert folds("ws", 5, 20, 12, 8, 8) == 6 and fold_rows("ws", 5, 20, 8, 8) == 27
    assert folds("os", 5, 20, 12, 8, 8) == 2 and fold_rows("os", 5, 20, 8, 8) == 34
    assert scalesim_compute("os", 0, 4, 4, 8, 8).cycles == 0
    for bad in [("stream", 1, 1, 1, 8, 8), ("is", 1, 1, 1, 8, 8), ("ws", -1, 4, 4, 8, 8), ("ws", 1, 4, 4, 0, 8),
                ("os", 1.5, 4, 4, 8, 8)]:
        with pytest.raises(QiftError):
            scalesim_compute(*bad)


VENV_PY = ROOT / ".venv-scalesim/bin/python"


@pytest.mark.slow
@pytest.mark.skipif(not VENV_PY.is_file(), reason="no SCALE-Sim venv (sw/scalesim_env.sh)")
@pytest.mark.parametrize("shape", [("ws", 6, 19, 11, 4, 8), ("os", 21, 10, 9, 8, 4), ("ws", 40, 64, 70, 16, 16)])
def test_closed_form_equals_running_scalesim(shape):
    sys.path.insert(0, str(ROOT / "sw"))
    try:
        import scalesim_compare
    finally:
        sys.path.remove(str(ROOT / "sw"))
    try:
        case = scalesim_compare.run_full(dict(zip(("dataflow", "M", "K", "N", "R", "C"), shape)),
                                         ROOT / ".venv-scalesim", sram_kb=64, bandwidth=10)
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"SCALE-Sim failed: {exc.stderr[-2000:]}")
    _check_against_tool(case)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["ws", "os"]), st.integers(1, 600), st.integers(1, 600), st.integers(1, 600),
       st.sampled_from([1, 4, 8, 32, 128]), st.sampled_from([1, 4, 8, 32, 128]))
def test_documented_differences_from_v1_and_v2(dataflow, M, K, N, R, C):
    """The identities docs/scalesim.md names for every difference between the default models and SCALE-Sim."""
    ss, v2 = scalesim_compute(dataflow, M, K, N, R, C), gemm_compute(dataflow, M, K, N, R, C)
    T = ss.tiles
    assert v2.tiles == T and (v2.act_words, v2.weight_words) == (ss.act_words, ss.weight_words)
    if dataflow == "ws":
        assert ws_gemm_cycles(M, K, N, R, C) - ss.cycles == T + 1
        assert ss.cycles - v2.cycles == (T - 1) * (ss.ii - max(M, R)) - 2
        assert (v2.out_words, v2.psum_in_words) == (ss.out_words, (math.ceil(K / R) - 1) * M * N)
    else:
        assert os_gemm_cycles(M, K, N, R, C) - ss.cycles == T * R + 1
        assert ss.cycles - v2.cycles == (T - 1) * (ss.ii - max(K, R)) - (R + 1)
        assert ss.out_words - v2.out_words == T * (R + C)
