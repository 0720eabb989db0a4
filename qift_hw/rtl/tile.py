"""Accelerator tile: weight, activation and output buffers, the WS v2 array and a sequencer that runs a tiled GEMM.

The tile takes a GEMM ``acts [M, K] x codes [N, K]`` from its own buffers and leaves the saturated accumulators
(with their overflow flags) in its output buffer, then streams them out. The sequencer follows protocol v2
(docs/array_protocol.md; the model ``qift_hw.sim.array.gemm_v2``) exactly, for one of two dataflows fixed at
generation:

* ``ws``: tiles in the order M chunk, N tile, K tile (innermost), tile j starting max(m_j, R) cycles after tile
  j-1, its weights shifted into the shadow registers by the column chain during the R cycles before its start;
* ``stream`` (decode): M chunk, K tile, N tile (innermost), a tile every m_j cycles, a K round lasting at least R
  cycles; a tile's R x C codes read as one word the cycle before its start and written through the per-PE port,
  lane (r, c) delayed r + c cycles.

So the array advances exactly ``qift_hw.sim.dataflow.gemm_compute(dataflow, ...).cycles`` cycles per command
(counted in ``cycles``).

Buffers (``amaranth.lib.memory.Memory``, one combinational read port each; docs/tile.md has the layouts):

* weights: ``ws``: word = the C codes of one K row of an N tile, word (n_t, k) at ``w_base + n_t*K + k``;
  ``stream``: word = a whole R x C tile, word (k_t, n_t) at ``w_base + k_t*n_tiles + n_t``;
* activations: word = the R INT4 values of one row of a K tile, word (k_t, m) at ``a_base + k_t*M + m``;
* outputs: C banks (one per array column), word (n_t, m) at ``o_base + n_t*M + m``, accumulator + overflow bit.
  Partial sums go back through them between the K tiles of one output, forwarded from ``p_out`` when the read
  falls in the cycle of the write.

Ports: ``load`` (stream in: target 0 = weights / 1 = activations, word address, data), ``cmd`` (stream in: M, K, N,
m_tile, word base addresses), ``drain`` (stream out: one output word per beat, C accumulators and C flags, N tiles
outer, rows inner), ``hold`` (1 = stall the array: ``en`` low), status ``busy``, ``err`` (the last command had a
zero dimension and was dropped), ``cycles`` (advancing cycles of the last command) and ``state``.
Larger-than-buffer or unaligned commands are refused by the driver (``qift_hw.verify.tile_cases``).
"""

from __future__ import annotations

import math

from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from qift_hw.core import formats
from qift_hw.core.errors import QiftError
from qift_hw.rtl.array2 import WS2Array
from qift_hw.rtl.pe import pe_format, silence_unused
from qift_hw.rtl.ports import vector

DATAFLOWS = ("ws", "stream")
"""Dataflows of the tile: ``ws`` (shadow weights by the column chain) and ``stream`` (a weight tile per start
through the per-PE write port, K tiles outer)."""
STATES = ("idle", "preload", "tiles", "flush", "drain")
"""Sequencer states in order of their encoding on the ``state`` port."""
TARGETS = {"weights": 0, "acts": 1}
"""``load`` stream targets."""
DIM_BITS = 16
"""Bits of M, K, N and m_tile in a command."""
MAX_DEPTH = 1 << 20


def _bits(n: int) -> int:
    return max(1, int(n - 1).bit_length())


def buffer_depths(weight_kib: float, act_kib: float, out_kib: float, rows: int, cols: int, kind: str = "pot_mnz",
                  acc_bits: int = formats.ACC_BITS, scale: float = 1.0, dataflow: str = "ws") -> tuple[int, int, int]:
    """Words of the weight and activation buffers and of each output bank for buffers of these capacities, divided
    by ``scale`` (a simulation keeps the tile small)."""
    fmt = pe_format(kind)
    if scale < 1:
        raise QiftError(f"scale must be >= 1 (it divides the buffers), got {scale}")
    w_lanes = cols if dataflow == "ws" else rows * cols
    words = [int(kib * 8192 / scale) // bits for kib, bits in
             ((weight_kib, w_lanes * fmt.w_shape.width), (act_kib, rows * fmt.act_bits), (out_kib, cols * (acc_bits + 1)))]
    return tuple(max(1, w) for w in words)


