"""Pipelined Hadamard unit: ``y = H_n x`` on integer vectors, n = K * 2^k, one vector per cycle.

``H_n = H_K kron S_{2^k}`` as in ``qift_hw.core.hadamard``: the 2^k part is a Walsh-Hadamard butterfly of k stages
(add/subtract pairs at strides 1, 2, ..., 2^(k-1) inside each block of 2^k lanes), then, for K > 1, one stage
of K x K +-1 row sums across the K blocks (adds only; the matrix comes from ``qift_hw.core.hadamard``). Every stage
ends in a register, so a vector presented in cycle t comes out in cycle t + latency. Values grow one bit per
butterfly stage and ceil(log2 K) bits in the K stage; nothing is normalised: the 1/sqrt(n) is folded into the
following quantization scale. ``en`` = 0 stalls every register (valid bit included).
"""

from __future__ import annotations

import numpy as np
from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from qift_hw.core import formats
from qift_hw.core.errors import QiftError
from qift_hw.rtl.pe import silence_unused
from qift_hw.rtl.ports import port_lanes, vector

MAX_LANES = 1024


def hadamard_split(n: int) -> tuple[int, int]:
    """(K, 2^k) with n = K * 2^k, as ``qift_hw.core.hadamard.split_order`` gives it."""
    from qift_hw.core.hadamard import split_order

    return split_order(n)


def k_matrix(n: int) -> np.ndarray:
    """The K x K +-1 factor of H_n = H_K kron S_{2^k} (int64), read off ``qift_hw.core.hadamard``'s H_n."""
    from qift_hw.core.hadamard import hadamard_matrix

    k, m = hadamard_split(n)
    return hadamard_matrix(n).numpy()[::m, ::m].astype(np.int64)


def output_bits(n: int, in_bits: int = formats.HAD_IN_BITS) -> int:
    """Signed width of H_n x for ``in_bits``-wide signed x, by the formats' bit-growth rule (k + ceil(log2 K))."""
    return formats.had_out_bits(*hadamard_split(n), in_bits)


class HadamardUnit(wiring.Component):
    """``y = H_n x`` for n lanes of ``in_bits``-wide signed integers; latency k (+1 when K > 1) cycles.

    Ports: ``en`` (advance), ``x`` (n lanes, ``in_bits`` each), ``x_valid``; outputs ``y`` (n lanes of
    ``out_bits`` = in_bits + ceil(log2 n)) and ``y_valid``, the valid bit delayed by the latency.
    """

    def __init__(self, n: int, in_bits: int = formats.HAD_IN_BITS):
        try:
            if not 2 <= n <= MAX_LANES:
                raise QiftError(f"Hadamard unit size must be 2..{MAX_LANES} lanes, got {n}")
            if not 2 <= in_bits <= 32:
                raise QiftError(f"Hadamard unit input width must be 2..32 bits, got {in_bits}")
            self.K, self.m = hadamard_split(n)
        except QiftError:
            silence_unused(self)
            raise
        self.n, self.in_bits = n, in_bits
        self.stages = self.m.bit_length() - 1
        self.latency = self.stages + (1 if self.K > 1 else 0)
        self.out_bits = output_bits(n, in_bits)
        super().__init__({
            "en": In(1),
            "x": In(vector(signed(in_bits), n)),
            "x_valid": In(1),
            "y": Out(vector(signed(self.out_bits), n)),
            "y_valid": Out(1),
        })

    def lanes(self) -> dict[str, tuple[int, int, bool]]:
        """Vector layout of every data port: name -> (lanes, bits per lane, signed)."""
        return port_lanes(self)

    def params(self) -> dict:
        """The generator parameters of this instance (written into the Verilog header)."""
        return {"n": self.n, "K": self.K, "pow2": self.m, "in_bits": self.in_bits, "out_bits": self.out_bits,
                "latency": self.latency}

    def elaborate(self, platform) -> Module:
        m = Module()
        n, width = self.n, self.in_bits
        lanes = [self.x[i] for i in range(n)]
        valid = self.x_valid
        for s in range(self.stages):
            h = 1 << s
            width += 1
            regs = [Signal(signed(width), name=f"bf{s}_{i}") for i in range(n)]
            v = Signal(name=f"bf{s}_valid")
            with m.If(self.en):
                for i in range(n):
                    if i & h:
                        m.d.sync += regs[i].eq(lanes[i - h] - lanes[i])
                    else:
                        m.d.sync += regs[i].eq(lanes[i] + lanes[i + h])
                m.d.sync += v.eq(valid)
            lanes, valid = regs, v
        if self.K > 1:
            hk = k_matrix(n)
            width = self.out_bits
            regs = [Signal(signed(width), name=f"kx_{i}") for i in range(n)]
            v = Signal(name="kx_valid")
            with m.If(self.en):
                for a in range(self.K):
                    for b in range(self.m):
                        terms = [(int(hk[a, a2]), lanes[a2 * self.m + b]) for a2 in range(self.K)]
                        m.d.sync += regs[a * self.m + b].eq(_signed_sum(terms))
                m.d.sync += v.eq(valid)
            lanes, valid = regs, v
        for i in range(n):
            m.d.comb += self.y[i].eq(lanes[i])
        m.d.comb += self.y_valid.eq(valid)
        return m


