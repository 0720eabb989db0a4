"""SCALE-Sim 3.0.0's compute cycles and SRAM access counts for a GEMM, as closed forms (the `timing: scalesim` option).

SCALE-Sim (github.com/scalesim-project/scale-sim-v3, release 3.0.0 on PyPI as `scalesim`) builds, for every
layer, one *demand matrix* per operand: one row per array cycle, one column per array edge port. The memory
simulation walks those rows one per cycle and reports the index of the cycle on which the last output is written
as "Total Cycles". With no memory stalls that is the number of demand rows minus one (a 0-based index). Facts
and the files they come from (paths in that repository):

- GEMM topology rows are ``Layer, M, N, K,`` (``scalesim/topology_utils.py``, ``load_arrays_gemm``): the layer
  becomes a 1-wide convolution with an M x K input (IFMAP), N filters of K taps (FILTER, a K x N operand matrix)
  and an M x N output (OFMAP). So SCALE-Sim's M, N, K are ours: M tokens, K = in_features (the reduction),
  N = out_features. The row must end with a comma: the parser drops the last comma-separated field.
- WS (``scalesim/compute/systolic_compute_ws.py``): Sr = K maps onto the array rows, Sc = N onto the columns,
  T = M streams in time. Folds: ceil(N/C) column folds x ceil(K/R) row folds. Each fold's demand is
  R (weight-load prefix) + M + C - 1 (drain suffix) rows, skewed by R - 1 rows: 2R + C + M - 2 rows.
  SRAM reads: IFMAP ceil(N/C) * M * K, FILTER K * N; OFMAP writes ceil(K/R) * M * N (every row fold writes
  its partial sums; no partial-sum read-back is counted).
- OS (``scalesim/compute/systolic_compute_os.py``): Sr = M on the rows, Sc = N on the columns, T = K in time.
  Folds: ceil(M/R) x ceil(N/C). Each fold's demand is K + C - 1 rows skewed by R - 1 (IFMAP), or K - 1 + R
  rows skewed by C - 1 (OFMAP): K + R + C - 2 rows. SRAM reads: IFMAP ceil(N/C) * M * K,
  FILTER ceil(M/R) * K * N; OFMAP writes M * N + folds * (R + C) (the code adds the padded fold's
  rows + cols once more per fold).
- "Total Cycles" is ``max`` of the OFMAP serviced cycles (``scalesim/memory/double_buffered_scratchpad_mem.py``,
  ``service_memory_requests``): demand row i is serviced on cycle i + stalls so far, so with no stalls the
  figure is (rows - 1). Utilisation, mapping efficiency and compute utilisation are in
  ``scalesim/single_layer_sim.py`` (``calc_report_data``) and the compute modules above.
- Words are one byte (``word_size = 1`` in ``single_layer_sim.py``); counts here are words.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from qift_hw.core.errors import QiftError
from qift_hw.sim.dataflow import ZERO, Compute, check_gemm

DATAFLOWS = ("ws", "os")
SCALESIM_VERSION = "3.0.0"


@dataclass(frozen=True)
class Utilisation:
    """SCALE-Sim's COMPUTE_REPORT percentages for a stall-free run."""

    overall: float
    mapping_efficiency: float
    compute: float


def _check(dataflow: str, M: int, K: int, N: int, R: int, C: int) -> None:
    if dataflow not in DATAFLOWS:
        raise QiftError(f"SCALE-Sim timing has dataflows {', '.join(DATAFLOWS)}, got {dataflow!r}")
    check_gemm(dataflow, M, K, N, R, C, None)


def fold_rows(dataflow: str, M: int, K: int, R: int, C: int) -> int:
    """Demand-matrix rows (array cycles) of one fold: WS 2R + C + M - 2, OS K + R + C - 2."""
    return 2 * R + C + M - 2 if dataflow == "ws" else K + R + C - 2


def folds(dataflow: str, M: int, K: int, N: int, R: int, C: int) -> int:
    """SCALE-Sim folds: WS ceil(K/R) * ceil(N/C), OS ceil(M/R) * ceil(N/C)."""
    return (math.ceil(K / R) if dataflow == "ws" else math.ceil(M / R)) * math.ceil(N / C)


def scalesim_compute(dataflow: str, M: int, K: int, N: int, R: int, C: int) -> Compute:
    """SCALE-Sim 3.0.0's stall-free "Total Cycles" (folds * fold_rows - 1) and SRAM words of an M x K by K x N GEMM.

    weight_words = FILTER SRAM reads, act_words = IFMAP SRAM reads, out_words = OFMAP SRAM writes; SCALE-Sim
    counts no partial-sum reads (psum_in_words = 0). A zero dimension gives all zeros, as `gemm_compute` does
    (SCALE-Sim itself cannot run one).
    """
    _check(dataflow, M, K, N, R, C)
    if not (M and K and N):
        return ZERO
    tiles, ii = folds(dataflow, M, K, N, R, C), fold_rows(dataflow, M, K, R, C)
    n_folds = math.ceil(N / C)
    if dataflow == "ws":
        weights, acts, outs = K * N, n_folds * M * K, math.ceil(K / R) * M * N
    else:
        weights, acts, outs = math.ceil(M / R) * K * N, n_folds * M * K, M * N + tiles * (R + C)
    return Compute(cycles=tiles * ii - 1, tiles=tiles, ii=ii, weight_words=weights, act_words=acts,
                   psum_in_words=0, out_words=outs)


def scalesim_utilisation(dataflow: str, M: int, K: int, N: int, R: int, C: int, stall_cycles: int = 0) -> Utilisation:
    """SCALE-Sim's Overall Util %, Mapping Efficiency % and Compute Util % (averages over folds, as it reports).

    Overall = M*N*K / ((Total Cycles) * R * C); mapping efficiency = used PEs / (R*C) averaged over folds;
    compute util averages M*N*K-per-fold / (R*C*(fold rows + fold cols - 1)) of its per-fold filter (WS: rows
    2R+C+M-2, cols C) or output (OS: rows K-1+R, cols C) demand.
    """
    c = scalesim_compute(dataflow, M, K, N, R, C)
    if not c.tiles:
        return Utilisation(0.0, 0.0, 0.0)
    macs, pes = M * N * K, R * C
    used = K * N if dataflow == "ws" else M * N
    span = 2 * R + 2 * C + M - 3 if dataflow == "ws" else K + R + C - 2
    return Utilisation(overall=100.0 * macs / ((c.cycles + stall_cycles) * pes),
                       mapping_efficiency=100.0 * used / (c.tiles * pes),
                       compute=100.0 * macs / (c.tiles * pes * span))
