"""Bit-accurate model of the Qift W2 x INT4 accelerator: PE, MAC array, Hadamard unit, quantized linear, cycles.

Imports core only (formats, levels, hadamard, shapes; never the algorithm or the RTL). Public entry point: `matmul`.
"""

from qift_hw.sim._numba import popcount64  # noqa: F401  (sets the Numba threading layer first)
from qift_hw.sim.matmul import PreparedWeights, SaturationWarning, check_acts, matmul, prepare_weights

__all__ = ["PreparedWeights", "SaturationWarning", "check_acts", "matmul", "prepare_weights"]
