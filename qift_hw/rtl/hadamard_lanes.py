"""Lane-multiplexed Hadamard unit and INT4 quantizer: L lanes per cycle, any supported order n = K * 2^k > L.

One vector at a time goes through a single-port-write, combinational-read buffer of n / L rows of L lanes
(``amaranth.lib.memory.Memory``):

1. LOAD (R = n / L beats of the input stream): the butterfly stages whose stride is below L (pairs inside a row)
   are applied on the way in, the row is written to the Z buffer.
2. XPASS (c = log2(2^k / L) passes when 2^k > L): the butterfly stages of stride L, 2L, ..., 2^(k-1) over row
   pairs (r, r + 2^t), in place; a pass reads one row per cycle and writes one, R + 1 cycles.
3. KSTAGE (K > 1): every output row is the +-1 sum of K rows of Z (signs from a ROM holding H_K), one row per
   cycle into L accumulators, K * R cycles, written to the Y buffer.
4. SCALE: max|y| was taken on the last write of y; one cycle for the FP32 scale (``hadamard.scale_fields``), then
   ``THRESHOLDS`` cycles for the eight INT4 thresholds, computed one after the other by one shared adder and shifter.
5. OUT (R beats of the output stream): each row's lanes compare |y| with the eight thresholds.

Cycles per vector with a source that is always valid and a sink that is always ready: ``lane_unit_period``
(``qift_hw.sim.hadamard_timing``). Orders whose y exceeds 2^24 (n > 256 at 16-bit inputs) quantize fp32(y) as
``formats.had_output_quant`` does: the scale is built from fp32(max|y|) and every threshold t on fp32(|y|) is
moved to the smallest integer whose FP32 rounding reaches t (``raw_threshold``), so the lanes compare the exact
|y| and no lane rounds anything.
"""

from __future__ import annotations

from amaranth import Array, Cat, Const, Module, Mux, Shape, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from qift_hw.core import formats
from qift_hw.core.errors import QiftError
from qift_hw.rtl.hadamard import (SIG, THRESHOLD_FRAC, Int4Quantizer, _threshold_constants, abs_max_tree,
                                  hadamard_split, k_matrix, output_bits, scale_fields)
from qift_hw.rtl.pe import silence_unused
from qift_hw.sim.hadamard_timing import SCALE_CYCLES, lane_unit_period

EXP_BITS = 8
MAX_Y_BITS = 40
"""Widest y the lane quantizer takes (any Hadamard order of the formats at 16-bit inputs stays far below)."""
FP32_EXACT_BITS = SIG + 1
"""y of at most this many signed bits (|y| <= 2^24) is exact in FP32: no threshold needs moving."""


def raw_threshold(t: int) -> int:
    """Smallest integer y >= 0 with fp32(y) >= t, for an integer t >= 0 (the model quantizes fp32(y)).

    Up to 2^24 every integer is exact, so it is t. Above, t is rounded up to U, the next FP32 value; y reaches U
    from U - h on, h half the ulp below U (half of U's own ulp when U is a power of two), where the tie goes to U
    exactly when U's significand is even (round to nearest even).
    """
    if t <= 1 << SIG:
        return t
    e_t = t.bit_length() - SIG
    u = -(-t >> e_t) << e_t
    e_u = u.bit_length() - SIG
    pow2 = int(u & (u - 1) == 0)
    return u - (1 << (e_u - 1 - pow2)) + ((u >> e_u) & 1)


def _highest_set(m: Module, x, name: str, offset: int):
    """max(index of x's highest set bit + 1 - offset, 0) (0 for x = 0): a priority encoder."""
    d = Signal(range(len(x) + 1), name=name)
    for i in range(len(x)):
        with m.If(x[i]):
            m.d.comb += d.eq(max(i + 1 - offset, 0))
    return d


