"""R x C PE arrays in the two dataflows of docs/array_protocol.md: weight-stationary and output-stationary.

Both follow the protocol register for register (so the RTL can be checked against the cycle-stepped model
cycle for cycle): a global advance ``en`` (0 = stall: no register changes), activations moving right one PE per
cycle, and either partial sums moving down (WS) or weights moving down into stationary accumulators (OS).
Every cell is a ``MacCore`` (the PE's product and saturating add, the one ``MacPE`` is built from) with the
cell's registers around it. Additions saturate at ``acc_bits`` and an overflow flag travels with each sum;
nothing wraps. The skew of the inputs (row r one cycle after row r-1) is the feeder's job, as the protocol
specifies. Vector ports are ``data.ArrayLayout``s: lane i of ``a_in`` is ``a_in[i]``.
"""

from __future__ import annotations

from amaranth import Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from qift_hw.core import formats
from qift_hw.core.errors import QiftError
from qift_hw.rtl.pe import MacCore, check_acc_bits, pe_format, silence_unused
from qift_hw.rtl.ports import port_lanes, vector

DATAFLOWS = ("ws", "os")
MAX_DIM = 64


def _check_dims(rows: int, cols: int) -> None:
    for name, v in (("rows", rows), ("cols", cols)):
        if not 1 <= v <= MAX_DIM:
            raise QiftError(f"array {name} must be 1..{MAX_DIM}, got {v}")


class _Array(wiring.Component):
    dataflow: str

    def _ports(self) -> dict:
        """Data ports in signature order: name -> ``In``/``Out`` member (vector ports as ArrayLayouts)."""
        raise NotImplementedError

    def __init__(self, rows: int, cols: int, kind: str, acc_bits: int):
        try:
            _check_dims(rows, cols)
            fmt = pe_format(kind)
            check_acc_bits(acc_bits, kind)
        except QiftError:
            silence_unused(self)
            raise
        self.rows, self.cols, self.kind, self.acc_bits = rows, cols, kind, acc_bits
        self.fmt = fmt
        self.a_shape = signed(self.fmt.act_bits)
        self.acc_shape = signed(acc_bits)
        super().__init__({"en": In(1), **self._ports()})

    def _cell(self, m: Module, r: int, c: int, a, w, acc) -> MacCore:
        """The PE core of cell (r, c): ``sum = sat(acc + weight(w) * a)``."""
        core = MacCore(self.kind, self.acc_bits)
        m.submodules[f"core_{r}_{c}"] = core
        m.d.comb += [core.a.eq(a), core.w.eq(w), core.acc.eq(acc)]
        return core

    def _ws_outputs(self, m: Module, grid: list) -> None:
        """WS output ports: each column's bottom-row partial sum, overflow flag and valid bit (registers)."""
        for c, bottom in enumerate(grid[-1]):
            m.d.comb += [self.p_out[c].eq(bottom["p"]), self.ovf_out[c].eq(bottom["ov"]),
                         self.pv_out[c].eq(bottom["pv"])]

    def lanes(self) -> dict[str, tuple[int, int, bool]]:
        """Vector layout of every data port: name -> (lanes, bits per lane, signed)."""
        return port_lanes(self)

    def params(self) -> dict:
        """The generator parameters of this instance (written into the Verilog header)."""
        return {"dataflow": self.dataflow, "rows": self.rows, "cols": self.cols, "kind": self.kind,
                "acc_bits": self.acc_bits, "act_bits": self.fmt.act_bits, "w_bits": self.fmt.w_shape.width}


