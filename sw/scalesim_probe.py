"""SCALE-Sim 3.0.0's own GEMM mapping and compute classes, run inside its separate venv (sw/scalesim_env.sh).

    .venv-scalesim/bin/python sw/scalesim_probe.py < cases.jsonl > results.jsonl

Each input line is {"dataflow", "M", "K", "N", "R", "C", "mode"}; each output line adds SCALE-Sim's counts.
The operand matrices come from SCALE-Sim's GEMM topology parser and `operand_matrix`; the demand matrices from
`systolic_compute_ws` / `systolic_compute_os`. No memory simulation runs, so there are no stalls: the stall-free
"Total Cycles" SCALE-Sim reports is the demand-matrix row count minus one.

mode "layer" runs the classes on the whole layer. mode "folds" runs them once per distinct fold shape (full or
edge fold along each folded dimension, the streamed dimension kept whole) and sums the counts weighted by how many
folds of each shape the layer has: SCALE-Sim's demand matrix is the concatenation of independent per-fold
matrices, so the sums are the same numbers at a cost independent of the layer size (layers whose demand matrices
would not fit in memory). This module imports only the standard library at the top, so the compare script can use
its file writers from the project's own venv.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from pathlib import Path

CONFIG = """[general]
run_name = {name}

[architecture_presets]
ArrayHeight:    {R}
ArrayWidth:     {C}
IfmapSramSzkB:   {sram_kb}
FilterSramSzkB:  {sram_kb}
OfmapSramSzkB:   {sram_kb}
IfmapOffset:    0
FilterOffset:   10000000
OfmapOffset:    20000000
Bandwidth : {bandwidth}
Dataflow : {dataflow}
MemoryBanks:   1
ReadRequestBuffer: 32
WriteRequestBuffer: 32

[layout]
IfmapCustomLayout: False
IfmapSRAMBankBandwidth: {bandwidth}
IfmapSRAMBankNum: 10
IfmapSRAMBankPort: 2
FilterCustomLayout: False
FilterSRAMBankBandwidth: {bandwidth}
FilterSRAMBankNum: 10
FilterSRAMBankPort: 2

[sparsity]
SparsitySupport : false
SparseRep : ellpack_block
OptimizedMapping : false
BlockSize : 8
RandomNumberGeneratorSeed : 40

[run_presets]
InterfaceBandwidth: USER
UseRamulatorTrace: False
"""
"""SCALE-Sim's configs/scale.cfg with the array, dataflow, SRAM sizes and bandwidth (words/cycle) filled in."""

LAYOUT_HEADER = ("Layer name, IFMAP Height Intraline Factor, IFMAP Width Intraline Factor, Filter Height Intraline "
                 "Factor, Filter Width Intraline Factor, Channel Intraline Factor, Num Filter Intraline Factor, IFMAP "
                 "Height Intraline Order, IFMAP Width Intraline Order, Channel Intraline Order, IFMAP Height "
                 "Interline Order, IFMAP Width Interline Order, Channel Interline Order, Num Filter Intraline Order, "
                 "Channel Intraline Order, Filter Height Intraline Order, Filter Width Intraline Order, Num Filter "
                 "Interline Order, Channel Interline Order, Filter Height Interline Order, Filter Width Interline "
                 "Order, ")
LAYOUT_ROW = "{name}, 1, 1, 1, 1, 1, 1,     0, 1, 2,     4, 5, 3,     3, 2, 1, 0,     4, 5, 6, 7,"


def config_text(dataflow: str, R: int, C: int, sram_kb: int = 64, bandwidth: int = 10, name: str = "qift") -> str:
    return CONFIG.format(name=name, R=R, C=C, sram_kb=sram_kb, bandwidth=bandwidth, dataflow=dataflow)


def topology_text(layers: list[tuple[str, int, int, int]]) -> str:
    """SCALE-Sim's GEMM topology CSV: `Layer, M, N, K,` (the trailing comma is required by its parser)."""
    return "Layer,M,N,K,\n" + "".join(f"{name},{M},{N},{K},\n" for name, M, N, K in layers)


