"""cocotb benches through cocotb's Python runner: the verification suite on Icarus Verilog and on Verilator.

Every case replays a bit-accurate-model trace cycle by cycle (values, valid bits, output cycles), then checks the
assembled results against qift_hw.sim.matmul and a direct product and the cycle count against the cycle model.
Icarus runs the suite (a few variants only under `make test-slow`); Verilator the core cases (its builds are the
slow part). Build folders are reused
under sim_build/.
"""

import functools
from pathlib import Path

import pytest

from qift_hw.verify.simulate import simulator_available
from qift_hw.verify.cases import default_cases, run_case

pytestmark = pytest.mark.sim
BUILD = Path(__file__).resolve().parents[1] / "sim_build"


@functools.lru_cache(maxsize=1)
def _cases() -> dict:
    return {c.name: c for c in default_cases()}


FULL = list(_cases())
QUICK = FULL[:4]
"""default_cases(quick=True) is the first four cases of the full suite, with the same stimulus."""
SLOW = {"pe_mnz", "pe_pm12", "pe_std", "pe_int4", "ws_random_pm12", "os_random_mnz", "hadamard_16",
        "hadamard_q4_small_16"}
"""Variants whose RTL the Amaranth tests already cover exhaustively; on Icarus they run with `make test-slow`."""


def _run(sim: str, name: str) -> None:
    reason = simulator_available(sim)
    if reason is not None:
        pytest.skip(reason)
    res = run_case(_cases()[name], sim, BUILD)
    assert res.passed, res.problems
    if res.expected_cycles is not None:
        assert res.cycles == res.expected_cycles


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in FULL])
def test_icarus(name):
    _run("icarus", name)


@pytest.mark.parametrize("name", QUICK)
def test_verilator(name):
    _run("verilator", name)


def test_suite_layout():
    """The quick cases lead the suite, and it runs real SmolLM2 GPTQ tiles (sim/data, from `qift-hw rtl tiles`)."""
    assert QUICK == [c.name for c in default_cases(quick=True)]
    assert "ws_smollm2_gptq" in FULL and "hadamard_q4_64_smollm2" in FULL