def depths_from_arch(arch, rows: int | None = None, cols: int | None = None, kind: str = "pot_mnz",
                     scale: float = 1.0, dataflow: str = "ws") -> dict:
    """Tile parameters (rows, cols, acc_bits, w_depth, a_depth, o_depth, dataflow) from a
    ``qift_hw.sim.arch.Arch``'s array and buffers, the buffers divided by ``scale``."""
    R = rows or arch.array.rows
    C = cols or arch.array.cols
    b = arch.buffers
    w, a, o = buffer_depths(b.weight.kib, b.act.kib, b.out.kib, R, C, kind, arch.acc_bits, scale, dataflow)
    return {"rows": R, "cols": C, "kind": kind, "acc_bits": arch.acc_bits, "w_depth": w, "a_depth": a, "o_depth": o,
            "dataflow": dataflow}


class Tile(wiring.Component):
    """R x C v2 tile (``dataflow`` ws or stream): buffers of ``w_depth``, ``a_depth`` words and C output banks of
    ``o_depth`` words."""

    def __init__(self, rows: int = 4, cols: int = 4, kind: str = "pot_mnz", acc_bits: int = formats.ACC_BITS,
                 w_depth: int = 1024, a_depth: int = 256, o_depth: int = 256, dataflow: str = "ws"):
        if dataflow not in DATAFLOWS:
            silence_unused(self)
            raise QiftError(f"the tile runs dataflow {' or '.join(DATAFLOWS)}, not {dataflow!r}")
        self.dataflow = dataflow
        try:
            self.array = WS2Array(rows, cols, kind, acc_bits, "chain" if dataflow == "ws" else "port")
        except QiftError:
            silence_unused(self)
            raise
        silence_unused(self.array)  # a submodule: the tile itself warns if it is never elaborated
        for name, d in (("w_depth", w_depth), ("a_depth", a_depth), ("o_depth", o_depth)):
            if not (isinstance(d, int) and 1 <= d <= MAX_DEPTH):
                silence_unused(self)
                raise QiftError(f"{name} must be an integer 1..{MAX_DEPTH} words, got {d!r}")
        self.rows, self.cols, self.kind, self.acc_bits = rows, cols, kind, acc_bits
        self.w_depth, self.a_depth, self.o_depth = w_depth, a_depth, o_depth
        self.fmt = pe_format(kind)
        self.code_bits, self.act_bits = self.fmt.w_shape.width, self.fmt.act_bits
        self.w_lanes = cols if dataflow == "ws" else rows * cols
        self.w_word, self.a_word = self.w_lanes * self.code_bits, rows * self.act_bits
        self.addr_bits = _bits(max(w_depth, a_depth, o_depth))
        self.cmd_layout = data.StructLayout({
            "m": unsigned(DIM_BITS), "k": unsigned(DIM_BITS), "n": unsigned(DIM_BITS), "mt": unsigned(DIM_BITS),
            "w_base": unsigned(self.addr_bits), "a_base": unsigned(self.addr_bits),
            "o_base": unsigned(self.addr_bits)})
        self.load_layout = data.StructLayout({"target": unsigned(1), "addr": unsigned(self.addr_bits),
                                              "data": unsigned(max(self.w_word, self.a_word))})
        self.drain_layout = data.StructLayout({"acc": vector(signed(acc_bits), cols), "ovf": vector(1, cols)})
        super().__init__({
            "cmd": In(stream.Signature(self.cmd_layout)),
            "load": In(stream.Signature(self.load_layout)),
            "drain": Out(stream.Signature(self.drain_layout)),
            "hold": In(1),
            "busy": Out(1), "err": Out(1), "cycles": Out(32), "state": Out(range(len(STATES))),
        })

    def params(self) -> dict:
        return {"rows": self.rows, "cols": self.cols, "kind": self.kind, "acc_bits": self.acc_bits,
                "w_depth": self.w_depth, "a_depth": self.a_depth, "o_depth": self.o_depth,
                "code_bits": self.code_bits, "act_bits": self.act_bits, "addr_bits": self.addr_bits,
                "dataflow": self.dataflow}

    def elaborate(self, platform) -> Module:
        m = Module()
        R, C, A = self.rows, self.cols, self.acc_bits
        m.submodules.array = arr = self.array
        m.submodules.wmem = wmem = Memory(shape=unsigned(self.w_word), depth=self.w_depth, init=[])
        m.submodules.amem = amem = Memory(shape=unsigned(self.a_word), depth=self.a_depth, init=[])
        banks = []
        for c in range(C):
            mem = Memory(shape=unsigned(A + 1), depth=self.o_depth, init=[])
            m.submodules[f"omem{c}"] = mem
            banks.append((mem.read_port(domain="comb"), mem.write_port()))
        w_rd, w_wr = wmem.read_port(domain="comb"), wmem.write_port()
        a_rd, a_wr = amem.read_port(domain="comb"), amem.write_port()

        st = {name: i for i, name in enumerate(STATES)}
        state = Signal(range(len(STATES)))
        running = (state == st["preload"]) | (state == st["tiles"]) | (state == st["flush"])
        en = Signal()
        m.d.comb += [en.eq(~self.hold & running), arr.en.eq(en), self.state.eq(state),
                     self.busy.eq(state != st["idle"])]

        # command registers
        ab = self.addr_bits
        M, K, N, MT = (Signal(DIM_BITS, name=n) for n in ("M", "K", "N", "MT"))
        WB, AB, OB = (Signal(ab, name=n) for n in ("WB", "AB", "OB"))
        cmd = self.cmd.payload
        zero_dim = (cmd.m == 0) | (cmd.k == 0) | (cmd.n == 0)

        # load engine (the weights of the next tile): N tile base address, K offset, load cycle q
        l_wb, l_k0, l_n0 = Signal(ab + DIM_BITS), Signal(DIM_BITS + 1), Signal(DIM_BITS + 1)
        # stream engine (the current tile)
        s_m0, s_k0, s_n0 = Signal(DIM_BITS + 1), Signal(DIM_BITS + 1), Signal(DIM_BITS + 1)
        s_ab, s_ob = Signal(ab + DIM_BITS), Signal(ab + DIM_BITS)
        tau = Signal(DIM_BITS + 1)
        pre_q = Signal(range(R + 1))
        flush_n = Signal(range(R + C + 1))
        rows_left = Signal(DIM_BITS + 1)
        m.d.comb += rows_left.eq(M - s_m0)
        sm = Signal(DIM_BITS)
        m.d.comb += sm.eq(Mux(MT < rows_left, MT, rows_left))
        ii = Signal(DIM_BITS)
        m.d.comb += ii.eq(Mux(sm > R, sm, R))
        last_k = s_k0 + R >= K
        last_n = s_n0 + C >= N
        last_chunk = s_m0 + sm >= M
        last_tile = last_k & last_n & last_chunk

        in_tiles = state == st["tiles"]
        streamdf = self.dataflow == "stream"
        round_t = Signal(DIM_BITS + 1)
        tile_end = Signal()
        loading = Signal()
        q = Signal(range(R))
        if streamdf:  # a tile every m cycles; a K round lasts at least R (its partial sums' trip back to p_in)
            m.d.comb += [tile_end.eq((tau >= sm - 1) & (~last_n | last_k | (round_t >= R - 1))),
                         loading.eq((state == st["preload"]) | (in_tiles & ~last_tile & tile_end))]
        else:
            m.d.comb += [tile_end.eq(tau == ii - 1),
                         loading.eq((state == st["preload"]) | (in_tiles & ~last_tile & (tau + R >= ii))),
                         q.eq(Mux(state == st["preload"], pre_q, tau + R - ii))]
        streaming = Signal()
        m.d.comb += streaming.eq(in_tiles & (tau < sm))

        cb = self.code_bits
        w_base = Signal(self.w_word)
        if streamdf:
            # the next tile's R x C codes (word (k_t, n_t)) one cycle before its start; lane (r, c) delayed r + c
            m.d.comb += [w_rd.addr.eq(l_wb), w_base.eq(Mux(loading, w_rd.data, 0))]
            for r in range(R):
                for c in range(C):
                    i = r * C + c
                    m.d.comb += [arr.wp_in[r][c].eq(self._delay(m, w_base[i * cb:(i + 1) * cb], r + c, en,
                                                                f"wpsk{r}_{c}")),
                                 arr.wp_we[r][c].eq(self._delay(m, loading, r + c, en, f"wpwe{r}_{c}"))]
        else:
            # weights of the next tile: word (n_t, k0 + R-1-q), masked past K; column c delayed c cycles
            kw = Signal(DIM_BITS + 2)
            m.d.comb += [kw.eq(l_k0 + (R - 1) - q), w_rd.addr.eq(l_wb + kw)]
            m.d.comb += w_base.eq(Mux(loading & (kw < K), w_rd.data, 0))
            for c in range(C):
                lane = w_base[c * cb:(c + 1) * cb]
                m.d.comb += arr.w_in[c].eq(self._delay(m, lane, c, en, f"wsk{c}"))
            for r in range(R):
                m.d.comb += arr.sh_in[r].eq(loading & (q >= r))

        # activations of the current tile: row tau, lanes past K zero; row r delayed r cycles
        m.d.comb += a_rd.addr.eq(s_ab + s_m0 + tau)
        abits = self.act_bits
        for r in range(R):
            lane = Mux(streaming & (s_k0 + r < K), a_rd.data[r * abits:(r + 1) * abits], 0)
            m.d.comb += arr.a_in[r].eq(self._delay(m, lane, r, en, f"ask{r}"))
            m.d.comb += arr.sw_in[r].eq(self._delay(m, in_tiles & (tau == 0), r, en, f"swsk{r}"))

        # one output row per streaming cycle: (valid, first K tile, address) through a delay line; column c reads
        # its partial sum at tap c and writes the result at tap R + c
        row = data.StructLayout({"v": 1, "first": 1, "addr": unsigned(ab)})
        taps = [Signal(row, name="row0")]
        m.d.comb += [taps[0].v.eq(streaming), taps[0].first.eq(s_k0 == 0), taps[0].addr.eq(s_ob + s_m0 + tau)]
        for i in range(1, R + C):
            t = Signal(row, name=f"row{i}")
            with m.If(en):
                m.d.sync += t.eq(taps[-1])
            taps.append(t)

        d_addr = Signal(ab + DIM_BITS)
        d_m, d_n0 = Signal(DIM_BITS), Signal(DIM_BITS + 1)
        for c, (rd, wr) in enumerate(banks):
            rt, wt = taps[c], taps[R + c]
            m.d.comb += [wr.addr.eq(wt.addr), wr.data.eq(Cat(arr.p_out[c], arr.ovf_out[c])),
                         wr.en.eq(en & wt.v),
                         rd.addr.eq(Mux(state == st["drain"], d_addr, rt.addr))]
            fwd = wt.v & (wt.addr == rt.addr)
            prev = Mux(fwd, wr.data, rd.data)
            use = rt.v & ~rt.first
            m.d.comb += [arr.p_in[c].eq(Mux(use, prev[:A], 0)), arr.ovf_in[c].eq(use & prev[A]),
                         arr.pv_in[c].eq(rt.v),
                         self.drain.payload.acc[c].eq(rd.data[:A]), self.drain.payload.ovf[c].eq(rd.data[A])]

        # load port: writes while idle
        ld = self.load.payload
        m.d.comb += [self.load.ready.eq(state == st["idle"]),
                     w_wr.addr.eq(ld.addr), w_wr.data.eq(ld.data), a_wr.addr.eq(ld.addr), a_wr.data.eq(ld.data),
                     w_wr.en.eq(self.load.valid & self.load.ready & (ld.target == TARGETS["weights"])),
                     a_wr.en.eq(self.load.valid & self.load.ready & (ld.target == TARGETS["acts"]))]

        m.d.comb += [self.cmd.ready.eq(state == st["idle"]), self.drain.valid.eq(state == st["drain"])]
        with m.If(en):
            m.d.sync += self.cycles.eq(self.cycles + 1)
        if streamdf:  # word (k_t, n_t) at w_base + k_t*n_tiles + n_t: N tiles inner, one word per tile
            with m.If(loading & en):
                m.d.sync += l_wb.eq(l_wb + 1)
                with m.If(l_n0 + C >= N):
                    m.d.sync += l_n0.eq(0)
                    with m.If(l_k0 + R >= K):
                        m.d.sync += [l_k0.eq(0), l_wb.eq(WB)]
                    with m.Else():
                        m.d.sync += l_k0.eq(l_k0 + R)
                with m.Else():
                    m.d.sync += l_n0.eq(l_n0 + C)
        else:
            with m.If(loading & en & (q == R - 1)):
                with m.If(l_k0 + R >= K):
                    m.d.sync += l_k0.eq(0)
                    with m.If(l_n0 + C >= N):
                        m.d.sync += [l_n0.eq(0), l_wb.eq(WB)]
                    with m.Else():
                        m.d.sync += [l_n0.eq(l_n0 + C), l_wb.eq(l_wb + K)]
                with m.Else():
                    m.d.sync += l_k0.eq(l_k0 + R)

        with m.Switch(state):
            with m.Case(st["idle"]):
                with m.If(self.cmd.valid):
                    m.d.sync += self.err.eq(zero_dim)
                    with m.If(~zero_dim):
                        m.d.sync += [M.eq(cmd.m), K.eq(cmd.k), N.eq(cmd.n),
                                     MT.eq(Mux((cmd.mt == 0) | (cmd.mt > cmd.m), cmd.m, cmd.mt)),
                                     WB.eq(cmd.w_base), AB.eq(cmd.a_base), OB.eq(cmd.o_base),
                                     l_wb.eq(cmd.w_base), l_k0.eq(0), l_n0.eq(0),
                                     s_m0.eq(0), s_k0.eq(0), s_n0.eq(0), s_ab.eq(cmd.a_base),
                                     s_ob.eq(cmd.o_base), tau.eq(0), pre_q.eq(0), self.cycles.eq(0), round_t.eq(0),
                                     state.eq(st["preload"])]
            with m.Case(st["preload"]):
                with m.If(en):
                    m.d.sync += pre_q.eq(pre_q + 1)
                    with m.If(pre_q == (0 if streamdf else R - 1)):
                        m.d.sync += state.eq(st["tiles"])
            with m.Case(st["tiles"]):
                with m.If(en):
                    m.d.sync += [tau.eq(tau + 1), round_t.eq(round_t + 1)]
                    with m.If(last_tile & (tau == sm - 1)):
                        m.d.sync += [state.eq(st["flush"]), flush_n.eq(0)]
                    with m.Elif(tile_end):
                        m.d.sync += tau.eq(0)
                        self._next_tile(m, streamdf, (s_k0, s_n0, s_m0, s_ab, s_ob, round_t),
                                        (last_k, last_n, sm, M, AB, OB))
            with m.Case(st["flush"]):
                with m.If(en):
                    m.d.sync += flush_n.eq(flush_n + 1)
                    with m.If(flush_n == R + C - 2):
                        m.d.sync += [state.eq(st["drain"]), d_addr.eq(OB), d_m.eq(0), d_n0.eq(0)]
            with m.Case(st["drain"]):
                with m.If(self.drain.ready):
                    m.d.sync += [d_addr.eq(d_addr + 1), d_m.eq(d_m + 1)]
                    with m.If(d_m == M - 1):
                        m.d.sync += [d_m.eq(0), d_n0.eq(d_n0 + C)]
                        with m.If(d_n0 + C >= N):
                            m.d.sync += state.eq(st["idle"])
        return m

    def _next_tile(self, m: Module, streamdf: bool, regs, now) -> None:
        """Advance the stream engine to the next tile: K tiles inner (ws) or N tiles inner (stream)."""
        s_k0, s_n0, s_m0, s_ab, s_ob, round_t = regs
        last_k, last_n, sm, M, AB, OB = now
        R, C = self.rows, self.cols
        inner, outer = ((s_n0, s_ob, last_n, C, OB), (s_k0, s_ab, last_k, R, AB)) if streamdf else \
            ((s_k0, s_ab, last_k, R, AB), (s_n0, s_ob, last_n, C, OB))
        with m.If(~inner[2]):
            m.d.sync += [inner[0].eq(inner[0] + inner[3]), inner[1].eq(inner[1] + M)]
        with m.Else():
            m.d.sync += [inner[0].eq(0), inner[1].eq(inner[4])]
            if streamdf:
                m.d.sync += round_t.eq(0)
            with m.If(~outer[2]):
                m.d.sync += [outer[0].eq(outer[0] + outer[3]), outer[1].eq(outer[1] + M)]
            with m.Else():
                m.d.sync += [outer[0].eq(0), outer[1].eq(outer[4]), s_m0.eq(s_m0 + sm)]

    @staticmethod
    def _delay(m: Module, value, n: int, en, name: str):
        """``value`` delayed by ``n`` advancing cycles (a shift register that moves only when ``en``)."""
        for i in range(n):
            reg = Signal.like(value, name=f"{name}_{i}")
            with m.If(en):
                m.d.sync += reg.eq(value)
            value = reg
        return value


def tile_top(rows: int = 4, cols: int = 4, kind: str = "pot_mnz", acc_bits: int = formats.ACC_BITS,
             w_depth: int = 1024, a_depth: int = 256, o_depth: int = 256, dataflow: str = "ws"):
    """The tile as a named top (``qift_hw.rtl.generate.Top``) for ``write_top`` and the cocotb benches."""
    from qift_hw.rtl.generate import Top

    t = Tile(rows, cols, kind, acc_bits, w_depth, a_depth, o_depth, dataflow)
    name = f"qift_tile_{dataflow}_{rows}x{cols}_{kind}_a{acc_bits}_w{w_depth}_x{a_depth}_o{o_depth}"
    return Top(name, t, t.params())