def _raw_threshold_rtl(m: Module, t, width: int, name: str):
    """``raw_threshold`` in logic, for t of ``width`` bits."""
    e_t = _highest_set(m, t, f"{name}_et", SIG)
    up = Signal(unsigned(width + 1), name=f"{name}_u")
    m.d.comb += up.eq(((t + (Const(1, unsigned(width + 1)) << e_t) - 1) >> e_t) << e_t)
    e_u = _highest_set(m, up, f"{name}_eu", SIG)
    pow2 = (up & (up - 1)) == 0
    half = Signal(unsigned(width + 1), name=f"{name}_half")
    m.d.comb += half.eq((Const(1, unsigned(width + 1)) << e_u) >> Mux(pow2, 2, 1))
    moved = Signal(unsigned(width + 1), name=f"{name}_moved")
    m.d.comb += moved.eq(up - half + up.bit_select(e_u, 1))
    return Mux(t > (1 << SIG), moved, t)


def _count_reached(mag, ths: list):
    """How many of the sorted thresholds ``ths`` (a power of two of them) ``mag`` reaches, by binary search: log2(T)
    comparators against multiplexed thresholds find it among the first T - 1, one more compares with the last
    (T = 8: four comparators per lane instead of eight)."""
    lg = len(ths).bit_length() - 1
    if len(ths) != 1 << lg:
        raise QiftError(f"the lane quantizer's binary search needs a power of two of thresholds, got {len(ths)}")
    bits = []
    for level in range(lg):
        span = 1 << (lg - level)
        pick = [ths[pv * span + span // 2 - 1] for pv in range(1 << level)]
        bits.append(mag >= (Array(pick)[Cat(*reversed(bits))] if bits else pick[0]))
    return Cat(*reversed(bits)) + (mag >= ths[-1])


def _threshold_steps(qmax: int) -> list[tuple[int, int, int]]:
    """Each threshold constant of ``hadamard._threshold_constants`` as (odd factor f, shift h, sign): K_j =
    f * 2^(THRESHOLD_FRAC - 1) + sign * 2^h, so s * K_j needs one running multiple of s and one shifted copy."""
    out = []
    for j, (k, inclusive) in enumerate(_threshold_constants(qmax)):
        f, rest = 2 * j + 1, k - ((2 * j + 1) << (THRESHOLD_FRAC - 1))
        sign = -1 if inclusive else 1
        h = (sign * rest).bit_length() - 1
        if sign * rest != 1 << h:
            raise QiftError(f"threshold constant {k} is not (2j+1) * 2^{THRESHOLD_FRAC - 1} +- 2^h")
        out.append((f, h, sign))
    return out


class LaneQuantizer(wiring.Component):
    """The INT4 quantizer of the lane-multiplexed unit: per-vector logic once, L lane comparators.

    ``start`` with ``amax`` (max|y| of the vector, exact) computes the FP32 scale (one cycle, ``hadamard.scale_fields``
    after rounding amax to FP32 if y can exceed 2^24) and then the eight thresholds one per cycle (one adder builds
    s * (2j + 1), one shifter rounds, ``raw_threshold`` moves them for wide y); ``ready`` is 1 from then on until
    the next ``start``. Then ``q`` = clamp(+-(thresholds |y| reaches, found by binary search)) for the L lanes of
    ``y``, combinationally, and
    ``scale`` the FP32 bit pattern of s_u. Bit-exact to ``formats.quantize_act(fp32(y))``.
    """

    def __init__(self, lanes: int, y_bits: int):
        if not 2 <= y_bits <= MAX_Y_BITS:
            silence_unused(self)
            raise QiftError(f"the lane quantizer takes 2..{MAX_Y_BITS}-bit y, got {y_bits}")
        self.lanes_n, self.y_bits, self.qmax = lanes, y_bits, formats.ACT_QMAX
        self.steps = _threshold_steps(self.qmax)
        super().__init__({
            "start": In(1),
            "amax": In(unsigned(y_bits)),
            "ready": Out(1),
            "y": In(data.ArrayLayout(signed(y_bits), lanes)),
            "q": Out(data.ArrayLayout(signed(formats.ACT_BITS), lanes)),
            "scale": Out(formats.FP32_BITS),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        yb, wide = self.y_bits, self.y_bits > FP32_EXACT_BITS
        tb = yb + 2
        sig = Signal(unsigned(SIG), name="qs_sig")
        exp = Signal(signed(formats.FP32_EXP_BITS + 1), name="qs_exp")
        step = Signal(range(len(self.steps) + 2), name="qs_step")
        ths = [Signal(unsigned(tb), name=f"qs_th{j}") for j in range(len(self.steps))]
        m.d.comb += self.ready.eq(step == len(self.steps) + 1)

        amax = self.amax
        a_shift = Const(0, 1)
        if wide:
            d = _highest_set(m, amax, "qs_ad", SIG)
            a_sig, a_exp = Int4Quantizer._round_shift(m, "qs_a", amax, d, Const(0, 1), 0)
            amax, a_shift = a_sig, a_exp
        s_sig, s_exp = scale_fields(m, amax, len(amax), self.qmax)
        mult = Signal(unsigned(SIG + 5), name="qs_mult")
        with m.If(self.start):
            m.d.sync += [sig.eq(s_sig), exp.eq(s_exp + Mux(self.amax == 0, 0, a_shift)), step.eq(1),
                         mult.eq(s_sig)]
        with m.Elif(step != 0):
            m.d.sync += step.eq(Mux(self.ready, step, step + 1))

        shift = Signal(unsigned(7), name="qs_shift")
        m.d.comb += shift.eq(THRESHOLD_FRAC - exp)
        prod = Signal(unsigned(SIG + 5 + THRESHOLD_FRAC), name="qs_prod")
        bound = Signal(unsigned(tb + 1), name="qs_bound")
        for j, (f, h, sign) in enumerate(self.steps):
            with m.If(step == j + 1):
                m.d.comb += prod.eq((mult << (THRESHOLD_FRAC - 1)) + sign * (sig << h))
                if sign < 0:
                    m.d.comb += bound.eq((prod + (Const(1, unsigned(64)) << shift) - 1) >> shift)
                else:
                    m.d.comb += bound.eq((prod >> shift) + 1)
                m.d.sync += [ths[j].eq(_raw_threshold_rtl(m, bound, tb + 1, "qs_raw") if wide else bound),
                             mult.eq(mult + (sig << 1))]

        qmin_mag = -formats.ACT_QMIN
        for i in range(self.lanes_n):
            v = self.y[i]
            mag = Signal(unsigned(yb), name=f"qs_mag{i}")
            m.d.comb += mag.eq(Mux(v < 0, -v, v))
            count = Signal(range(len(ths) + 1), name=f"qs_count{i}")
            m.d.comb += count.eq(_count_reached(mag, ths))
            m.d.comb += self.q[i].eq(Mux(v < 0, -Mux(count > qmin_mag, qmin_mag, count),
                                         Mux(count > self.qmax, self.qmax, count)))
        frac = formats.FP32_FRAC_BITS
        m.d.comb += self.scale.eq(Cat(sig[:frac], (exp + frac + formats.FP32_EXP_BIAS)[:formats.FP32_EXP_BITS],
                                      Const(0, 1)))
        return m


def in_layout(lanes: int, in_bits: int = formats.HAD_IN_BITS) -> data.StructLayout:
    """Payload of one input beat: L mantissas and the token's block exponent (read on a vector's first beat)."""
    return data.StructLayout({"x": data.ArrayLayout(signed(in_bits), lanes), "exp": signed(EXP_BITS)})


def out_layout(lanes: int) -> data.StructLayout:
    """Payload of one output beat: L INT4 codes, the vector's FP32 scale s_u and exponent, and ``last``."""
    return data.StructLayout({"q": data.ArrayLayout(signed(formats.ACT_BITS), lanes), "scale": unsigned(32),
                              "exp": signed(EXP_BITS), "last": 1})


class HadamardLaneUnit(wiring.Component):
    """H_n x and its INT4 quantization, L lanes per cycle, streams in and out (``amaranth.lib.stream``).

    ``i``: n / L beats per vector, payload ``in_layout`` (lane l of beat r is element r * L + l); ``o``: n / L beats,
    payload ``out_layout``, ``last`` on the vector's final beat. Both follow the stream rules (valid held until
    ready; the unit holds ``o.payload`` stable while ``o.valid`` waits). One vector is in the unit at a time: its
    period is ``lane_unit_period(n, L)`` cycles without back-pressure. The FP32 scale s_u is the one of
    ``formats.had_output_quant`` before the 1/sqrt(n) and 2^exp factors, as in ``HadamardQuantUnit``.
    """

    def __init__(self, n: int, lanes: int, in_bits: int = formats.HAD_IN_BITS):
        try:
            self.K, self.p = hadamard_split(n)
            if lanes < 2 or lanes & (lanes - 1) or n % lanes or lanes >= n:
                raise QiftError(f"lanes must be a power of two >= 2 that divides n = {n} and is below it, got {lanes}")
            if not 2 <= in_bits <= 24:
                raise QiftError(f"input width must be 2..24 bits, got {in_bits}")
            self.out_bits = output_bits(n, in_bits)
            self.quant = LaneQuantizer(lanes, self.out_bits)
        except QiftError:
            silence_unused(self)
            raise
        silence_unused(self.quant)
        self.n, self.L, self.in_bits = n, lanes, in_bits
        self.R = n // lanes
        self.passes = max(self.p.bit_length() - lanes.bit_length(), 0)
        self.period = lane_unit_period(n, lanes)
        super().__init__({
            "i": In(stream.Signature(in_layout(lanes, in_bits))),
            "o": Out(stream.Signature(out_layout(lanes))),
        })

    def params(self) -> dict:
        """The generator parameters (written into the Verilog header)."""
        return {"n": self.n, "K": self.K, "pow2": self.p, "lanes": self.L, "in_bits": self.in_bits,
                "y_bits": self.out_bits, "act_bits": formats.ACT_BITS, "act_clip": formats.ACT_CLIP,
                "cycles_per_vector": self.period}

    def elaborate(self, platform) -> Module:
        m = Module()
        L, R, K, p, ob = self.L, self.R, self.K, self.p, self.out_bits
        lg_l, lg_p = L.bit_length() - 1, p.bit_length() - 1
        m.submodules.quant = quant = self.quant
        m.submodules.zmem = zmem = Memory(shape=data.ArrayLayout(signed(ob), L), depth=R, init=[])
        zw, zr = zmem.write_port(), zmem.read_port(domain="comb")
        if K > 1:
            m.submodules.ymem = ymem = Memory(shape=data.ArrayLayout(signed(ob), L), depth=R, init=[])
            yw, yr = ymem.write_port(), ymem.read_port(domain="comb")
        else:
            yw, yr = None, zr

        row = Signal(range(R + 1), name="row")
        exp = Signal(signed(EXP_BITS), name="exp")
        amax = Signal(unsigned(ob), name="amax")
        fin_we = Signal(name="fin_we")
        fin_data = Signal(data.ArrayLayout(signed(ob), L), name="fin_data")
        m.d.comb += quant.amax.eq(amax)

        # max|y| over every final write of the vector
        _, fin_max = abs_max_tree(m, [fin_data[lane] for lane in range(L)], ob, "fin_mag", "fin_max_")
        with m.If(fin_we & (fin_max > amax)):
            m.d.sync += amax.eq(fin_max)

        # LOAD: butterfly stages inside a row on the way in
        lanes = [self.i.payload.x[lane] for lane in range(L)]
        for s in range(min(lg_l, lg_p)):
            h = 1 << s
            lanes = [lanes[lane] + lanes[lane + h] if not lane & h else lanes[lane - h] - lanes[lane]
                     for lane in range(L)]

        # XPASS: stride 2^t rows; pair i = (top, top + 2^t), top = i with a 0 inserted at bit t
        pass_t = Signal(range(max(self.passes, 1)), name="pass_t")
        step = Signal(range(max(R + 2, SCALE_CYCLES + 1)), name="step")
        pair = step >> 1
        tops = [Cat(pair[:t], Const(0, 1), pair[t:]) for t in range(max(self.passes, 1))]
        top = Signal(range(R), name="xp_top")
        m.d.comb += top.eq(Array(tops)[pass_t])
        hold_t = Signal(data.ArrayLayout(signed(ob), L), name="xp_hold_top")
        hold_d = Signal(data.ArrayLayout(signed(ob), L), name="xp_hold_diff")
        hold_a = Signal(range(R), name="xp_hold_addr")
        xp_waddr = Signal(range(R), name="xp_waddr")

        # KSTAGE: output row e_out (element index), term kk; input element kk * p + (e_out mod p)
        kk = Signal(range(K), name="kk")
        e_out = Signal(range(R * L + 1), name="e_out")
        e_in = Cat(e_out[:lg_p], kk)
        groups, per = max(L // p, 1), min(L, p)
        acc = [Signal(signed(ob), name=f"acc{lane}") for lane in range(L)]
        signs = []
        if K > 1:
            hk = k_matrix(self.n)
            rom = Memory(shape=unsigned(K), depth=K,
                         init=[sum(1 << b for b in range(K) if hk[a, b] > 0) for a in range(K)])
            m.submodules.hrom = rom
            for g in range(groups):
                port = rom.read_port(domain="comb")
                m.d.comb += port.addr.eq((e_out >> lg_p) + g)
                signs.append(port.data.bit_select(kk, 1))

        with m.FSM(name="phase") as fsm:
            with m.State("LOAD"):
                m.d.comb += zw.en.eq(self.i.valid)
                m.d.comb += [zw.data[lane].eq(lanes[lane]) for lane in range(L)]
                with m.If(self.i.valid):
                    m.d.sync += row.eq(row + 1)
                    with m.If(row == 0):
                        m.d.sync += exp.eq(self.i.payload.exp)
                    with m.If(row == R - 1):
                        m.d.sync += [row.eq(0), step.eq(0), pass_t.eq(0), kk.eq(0), e_out.eq(0)]
                        m.next = "XPASS" if self.passes else ("KSTAGE" if K > 1 else "SCALE")
            if self.passes:
                with m.State("XPASS"):
                    last = (pass_t == self.passes - 1) if K == 1 else Const(0, 1)
                    m.d.sync += step.eq(step + 1)
                    with m.If((step == R) | (step[0] == 0) & (step != 0)):
                        m.d.comb += [xp_waddr.eq(hold_a), zw.en.eq(1), zw.data.eq(hold_d), fin_we.eq(last),
                                     fin_data.eq(hold_d)]
                    with m.If(step == R):
                        m.d.sync += [step.eq(0), pass_t.eq(pass_t + 1)]
                        with m.If(pass_t == self.passes - 1):
                            m.next = "KSTAGE" if K > 1 else "SCALE"
                    with m.Elif(step[0] == 0):
                        m.d.comb += zr.addr.eq(top)
                        m.d.sync += hold_t.eq(zr.data)
                    with m.Else():
                        bot = Array([top | (1 << t) for t in range(self.passes)])[pass_t]
                        summ = [hold_t[lane] + zr.data[lane] for lane in range(L)]
                        m.d.comb += [zr.addr.eq(bot), xp_waddr.eq(top), zw.en.eq(1), fin_we.eq(last)]
                        m.d.comb += [zw.data[lane].eq(summ[lane]) for lane in range(L)]
                        m.d.comb += [fin_data[lane].eq(summ[lane]) for lane in range(L)]
                        m.d.sync += [hold_d[lane].eq(hold_t[lane] - zr.data[lane]) for lane in range(L)]
                        m.d.sync += hold_a.eq(bot)
            if K > 1:
                with m.State("KSTAGE"):
                    m.d.comb += zr.addr.eq(e_in >> lg_l)
                    off = e_in[:lg_l] >> lg_p if groups > 1 else Const(0, 1)
                    res = []
                    for lane in range(L):
                        g, t = divmod(lane, per)
                        src = Array([zr.data[o * per + t] for o in range(groups)])[off]
                        base = Mux(kk == 0, 0, acc[lane])
                        res.append(Mux(signs[g], base + src, base - src))
                    m.d.comb += [yw.addr.eq(e_out >> lg_l)] + [yw.data[lane].eq(res[lane]) for lane in range(L)]
                    m.d.comb += [fin_data[lane].eq(res[lane]) for lane in range(L)]
                    with m.If(kk == K - 1):
                        m.d.comb += [yw.en.eq(1), fin_we.eq(1)]
                        m.d.sync += [kk.eq(0), e_out.eq(e_out + L)]
                        with m.If(e_out == (R - 1) * L):
                            m.next = "SCALE"
                    with m.Else():
                        m.d.sync += kk.eq(kk + 1)
                        m.d.sync += [acc[lane].eq(res[lane]) for lane in range(L)]
            with m.State("SCALE"):
                m.d.comb += quant.start.eq(step == 0)
                m.d.sync += step.eq(step + 1)
                with m.If(step == SCALE_CYCLES - 1):
                    m.d.sync += step.eq(0)
                    m.next = "OUT"
            with m.State("OUT"):
                m.d.comb += yr.addr.eq(row)
                with m.If(self.o.ready):
                    m.d.sync += row.eq(row + 1)
                    with m.If(row == R - 1):
                        m.d.sync += [row.eq(0), amax.eq(0)]
                        m.next = "LOAD"
        # unconditional, so they are continuous assignments in the Verilog, valid from time 0 (a simulator need not
        # run an always @* block before one of its inputs changes)
        m.d.comb += [self.i.ready.eq(fsm.ongoing("LOAD")), self.o.valid.eq(fsm.ongoing("OUT")),
                     zw.addr.eq(Mux(fsm.ongoing("LOAD"), row, xp_waddr))]
        m.d.comb += [quant.y[lane].eq(yr.data[lane]) for lane in range(L)]
        m.d.comb += [self.o.payload.q.eq(quant.q), self.o.payload.scale.eq(quant.scale),
                     self.o.payload.exp.eq(exp), self.o.payload.last.eq(row == R - 1)]
        return m


def hadamard_lanes_top(n: int, lanes: int, in_bits: int = formats.HAD_IN_BITS):
    """The lane-multiplexed unit as a ``generate.Top`` (module ``qift_hadamard_lanes_<n>_l<L>_i<in_bits>``)."""
    from qift_hw.rtl.generate import Top

    unit = HadamardLaneUnit(n, lanes, in_bits)
    return Top(f"qift_hadamard_lanes_{n}_l{lanes}_i{in_bits}", unit, unit.params())


def unpack_beats(words: list[int], lanes: int) -> dict[str, list]:
    """Output payload words (``out_layout``, field offsets as Amaranth lays them out) -> q [beats][L], scale bits,
    exp and last per beat."""
    layout = out_layout(lanes)

    def field(word: int, name: str, signed_: bool, offset: int = 0, width: int | None = None) -> int:
        f = layout[name]
        width = width or Shape.cast(f.shape).width
        v = (word >> (f.offset + offset)) & ((1 << width) - 1)
        return v - (1 << width) if signed_ and v >> (width - 1) else v

    qb = formats.ACT_BITS
    return {"q": [[field(w, "q", True, i * qb, qb) for i in range(lanes)] for w in words],
            "scale": [field(w, "scale", False) for w in words], "exp": [field(w, "exp", True) for w in words],
            "last": [field(w, "last", False) for w in words]}


def quantizer_area(lanes: int, y_bits: int, old: bool = False) -> dict:
    """Generic Yosys cells and flip-flops of the lane quantizer (or, ``old``, of ``Int4Quantizer`` with as many
    lanes), synthesised alone with the flow of ``qift-hw rtl area``."""
    import tempfile
    from pathlib import Path

    from amaranth.back import verilog

    from qift_hw.rtl.area import _design_totals, _run_stat, find_yosys

    comp = Int4Quantizer(lanes, y_bits) if old else LaneQuantizer(lanes, y_bits)
    text = verilog.convert(comp, name="quantizer", emit_src=False, strip_internal_attrs=True)
    with tempfile.TemporaryDirectory(prefix="qift_synth_") as tmp:
        src = Path(tmp) / "quantizer.v"
        src.write_text(text)
        cells, types = _design_totals(_run_stat(find_yosys(), src, "quantizer", "generic", Path(tmp)))
    return {"quantizer": type(comp).__name__, "lanes": lanes, "y_bits": y_bits, "generic_cells": cells,
            "generic_ff": sum(v for k, v in types.items() if "DFF" in k)}