def _tree(xs: list):
    while len(xs) > 1:
        xs = [xs[i] + xs[i + 1] for i in range(0, len(xs) - 1, 2)] + ([xs[-1]] if len(xs) % 2 else [])
    return xs[0]


def _signed_sum(terms: list[tuple[int, object]]):
    """Sum of +-x terms as (adder tree of the + terms) - (adder tree of the - terms): adds and subtracts only."""
    plus = [x for s, x in terms if s > 0]
    minus = [x for s, x in terms if s < 0]
    if not minus:
        return _tree(plus)
    if not plus:
        return -_tree(minus)
    return _tree(plus) - _tree(minus)


SIG = formats.FP32_SIG_BITS
"""Significand width of the scale (24): the quantizer's scale is S * 2^e with a normal FP32 significand S."""
THRESHOLD_FRAC = SIG + 1
"""The threshold constants K_j count units of 2^-(SIG + 1) = 2^-25: b = j + 1/2 and its half ulp are integers there."""
ROUND_BITS = SIG + 2
"""Width of a significand after rounding (26): SIG bits, the carry of a round-up, one spare."""
DIV_SHIFT = SIG + 3
"""The scale's first rounding is shifted up by 27 bits before the division by qmax, so the quotient keeps SIG
significant bits, a guard bit and more; the remainder is the sticky bit."""
Y_BITS_MAX = SIG + 1
"""Widest signed y the quantizer takes (25 bits): |y| <= 2^24, exact in FP32."""


def _threshold_constants(qmax: int) -> list[tuple[int, bool]]:
    """(K_j, inclusive) for j = 0 .. qmax: |y| passes level j+1 iff |y| (>= or >) s * K_j * 2^-THRESHOLD_FRAC.

    rne_int(fp32(x)) >= j + 1 happens iff fp32(x) > j + 1/2, or fp32(x) = j + 1/2 with j odd (ties to even). With
    b = j + 1/2 (an fp32 value with an even significand) and u its ulp, that is x >= b - u/2 for odd j (the tie at
    the midpoint rounds to b) and x > b + u/2 for even j. b = (2j + 1) * 2^-1 has ulp exponent
    floor(log2(j + 1/2)) - FP32_FRAC_BITS.
    """
    out = []
    for j in range(qmax + 1):
        ulp_exp = (2 * j + 1).bit_length() - 2 - formats.FP32_FRAC_BITS
        half_ulp = 1 << (ulp_exp - 1 + THRESHOLD_FRAC)
        base = (2 * j + 1) << (THRESHOLD_FRAC - 1)
        out.append((base - half_ulp, True) if j % 2 else (base + half_ulp, False))
    return out


