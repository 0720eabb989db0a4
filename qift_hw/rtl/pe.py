"""Processing elements: the multiplier-free W2 x INT4 MAC and the multiplier baselines it is compared with.

A PE variant (``kind``) is one of the hardware level sets of ``qift_hw.core.formats`` (``pot_mnz``, ``mnz``, ``pm12``,
``std``), whose product with an activation is built from the formats' integer weight table as sign, shift and add
only, or a multiplier baseline (``int4``: INT4 weight x INT4 activation, ``int8``: INT8 x INT8). All variants share
one interface (``a``, ``w``, ``en``, ``clr`` in; ``acc``, ``ovf`` out); only the widths of ``a`` and ``w`` differ.
The accumulator saturates and raises a sticky ``ovf`` flag, the formats' ``saturate`` policy: it never wraps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from amaranth import Const, Module, Mux, Shape, Signal, signed, unsigned
from amaranth.hdl import Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from qift_hw.core import formats
from qift_hw.core.errors import QiftError
from qift_hw.core.levels import MULTIPLIER_PE, LevelSet, get_level_set

MULTIPLIER_KINDS = ("int4", "int8")
"""Multiplier baselines built in RTL: level sets with the multiplier PE, INT-b weight x INT-b activation (b = the
set's bits, both signed two's complement)."""

PE_KINDS = formats.HW_LEVEL_SETS + MULTIPLIER_KINDS


@dataclass(frozen=True)
class PEFormat:
    """Port widths and product range of one PE variant, and the level set it computes."""

    kind: str
    act_bits: int
    w_shape: Shape
    prod_min: int
    prod_max: int
    level_set: LevelSet = field(repr=False, compare=False)

    @property
    def multiplier_free(self) -> bool:
        """True for the sign/shift/add variants (a 2-bit code), False for the multiplier baselines."""
        return self.level_set.pe != MULTIPLIER_PE

    def weight_values(self) -> list[int]:
        """Integer weight for each value of the ``w`` port (index = unsigned port value)."""
        return [int(v) for v in self.level_set.int_weights]


def pe_format(kind: str | LevelSet) -> PEFormat:
    """Widths and product range of PE variant ``kind`` (one of ``PE_KINDS``, by name or as its level set)."""
    name = kind.name if isinstance(kind, LevelSet) else kind
    if name not in PE_KINDS:
        raise QiftError(f"unknown PE kind {name!r}; use one of {', '.join(PE_KINDS)}")
    ls = get_level_set(name)
    if ls.pe == MULTIPLIER_PE:
        act_bits, w_shape = ls.bits, signed(ls.bits)
    else:
        act_bits, w_shape = formats.ACT_BITS, unsigned(ls.bits)
    lo, hi = formats.product_range(ls, act_bits)
    return PEFormat(name, act_bits, w_shape, lo, hi, ls)


def _shift_add(a: Value, magnitude: int) -> Value:
    """``a * magnitude`` for a constant magnitude, as a sum of shifted copies of ``a`` (no multiplier)."""
    if magnitude == 0:
        return Const(0, signed(2))
    terms = [a << b for b in range(magnitude.bit_length()) if magnitude >> b & 1]
    out = terms[0]
    for t in terms[1:]:
        out = out + t
    return out


def _check_sign_bit(kind: str, values: list[int]) -> None:
    sign = 1 << formats.SIGN_BIT
    for code, v in enumerate(values):
        if v != 0 and (v < 0) != bool(code & sign):
            raise QiftError(f"level set {kind!r}: code {code} has weight {v}, whose sign disagrees with code bit "
                            f"{formats.SIGN_BIT}; the sign-and-shift PE cannot decode it")


def code_magnitude(a: Value, w: Value, kind: str) -> tuple[Value, Value]:
    """(magnitude term, sign bit) of ``decode(w) * a`` for a 2-bit code: product = sign ? -term : term.

    The term is ``a`` shifted and added per the formats' integer weight of the code; for a symmetric set it is a
    two-way choice on the magnitude bit, for ``std`` (with its zero and its -2) a choice on the whole code.
    """
    values = pe_format(kind).weight_values()
    _check_sign_bit(kind, values)
    mags = [abs(v) for v in values]
    sign = w[formats.SIGN_BIT]
    mag_bit = w[formats.MAG_BIT]
    pos, neg = 0, 1 << formats.SIGN_BIT
    m_bit = 1 << formats.MAG_BIT
    if mags[pos] == mags[neg] and mags[pos | m_bit] == mags[neg | m_bit]:
        term = Mux(mag_bit, _shift_add(a, mags[m_bit]), _shift_add(a, mags[0]))
    else:
        term = Mux(sign, Mux(mag_bit, _shift_add(a, mags[neg | m_bit]), _shift_add(a, mags[neg])),
                   Mux(mag_bit, _shift_add(a, mags[pos | m_bit]), _shift_add(a, mags[pos])))
    return term, sign


def saturating_add(m: Module, acc: Value, term: Value, neg: Value, acc_bits: int) -> tuple[Value, Value]:
    """(``sat(acc + (neg ? -term : term))``, overflow bit), the sum taken one bit wider than the accumulator.

    The negation is folded into the adder as ``acc + (term ^ neg) + neg`` (invert, then carry in), which is how
    a sign-and-shift PE applies its sign bit without a separate negator.
    """
    flipped = Signal(signed(len(term)))
    m.d.comb += flipped.eq(term ^ neg.replicate(len(term)))
    wide = Signal(signed(acc_bits + 1))
    m.d.comb += wide.eq(acc + flipped + neg)
    over = wide[acc_bits] != wide[acc_bits - 1]
    lo, hi = formats.acc_range(acc_bits)
    return Mux(over, Mux(wide[acc_bits], lo, hi), wide[:acc_bits].as_signed()), over


def silence_unused(component) -> None:
    """Exempt a component from Amaranth's "created but never used" warning: for a constructor that rejects its
    arguments, or a component built only to read its port layout."""
    component._MustUse__silence = True


def check_acc_bits(acc_bits: int, kind: str) -> None:
    """Reject an accumulator that cannot hold a single product of this PE variant."""
    fmt = pe_format(kind)
    lo, hi = formats.acc_range(acc_bits)
    if fmt.prod_min < lo or fmt.prod_max > hi:
        raise QiftError(f"a {acc_bits}-bit accumulator cannot hold one {kind} product "
                        f"({fmt.prod_min}..{fmt.prod_max}); use --acc-bits >= "
                        f"{max(fmt.prod_max, -fmt.prod_min).bit_length() + 1}")


class Product(wiring.Component):
    """Combinational ``weight(w) * a`` of one PE variant as ``neg ? -term : term``, a module of its own.

    For the 2-bit sets ``term`` is the shifted/added activation and ``neg`` the code's sign bit (the accumulator
    applies it); for the multiplier baselines ``term`` is the full product and ``neg`` is 0. A separate module, so
    that synthesis sizes a baseline multiplier as a multiplier instead of merging it into the accumulator's adder
    at full accumulator width.
    """

    def __init__(self, kind: str = "pot_mnz"):
        try:
            fmt = pe_format(kind)
        except QiftError:
            silence_unused(self)
            raise
        self.kind, self.fmt = kind, fmt
        super().__init__({
            "a": In(signed(fmt.act_bits)),
            "w": In(fmt.w_shape),
            "term": Out(signed(max(-fmt.prod_min, fmt.prod_max).bit_length() + 1)),
            "neg": Out(1),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        if self.kind in MULTIPLIER_KINDS:
            m.d.comb += self.term.eq(self.a * self.w)
        else:
            term, sign = code_magnitude(self.a, self.w, self.kind)
            m.d.comb += [self.term.eq(term), self.neg.eq(sign)]
        return m


def checked_format(component, kind: str, acc_bits: int) -> PEFormat:
    """``pe_format(kind)`` once ``acc_bits`` can hold its products; a rejected ``component`` is silenced first."""
    try:
        fmt = pe_format(kind)
        check_acc_bits(acc_bits, kind)
    except QiftError:
        silence_unused(component)
        raise
    return fmt


class MacCore(wiring.Component):
    """The combinational heart of every PE: ``sum = sat(acc + weight(w) * a)`` and ``over`` (that add saturated).

    ``MacPE`` is this core plus its accumulator register; every cell of the PE arrays instances it with the
    cell's own registers (the partial sum from above in WS, the stationary accumulator in OS), so the arrays are
    built from the PE the PE tests verify. The product is a ``Product`` submodule.
    """

    def __init__(self, kind: str = "pot_mnz", acc_bits: int = formats.ACC_BITS):
        fmt = checked_format(self, kind, acc_bits)
        self.kind, self.acc_bits, self.fmt = kind, acc_bits, fmt
        super().__init__({
            "a": In(signed(fmt.act_bits)),
            "w": In(fmt.w_shape),
            "acc": In(signed(acc_bits)),
            "sum": Out(signed(acc_bits)),
            "over": Out(1),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.prod = prod = Product(self.kind)
        m.d.comb += [prod.a.eq(self.a), prod.w.eq(self.w)]
        total, over = saturating_add(m, self.acc, prod.term, prod.neg, self.acc_bits)
        m.d.comb += [self.sum.eq(total), self.over.eq(over)]
        return m


class MacPE(wiring.Component):
    """One MAC processing element: ``acc <= sat(acc + w * a)`` when ``en``; ``clr`` restarts the sum.

    Ports: ``a`` activation, ``w`` weight (2-bit code or a signed integer for the multiplier baselines),
    ``en`` (do a MAC this cycle), ``clr`` (start a new sum: ``acc <= en ? w * a : 0``, ``ovf <= 0``),
    ``acc`` (signed, ``acc_bits``) and ``ovf`` (sticky: some add of this sum saturated).
    """

    def __init__(self, kind: str = "pot_mnz", acc_bits: int = formats.ACC_BITS):
        fmt = checked_format(self, kind, acc_bits)
        self.kind, self.acc_bits, self.fmt = kind, acc_bits, fmt
        super().__init__({
            "a": In(signed(fmt.act_bits)),
            "w": In(fmt.w_shape),
            "en": In(1),
            "clr": In(1),
            "acc": Out(signed(acc_bits)),
            "ovf": Out(1),
        })

    def lanes(self) -> dict[str, tuple[int, int, bool]]:
        """Layout of the data ports: name -> (lanes, bits per lane, signed)."""
        from qift_hw.rtl.ports import port_lanes

        return port_lanes(self)

    def params(self) -> dict:
        """The generator parameters of this instance (written into the Verilog header)."""
        return {"kind": self.kind, "acc_bits": self.acc_bits, "act_bits": self.fmt.act_bits,
                "w_bits": self.fmt.w_shape.width}

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.core = core = MacCore(self.kind, self.acc_bits)
        m.d.comb += [core.a.eq(self.a), core.w.eq(self.w), core.acc.eq(Mux(self.clr, 0, self.acc))]
        with m.If(self.en):
            m.d.sync += [self.acc.eq(core.sum), self.ovf.eq(~self.clr & self.ovf | core.over)]
        with m.Elif(self.clr):
            m.d.sync += [self.acc.eq(0), self.ovf.eq(0)]
        return m