class WSArray(_Array):
    """Weight-stationary array: PE(r, c) holds W[n0+c, k0+r]; partial sums move down, results leave the bottom.

    Ports: ``en``, ``w_load``, ``w_in`` (C codes), ``a_in`` (R activations), ``p_in`` (C partial sums), ``ovf_in``
    and ``pv_in`` (C bits); outputs ``p_out`` (C sums of the bottom row), ``ovf_out``, ``pv_out``. A pass is R load
    cycles, then M + R + C - 1 stream cycles; the result for (m, c) is on ``p_out[c]`` during stream cycle
    m + R + c (see the protocol).
    """

    dataflow = "ws"

    def __init__(self, rows: int, cols: int, kind: str = "pot_mnz", acc_bits: int = formats.ACC_BITS):
        super().__init__(rows, cols, kind, acc_bits)

    def _ports(self) -> dict:
        R, C = self.rows, self.cols
        return {"w_load": In(1), "w_in": In(vector(self.fmt.w_shape, C)), "a_in": In(vector(self.a_shape, R)),
                "p_in": In(vector(self.acc_shape, C)), "ovf_in": In(vector(1, C)), "pv_in": In(vector(1, C)),
                "p_out": Out(vector(self.acc_shape, C)), "ovf_out": Out(vector(1, C)),
                "pv_out": Out(vector(1, C))}

    def elaborate(self, platform) -> Module:
        m = Module()
        R, C = self.rows, self.cols
        grid = [[None] * C for _ in range(R)]
        for r in range(R):
            for c in range(C):
                grid[r][c] = {
                    "w": Signal(self.fmt.w_shape, name=f"wreg_{r}_{c}"),
                    "a": Signal(self.a_shape, name=f"areg_{r}_{c}"),
                    "p": Signal(self.acc_shape, name=f"preg_{r}_{c}"),
                    "ov": Signal(name=f"ovreg_{r}_{c}"),
                    "pv": Signal(name=f"pvreg_{r}_{c}"),
                }
        for r in range(R):
            for c in range(C):
                cell = grid[r][c]
                a = self.a_in[r] if c == 0 else grid[r][c - 1]["a"]
                if r == 0:
                    w_up, p_up, ov_up, pv_up = self.w_in[c], self.p_in[c], self.ovf_in[c], self.pv_in[c]
                else:
                    up = grid[r - 1][c]
                    w_up, p_up, ov_up, pv_up = up["w"], up["p"], up["ov"], up["pv"]
                core = self._cell(m, r, c, a, cell["w"], p_up)
                with m.If(self.en):
                    with m.If(self.w_load):
                        m.d.sync += cell["w"].eq(w_up)
                    with m.Else():
                        m.d.sync += [cell["a"].eq(a), cell["p"].eq(core.sum), cell["ov"].eq(ov_up | core.over),
                                     cell["pv"].eq(pv_up)]
        self._ws_outputs(m, grid)
        return m


class OSArray(_Array):
    """Output-stationary array: PE(r, c) accumulates C[m0+r, n0+c]; weights move down, activations right.

    Ports: ``en``, ``drain``, ``a_in`` (R activations), ``w_in`` (C codes); outputs ``out`` (C accumulators of the
    bottom row), ``ovf_out`` (C bits) and ``out_valid`` (= ``drain & en``: the output is taken this cycle).
    A pass is K + R + C - 2 stream cycles, then R drain cycles that shift the accumulators down (bottom row
    first) and leave zeros behind. Activation and weight registers hold during the drain.
    """

    dataflow = "os"

    def __init__(self, rows: int, cols: int, kind: str = "pot_mnz", acc_bits: int = formats.ACC_BITS):
        super().__init__(rows, cols, kind, acc_bits)

    def _ports(self) -> dict:
        R, C = self.rows, self.cols
        return {"drain": In(1), "a_in": In(vector(self.a_shape, R)), "w_in": In(vector(self.fmt.w_shape, C)),
                "out": Out(vector(self.acc_shape, C)), "ovf_out": Out(vector(1, C)), "out_valid": Out(1)}

    def elaborate(self, platform) -> Module:
        m = Module()
        R, C = self.rows, self.cols
        grid = [[{
            "a": Signal(self.a_shape, name=f"areg_{r}_{c}"),
            "w": Signal(self.fmt.w_shape, name=f"wreg_{r}_{c}"),
            "acc": Signal(self.acc_shape, name=f"acc_{r}_{c}"),
            "ov": Signal(name=f"ovreg_{r}_{c}"),
        } for c in range(C)] for r in range(R)]
        for r in range(R):
            for c in range(C):
                cell = grid[r][c]
                a = self.a_in[r] if c == 0 else grid[r][c - 1]["a"]
                w = self.w_in[c] if r == 0 else grid[r - 1][c]["w"]
                core = self._cell(m, r, c, a, w, cell["acc"])
                with m.If(self.en):
                    with m.If(self.drain):
                        if r == 0:
                            m.d.sync += [cell["acc"].eq(0), cell["ov"].eq(0)]
                        else:
                            m.d.sync += [cell["acc"].eq(grid[r - 1][c]["acc"]), cell["ov"].eq(grid[r - 1][c]["ov"])]
                    with m.Else():
                        m.d.sync += [cell["a"].eq(a), cell["w"].eq(w), cell["acc"].eq(core.sum),
                                     cell["ov"].eq(cell["ov"] | core.over)]
        for c in range(C):
            bottom = grid[R - 1][c]
            m.d.comb += [self.out[c].eq(bottom["acc"]), self.ovf_out[c].eq(bottom["ov"])]
        m.d.comb += self.out_valid.eq(self.drain & self.en)
        return m


def make_array(dataflow: str, rows: int, cols: int, kind: str = "pot_mnz",
               acc_bits: int = formats.ACC_BITS) -> WSArray | OSArray:
    """An array of the given dataflow (``ws`` or ``os``)."""
    if dataflow == "ws":
        return WSArray(rows, cols, kind, acc_bits)
    if dataflow == "os":
        return OSArray(rows, cols, kind, acc_bits)
    raise QiftError(f"unknown dataflow {dataflow!r}; use one of {', '.join(DATAFLOWS)}")