class Int4Quantizer(wiring.Component):
    """Per-vector INT4 quantizer of exact integer y, bit-exact to ``formats.quantize_act`` on fp32(y).

    scale s = fp32(fp32(max|y| * fp32(clip)) / 7) (1.0 for an all-zero vector); q = clamp(rne(fp32(y / s)), -8, 7).
    Done with integers only: the two FP32 roundings of the scale are emulated on the 24-bit significand
    (multiply by fp32(clip)'s significand, round to nearest even; divide by 7 with a sticky remainder, round), and
    each lane's q counts how many of eight per-vector integer thresholds |y| reaches (the thresholds are where
    fp32 rounding and round-half-even change value). Needs |y| <= 2^24 (y exact in fp32).
    Pipeline: max|y|; scale; thresholds; compare (``formats.HAD_QUANT_LATENCY`` = 4 stages). Outputs q (n x 4-bit),
    ``scale`` (the FP32 bit pattern of s) and ``q_valid``; ``exp_in`` (the token's block exponent) travels along to
    ``exp_out``.
    """

    LATENCY = formats.HAD_QUANT_LATENCY

    def __init__(self, n: int, y_bits: int, exp_bits: int = 8):
        try:
            if y_bits > Y_BITS_MAX:
                raise QiftError(f"the INT4 quantizer needs |y| <= 2^{Y_BITS_MAX - 1} (exact in FP32); {y_bits}-bit y "
                                "is too wide (use a smaller Hadamard order or input width)")
        except QiftError:
            silence_unused(self)
            raise
        self.n, self.y_bits, self.exp_bits = n, y_bits, exp_bits
        self.qmax = formats.ACT_QMAX
        self.q_bits = formats.ACT_BITS
        super().__init__({
            "en": In(1),
            "y": In(vector(signed(y_bits), n)),
            "y_valid": In(1),
            "exp_in": In(signed(exp_bits)),
            "q": Out(vector(signed(self.q_bits), n)),
            "scale": Out(formats.FP32_BITS),
            "q_valid": Out(1),
            "exp_out": Out(signed(exp_bits)),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        n, yb = self.n, self.y_bits
        lanes = [self.y[i] for i in range(n)]
        en = self.en

        def stage(name: str, value, shape):
            reg = Signal(shape, name=name)
            with m.If(en):
                m.d.sync += reg.eq(value)
            return reg

        # stage 1: |y|, sign, max |y|
        mags, amax = abs_max_tree(m, lanes, yb, "q0_mag_", "q0_max_")
        mag1 = [stage(f"q1_mag_{i}", mags[i], unsigned(yb)) for i in range(n)]
        neg1 = [stage(f"q1_neg_{i}", lanes[i] < 0, 1) for i in range(n)]
        a1 = stage("q1_amax", amax, unsigned(yb))
        v1 = stage("q1_valid", self.y_valid, 1)
        e1 = stage("q1_exp", self.exp_in, signed(self.exp_bits))

        # stage 2: s = fp32(fp32(A * clip) / 7) as (S, e), S a 24-bit significand, value S * 2^e
        sig, exp = self._scale(m, a1)
        mag2 = [stage(f"q2_mag_{i}", mag1[i], unsigned(yb)) for i in range(n)]
        neg2 = [stage(f"q2_neg_{i}", neg1[i], 1) for i in range(n)]
        s2 = stage("q2_sig", sig, unsigned(SIG))
        x2 = stage("q2_exp", exp, signed(formats.FP32_EXP_BITS))
        v2 = stage("q2_valid", v1, 1)
        e2 = stage("q2_exp_in", e1, signed(self.exp_bits))

        # stage 3: integer thresholds per level
        shift = Signal(unsigned(7))
        m.d.comb += shift.eq(THRESHOLD_FRAC - x2)
        ths = []
        for j, (k, inclusive) in enumerate(_threshold_constants(self.qmax)):
            prod = Signal(unsigned(SIG + k.bit_length()), name=f"q3_p{j}")
            m.d.comb += prod.eq(s2 * k)
            if inclusive:
                bound = (prod + (Const(1, unsigned(64)) << shift) - 1) >> shift
            else:
                bound = (prod >> shift) + 1
            ths.append(stage(f"q3_th{j}", bound, unsigned(yb + 2)))
        mag3 = [stage(f"q3_mag_{i}", mag2[i], unsigned(yb)) for i in range(n)]
        neg3 = [stage(f"q3_neg_{i}", neg2[i], 1) for i in range(n)]
        s3 = stage("q3_sig", s2, unsigned(SIG))
        x3 = stage("q3_exp", x2, signed(formats.FP32_EXP_BITS))
        v3 = stage("q3_valid", v2, 1)
        e3 = stage("q3_exp_in", e2, signed(self.exp_bits))

        # stage 4: q per lane = +-(number of thresholds reached), clamped to [-8, 7]
        qmin_mag = -formats.ACT_QMIN
        for i in range(n):
            count = sum((mag3[i] >= t for t in ths), Const(0, unsigned(4)))
            pos = Mux(count > self.qmax, self.qmax, count)
            negv = Mux(count > qmin_mag, qmin_mag, count)
            q = stage(f"q4_q_{i}", Mux(neg3[i], -negv, pos), signed(self.q_bits))
            m.d.comb += self.q[i].eq(q)
        frac_bits = formats.FP32_FRAC_BITS
        fp32 = Cat(s3[:frac_bits], (x3 + frac_bits + formats.FP32_EXP_BIAS)[:formats.FP32_EXP_BITS], Const(0, 1))
        m.d.comb += [self.scale.eq(stage("q4_scale", fp32, formats.FP32_BITS)),
                     self.q_valid.eq(stage("q4_valid", v3, 1)),
                     self.exp_out.eq(stage("q4_exp_in", e3, signed(self.exp_bits)))]
        return m

    def _scale(self, m: Module, amax):
        """Combinational (significand, exponent) of fp32(fp32(A * fp32(clip)) / qmax); 1.0 = (2^23, -23) for A = 0."""
        return scale_fields(m, amax, self.y_bits, self.qmax)

    @staticmethod
    def _divide_by_const(m: Module, num, divisor: int):
        """(floor(num / divisor), num % divisor != 0) by restoring long division, one remainder step per bit (a
        constant divisor needs no general divider)."""
        width = len(num)
        rem_bits = divisor.bit_length()
        quo = Signal(unsigned(width), name="q2_quo")
        rem = Const(0, unsigned(rem_bits))
        for i in reversed(range(width)):
            cur = Signal(unsigned(rem_bits + 1), name=f"q2_div_{i}")
            m.d.comb += cur.eq(Cat(num[i], rem))
            take = cur >= divisor
            nxt = Signal(unsigned(rem_bits), name=f"q2_rem_{i}")
            m.d.comb += [quo[i].eq(take), nxt.eq(Mux(take, cur - divisor, cur))]
            rem = nxt
        return quo, rem != 0

    @staticmethod
    def _round_shift(m: Module, name: str, x, d, sticky_in, e_base):
        """x >> d rounded to nearest even (``sticky_in``: nonzero bits below x), renormalised to SIG bits:
        returns (significand, exponent) with value significand * 2^(e_base + d)."""
        width = len(x)
        kept = Signal(unsigned(width), name=f"{name}_kept")
        m.d.comb += kept.eq(x >> d)
        guard = Signal(name=f"{name}_guard")
        below = Signal(name=f"{name}_sticky")
        xs = Signal(unsigned(width + 1), name=f"{name}_xs")
        m.d.comb += [
            xs.eq(x << 1),
            guard.eq((xs >> d)[0]),
            below.eq(((xs & ((Const(1, unsigned(width + 2)) << d) - 1)) != 0) | sticky_in),
        ]
        rounded = Signal(unsigned(ROUND_BITS), name=f"{name}_rounded")
        m.d.comb += rounded.eq(kept + (guard & (below | kept[0])))
        over = rounded[SIG]
        exp = Signal(signed(formats.FP32_EXP_BITS), name=f"{name}_exp")
        m.d.comb += exp.eq(e_base + d + over)
        return Mux(over, rounded >> 1, rounded)[:SIG + 1], exp


def abs_max_tree(m: Module, values, bits: int, mag_prefix: str, max_prefix: str):
    """(|v| per lane, max over the lanes) as ``bits``-wide unsigned signals: negators and a comparator tree."""
    mags = []
    for i, v in enumerate(values):
        mag = Signal(unsigned(bits), name=f"{mag_prefix}{i}")
        m.d.comb += mag.eq(Mux(v < 0, -v, v))
        mags.append(mag)
    level = mags
    while len(level) > 1:
        nxt = []
        for i in range(0, len(level) - 1, 2):
            big = Signal(unsigned(bits), name=f"{max_prefix}{len(level)}_{i}")
            m.d.comb += big.eq(Mux(level[i] > level[i + 1], level[i], level[i + 1]))
            nxt.append(big)
        level = nxt + ([level[-1]] if len(level) % 2 else [])
    return mags, level[0]


def scale_fields(m: Module, amax, y_bits: int, qmax: int):
    """Combinational (significand, exponent) of fp32(fp32(A * fp32(clip)) / qmax) for a ``y_bits``-wide unsigned A
    (exact in FP32); 1.0 = (2^23, -23) for A = 0. Shared by ``Int4Quantizer`` and the lane-multiplexed unit."""
    p1 = Signal(unsigned(y_bits + SIG), name="q2_p1")
    m.d.comb += p1.eq(amax * formats.ACT_CLIP_FP32_SIG)
    d1 = Signal(range(len(p1) + 1), name="q2_d1")
    for i in range(len(p1)):
        with m.If(p1[i]):
            m.d.comb += d1.eq(max(i + 1 - SIG, 0))
    m1, e1 = Int4Quantizer._round_shift(m, "q2_m1", p1, d1, Const(0, 1), formats.ACT_CLIP_FP32_EXP)
    num = Signal(unsigned(SIG + 1 + DIV_SHIFT), name="q2_num")
    m.d.comb += num.eq(m1 << DIV_SHIFT)
    quo, rem_nz = Int4Quantizer._divide_by_const(m, num, qmax)
    d2 = Signal(range(len(quo) + 1), name="q2_d2")
    for i in range(len(quo)):
        with m.If(quo[i]):
            m.d.comb += d2.eq(max(i + 1 - SIG, 0))
    m2, e2 = Int4Quantizer._round_shift(m, "q2_m2", quo, d2, rem_nz, e1 - DIV_SHIFT)
    zero = amax == 0
    frac_bits = formats.FP32_FRAC_BITS
    return Mux(zero, 1 << frac_bits, m2[:SIG]), Mux(zero, -frac_bits, e2)


class HadamardQuantUnit(wiring.Component):
    """The Hadamard unit followed by the INT4 quantizer: n 16-bit mantissas (+ the token's block exponent) in,
    n INT4 activations and the FP32 scale s_u out, ``HadamardUnit.latency + 4`` cycles later.

    The activation scale of formats.had_output_quant is ldexp(s_u * fp32(1/sqrt(n)), exp_out), applied where the
    scale is consumed (the dequantizer), so the unit needs no FP multiplier.
    """

    def __init__(self, n: int, in_bits: int = formats.HAD_IN_BITS, exp_bits: int = 8):
        try:
            self.had = HadamardUnit(n, in_bits)
            self.quant = Int4Quantizer(n, self.had.out_bits, exp_bits)
        except QiftError:
            silence_unused(self)
            if hasattr(self, "had"):
                silence_unused(self.had)
            raise
        silence_unused(self.had)
        silence_unused(self.quant)
        self.n, self.in_bits, self.exp_bits = n, in_bits, exp_bits
        self.K, self.m = self.had.K, self.had.m
        self.latency = self.had.latency + Int4Quantizer.LATENCY
        super().__init__({
            "en": In(1),
            "x": In(vector(signed(in_bits), n)),
            "x_valid": In(1),
            "exp_in": In(signed(exp_bits)),
            "q": Out(vector(signed(formats.ACT_BITS), n)),
            "scale": Out(formats.FP32_BITS),
            "q_valid": Out(1),
            "exp_out": Out(signed(exp_bits)),
        })

    def lanes(self) -> dict[str, tuple[int, int, bool]]:
        """Vector layout of every data port: name -> (lanes, bits per lane, signed)."""
        return port_lanes(self)

    def params(self) -> dict:
        """The generator parameters of this instance (written into the Verilog header)."""
        return {"n": self.n, "K": self.K, "pow2": self.m, "in_bits": self.in_bits, "y_bits": self.had.out_bits,
                "act_bits": formats.ACT_BITS, "act_clip": formats.ACT_CLIP, "latency": self.latency}

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.had = had = self.had
        m.submodules.quant = quant = self.quant
        exp_pipe = self.exp_in
        for i in range(had.latency):
            reg = Signal(signed(self.exp_bits), name=f"exp_d{i}")
            with m.If(self.en):
                m.d.sync += reg.eq(exp_pipe)
            exp_pipe = reg
        m.d.comb += [
            had.en.eq(self.en), had.x.eq(self.x), had.x_valid.eq(self.x_valid),
            quant.en.eq(self.en), quant.y.eq(had.y), quant.y_valid.eq(had.y_valid), quant.exp_in.eq(exp_pipe),
            self.q.eq(quant.q), self.scale.eq(quant.scale), self.q_valid.eq(quant.q_valid),
            self.exp_out.eq(quant.exp_out),
        ]
        return m