def layout_text(names: list[str]) -> str:
    """A default (non-custom) layout row per layer; SCALE-Sim loads the file even when custom layouts are off."""
    return LAYOUT_HEADER + "\n" + "".join(LAYOUT_ROW.format(name=n) + "\n" for n in names)


def _layer_counts(dataflow: str, M: int, K: int, N: int, R: int, C: int, work: Path) -> dict:
    from scalesim.compute.operand_matrix import operand_matrix
    from scalesim.compute.systolic_compute_os import systolic_compute_os
    from scalesim.compute.systolic_compute_ws import systolic_compute_ws
    from scalesim.layout_utils import layouts
    from scalesim.scale_config import scale_config
    from scalesim.topology_utils import topologies

    (work / "c.cfg").write_text(config_text(dataflow, R, C))
    (work / "t.csv").write_text(topology_text([("L0", M, N, K)]))
    (work / "l.csv").write_text(layout_text(["L0"]))
    cfg = scale_config()
    cfg.read_conf_file(str(work / "c.cfg"))
    topo = topologies()
    topo.load_arrays(topofile=str(work / "t.csv"), mnk_inputs=True)
    lay = layouts()
    lay.load_arrays(layoutfile=str(work / "l.csv"))
    ops = operand_matrix()
    ops.set_params(config_obj=cfg, topoutil_obj=topo, layoututil_obj=lay, layer_id=0)
    _, ifmap = ops.get_ifmap_matrix()
    _, filt = ops.get_filter_matrix()
    _, ofmap = ops.get_ofmap_matrix()
    comp = systolic_compute_ws() if dataflow == "ws" else systolic_compute_os()
    comp.set_params(config_obj=cfg, ifmap_op_mat=ifmap, filter_op_mat=filt, ofmap_op_mat=ofmap)
    i_dem, f_dem, o_dem = comp.get_demand_matrices()
    rows = {i_dem.shape[0], f_dem.shape[0], o_dem.shape[0]}
    if len(rows) != 1:
        raise RuntimeError(f"demand matrices out of step: {sorted(rows)}")
    n = len(comp.mapping_efficiency_per_fold)
    return {"operands": [list(ifmap.shape), list(filt.shape), list(ofmap.shape)], "demand_rows": rows.pop(),
            "folds": n, "ifmap_reads": int(comp.get_ifmap_requests()), "filter_reads": int(comp.get_filter_requests()),
            "ofmap_writes": int(comp.get_ofmap_requests()),
            "mapping_eff_sum": float(sum(comp.mapping_efficiency_per_fold)),
            "compute_util_sum": float(sum(comp.compute_utility_per_fold))}


def _fold_shapes(X: int, S: int) -> list[tuple[int, int]]:
    """(size, count) of the folds of a dimension X over S array lanes: full folds and one edge fold."""
    full, edge = divmod(X, S)
    return [(s, c) for s, c in ((S, full), (edge, 1 if edge else 0)) if c]


SHAPE_KEYS = ("dataflow", "M", "K", "N", "R", "C")
SUMS = ("demand_rows", "folds", "ifmap_reads", "filter_reads", "ofmap_writes", "mapping_eff_sum", "compute_util_sum")


def counts(case: dict, work: Path) -> dict:
    """SCALE-Sim's counts for one case (see the module docstring for the two modes)."""
    df, M, K, N, R, C = (case[k] for k in SHAPE_KEYS)
    if case.get("mode", "layer") == "layer":
        return {**case, **_layer_counts(df, M, K, N, R, C, work)}
    total = dict.fromkeys(SUMS, 0)
    folded = K if df == "ws" else M  # the dimension on the array rows; N is on the columns in both
    for rows, n_r in _fold_shapes(folded, R):
        for cols, n_c in _fold_shapes(N, C):
            shape = (M, rows, cols) if df == "ws" else (rows, K, cols)
            one = _layer_counts(df, *shape, R, C, work)
            if one["folds"] != 1:
                raise RuntimeError(f"expected one fold for {shape}, got {one['folds']}")
            for k in SUMS:
                total[k] += n_r * n_c * one[k]
    return {**case, **total}


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="scalesim-probe-") as tmp:
        for line in sys.stdin:
            if line.strip():
                print(json.dumps(counts(json.loads(line), Path(tmp))), flush=True)


if __name__ == "__main__":
    main()
