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


def _pe_spec(kind: str, acc: int, ovf: int, a: int, w: int, en: int, clr: int, bits: int) -> tuple[int, int]:
    """One PE cycle by the formats' rule: en: acc <= clamp((clr ? 0 : acc) + weight[w] * a), ovf sticky unless clr;
    no en: clr clears, else hold."""
    from qift_hw.core import formats

    if not en:
        return (0, 0) if clr else (acc, ovf)
    lo, hi = formats.acc_range(bits)
    exact = (0 if clr else acc) + int(formats.weight_int_values(kind)[w]) * a
    sat = min(max(exact, lo), hi)
    return sat, int((0 if clr else ovf) or sat != exact)


def boundary_steps(kind: str, bits: int) -> list[list]:
    """Deposit/step list for bench_pe_boundary: sums landing exactly on 2^(B-1)-1 and -2^(B-1), one past each
    (by one unit and by a whole product), back from the rail (sticky ovf), clr with and without en, hold."""
    from qift_hw.core import formats
    from qift_hw.rtl.pe import pe_format

    fmt = pe_format(kind)
    table = [int(v) for v in formats.weight_int_values(kind)]
    acts = range(-(1 << (fmt.act_bits - 1)), 1 << (fmt.act_bits - 1))
    pairs = [(table[w] * a, w, a) for w in range(len(table)) for a in acts]
    p_max, p_min = max(pairs), min(pairs)
    one = next((w, 1) for w in range(len(table)) if table[w] == 1)
    minus = (one[0], -1)
    lo, hi = formats.acc_range(bits)
    plan = [  # (deposit acc, deposit ovf, (w, a), en, clr)
        (hi - p_max[0], 0, p_max[1:], 1, 0), (None, 0, one, 1, 0), (None, 0, minus, 1, 0), (None, 0, one, 1, 0),
        (None, 0, (0, 0), 1, 1),
        (lo - p_min[0], 0, p_min[1:], 1, 0), (None, 0, minus, 1, 0), (None, 0, one, 1, 0),
        (hi - p_max[0] + 1, 0, p_max[1:], 1, 0), (lo - p_min[0] - 1, 0, p_min[1:], 1, 0),
        (hi, 1, one, 0, 1), (hi, 1, one, 0, 0), (lo, 1, minus, 1, 1),
    ]
    steps, acc, ovf = [], 0, 0
    for dep, dep_ovf, (w, a), en, clr in plan:
        if dep is not None:
            acc, ovf = dep, dep_ovf
        acc_next, ovf_next = _pe_spec(kind, acc, ovf, a, w, en, clr, bits)
        w_port = w - (1 << fmt.w_shape.width) if fmt.w_shape.signed and w >> (fmt.w_shape.width - 1) else w
        steps.append([dep, dep_ovf, a, w_port & ((1 << fmt.w_shape.width) - 1), en, clr, acc_next, ovf_next])
        acc, ovf = acc_next, ovf_next
    return steps


@pytest.mark.parametrize("kind", ["pot_mnz", "int8"])
def test_icarus_pe32_rails(kind):
    """The 32-bit PE in Verilog (the committed rtl/generated file for PoT-MNZ) at +-2^31: exactly on each rail,
    one past, back from it, clear; expected values from the formats' rule."""
    from qift_hw.rtl.generate import GENERATED_DIR, pe_top, write_top
    from qift_hw.verify.simulate import run_bench

    reason = simulator_available("icarus")
    if reason is not None:
        pytest.skip(reason)
    top = pe_top(kind, 32)
    committed = Path(__file__).resolve().parents[1] / GENERATED_DIR / f"{top.name}.v"
    verilog = committed if committed.exists() else write_top(top, BUILD / "verilog")
    steps = boundary_steps(kind, 32)
    on_rails = {s[6] for s in steps}
    assert {2**31 - 1, -2**31, 2**31 - 2, -2**31 + 1} <= on_rails
    run = run_bench("icarus", verilog, top.name, "bench_pe_boundary", {"steps": steps}, build_root=BUILD,
                    tag=f"rails_{kind}")
    assert run.passed, run.message
    assert run.summary["steps"] == len(steps)
