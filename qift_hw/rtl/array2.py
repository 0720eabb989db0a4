"""R x C PE arrays of protocol v2 (docs/array_protocol.md, "Protocol v2: overlapped tiles").

``WS2Array`` is v1's weight-stationary array plus a shadow weight register per PE, loaded while the current tile
streams (by a column shift chain for the ``ws`` dataflow, or by a per-PE write port for ``stream``) and made active
by a swap tag that travels right with the tile's first activation. ``OS2Array`` is v1's output-stationary array
plus an output chain: a ``last`` tag moving right with the tile's last activation captures each result, and a
drain-enable lane shifts the chain down while the next tile already accumulates. Both have exactly the registers
the protocol names, per PE, around the same ``MacCore`` every v1 cell uses, a global ``en`` (0 = stall: no
register changes) and a synchronous reset that clears every register. Vector ports are ``data.ArrayLayout``s;
the per-PE write port ``wp_in``/``wp_we`` is R lanes of C lanes (``wp_in[r][c]``), one flat Verilog port whose
lane r*C + c sits at bits ``[(r*C + c)*b, (r*C + c + 1)*b)``.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal
from amaranth.lib.wiring import In, Out

from qift_hw.core import formats
from qift_hw.core.errors import QiftError
from qift_hw.rtl.array import _Array
from qift_hw.rtl.pe import silence_unused
from qift_hw.rtl.ports import port_lanes, vector

WEIGHT_PORTS = ("both", "chain", "port")
"""Which shadow-load ports a WS v2 array has: the column shift chain (``sh_in``/``w_in``, dataflow ``ws``), the
per-PE write port (``wp_in``/``wp_we``, dataflow ``stream``), or both (one array for prefill and decode)."""

V2_ARRAYS = {"ws2": ("ws2", "both"), "ws2_chain": ("ws2", "chain"), "ws2_port": ("ws2", "port"), "os2": ("os2", None)}
"""Names of the v2 array tops (``array_top`` dataflow names) -> (array, WS weight ports)."""


class WS2Array(_Array):
    """Weight-stationary v2 array (dataflows ``ws`` and ``stream``): v1's PE plus ``sreg``, ``swreg``, ``shreg``.

    Per PE, every advancing cycle (``a``, ``sw``, ``sh`` from the left, ``p``, ``ovf``, ``pv`` from above)::

        w_use = sw ? sreg : wreg;  preg <= sat(p + w_use * a);  ovreg <= ovf | saturated;  pvreg <= pv
        wreg <= w_use;  areg <= a;  swreg <= sw;  shreg <= sh
        sreg <= wp_we[r][c] ? wp_in[r][c] : sh ? (r == 0 ? w_in[c] : sreg above) : sreg

    Ports: ``en``, ``a_in`` (R), ``sw_in`` (R), ``sh_in`` (R), ``w_in`` (C codes), ``wp_in`` (R x C codes),
    ``wp_we`` (R x C bits), ``p_in`` (C sums), ``ovf_in``, ``pv_in`` (C bits); outputs ``p_out``, ``ovf_out``,
    ``pv_out`` (the bottom row's ``preg``, ``ovreg``, ``pvreg``). ``weight_ports`` leaves out the write port
    (``chain``: ``ws`` only) or the shift chain with its ``shreg`` (``port``: ``stream`` only).
    """

    dataflow = "ws2"

    def __init__(self, rows: int, cols: int, kind: str = "pot_mnz", acc_bits: int = formats.ACC_BITS,
                 weight_ports: str = "both"):
        if weight_ports not in WEIGHT_PORTS:
            silence_unused(self)
            raise QiftError(f"unknown weight_ports {weight_ports!r}; use one of {', '.join(WEIGHT_PORTS)}")
        self.weight_ports = weight_ports
        self.chain = weight_ports in ("both", "chain")
        self.port = weight_ports in ("both", "port")
        super().__init__(rows, cols, kind, acc_bits)

    def _ports(self) -> dict:
        R, C, w = self.rows, self.cols, self.fmt.w_shape
        ports = {"a_in": In(vector(self.a_shape, R)), "sw_in": In(vector(1, R))}
        if self.chain:
            ports |= {"sh_in": In(vector(1, R)), "w_in": In(vector(w, C))}
        if self.port:
            ports |= {"wp_in": In(vector(vector(w, C), R)), "wp_we": In(vector(vector(1, C), R))}
        return ports | {"p_in": In(vector(self.acc_shape, C)), "ovf_in": In(vector(1, C)),
                        "pv_in": In(vector(1, C)), "p_out": Out(vector(self.acc_shape, C)),
                        "ovf_out": Out(vector(1, C)), "pv_out": Out(vector(1, C))}

    def lanes(self) -> dict[str, tuple[int, int, bool]]:
        """Vector layout of every data port; the R x C write port counts as R*C lanes, lane r*C + c."""
        lanes = port_lanes(self)
        if self.port:
            n, w = self.rows * self.cols, self.fmt.w_shape
            lanes |= {"wp_in": (n, w.width, w.signed), "wp_we": (n, 1, False)}
        return lanes

    def params(self) -> dict:
        return {**super().params(), "weight_ports": self.weight_ports}

    def elaborate(self, platform) -> Module:
        m = Module()
        R, C = self.rows, self.cols
        grid = [[{
            "w": Signal(self.fmt.w_shape, name=f"wreg_{r}_{c}"),
            "s": Signal(self.fmt.w_shape, name=f"sreg_{r}_{c}"),
            "a": Signal(self.a_shape, name=f"areg_{r}_{c}"),
            "p": Signal(self.acc_shape, name=f"preg_{r}_{c}"),
            "ov": Signal(name=f"ovreg_{r}_{c}"),
            "pv": Signal(name=f"pvreg_{r}_{c}"),
            "sw": Signal(name=f"swreg_{r}_{c}"),
            "sh": Signal(name=f"shreg_{r}_{c}") if self.chain else None,
        } for c in range(C)] for r in range(R)]
        for r in range(R):
            for c in range(C):
                cell = grid[r][c]
                if c == 0:
                    a, sw = self.a_in[r], self.sw_in[r]
                    sh = self.sh_in[r] if self.chain else None
                else:
                    left = grid[r][c - 1]
                    a, sw, sh = left["a"], left["sw"], left["sh"]
                if r == 0:
                    p, ov, pv = self.p_in[c], self.ovf_in[c], self.pv_in[c]
                    s_above = self.w_in[c] if self.chain else None
                else:
                    up = grid[r - 1][c]
                    p, ov, pv, s_above = up["p"], up["ov"], up["pv"], up["s"]
                w_use = Mux(sw, cell["s"], cell["w"])
                core = self._cell(m, r, c, a, w_use, p)
                s_next = cell["s"]
                if self.chain:
                    s_next = Mux(sh, s_above, s_next)
                if self.port:
                    s_next = Mux(self.wp_we[r][c], self.wp_in[r][c], s_next)
                with m.If(self.en):
                    m.d.sync += [cell["p"].eq(core.sum), cell["ov"].eq(ov | core.over), cell["pv"].eq(pv),
                                 cell["w"].eq(w_use), cell["a"].eq(a), cell["sw"].eq(sw), cell["s"].eq(s_next)]
                    if self.chain:
                        m.d.sync += cell["sh"].eq(sh)
        self._ws_outputs(m, grid)
        return m


class OS2Array(_Array):
    """Output-stationary v2 array: v1's PE plus ``lreg``, ``hreg`` and the output chain ``oreg``/``oovf``/``ovld``.

    Per PE, every advancing cycle (``a``, ``l``, ``h`` from the left, ``w`` from above)::

        x = sat(acc + w * a);  ov = ovreg | saturated
        l:     oreg <= x;  oovf <= ov;  ovld <= 1;  acc <= 0;  ovreg <= 0          (capture the tile's last MAC)
        else:  acc <= x;  ovreg <= ov;  h: oreg, oovf, ovld <= the row above's (row 0: 0, 0, 0)
                                        bottom row without h: ovld <= 0             (a result is valid one cycle)
        areg <= a;  lreg <= l;  hreg <= h;  wreg <= w

    Ports: ``en``, ``a_in`` (R), ``last_in`` (R), ``osh_in`` (R), ``w_in`` (C codes); outputs ``out`` (C),
    ``ovf_out`` and ``out_valid`` (C bits): the bottom row's ``oreg``, ``oovf``, ``ovld``. No ``drain`` port.
    """

    dataflow = "os2"

    def __init__(self, rows: int, cols: int, kind: str = "pot_mnz", acc_bits: int = formats.ACC_BITS):
        super().__init__(rows, cols, kind, acc_bits)

    def _ports(self) -> dict:
        R, C = self.rows, self.cols
        return {"a_in": In(vector(self.a_shape, R)), "last_in": In(vector(1, R)), "osh_in": In(vector(1, R)),
                "w_in": In(vector(self.fmt.w_shape, C)), "out": Out(vector(self.acc_shape, C)),
                "ovf_out": Out(vector(1, C)), "out_valid": Out(vector(1, C))}

    def elaborate(self, platform) -> Module:
        m = Module()
        R, C = self.rows, self.cols
        grid = [[{
            "a": Signal(self.a_shape, name=f"areg_{r}_{c}"),
            "w": Signal(self.fmt.w_shape, name=f"wreg_{r}_{c}"),
            "acc": Signal(self.acc_shape, name=f"acc_{r}_{c}"),
            "ov": Signal(name=f"ovreg_{r}_{c}"),
            "l": Signal(name=f"lreg_{r}_{c}"),
            "h": Signal(name=f"hreg_{r}_{c}"),
            "o": Signal(self.acc_shape, name=f"oreg_{r}_{c}"),
            "oov": Signal(name=f"oovf_{r}_{c}"),
            "ovld": Signal(name=f"ovld_{r}_{c}"),
        } for c in range(C)] for r in range(R)]
        for r in range(R):
            for c in range(C):
                cell = grid[r][c]
                if c == 0:
                    a, last, h = self.a_in[r], self.last_in[r], self.osh_in[r]
                else:
                    left = grid[r][c - 1]
                    a, last, h = left["a"], left["l"], left["h"]
                w = self.w_in[c] if r == 0 else grid[r - 1][c]["w"]
                core = self._cell(m, r, c, a, w, cell["acc"])
                ov = cell["ov"] | core.over
                with m.If(self.en):
                    m.d.sync += [cell["a"].eq(a), cell["w"].eq(w), cell["l"].eq(last), cell["h"].eq(h)]
                    with m.If(last):
                        m.d.sync += [cell["o"].eq(core.sum), cell["oov"].eq(ov), cell["ovld"].eq(1),
                                     cell["acc"].eq(0), cell["ov"].eq(0)]
                    with m.Else():
                        m.d.sync += [cell["acc"].eq(core.sum), cell["ov"].eq(ov)]
                        with m.If(h):
                            if r == 0:
                                m.d.sync += [cell["o"].eq(0), cell["oov"].eq(0), cell["ovld"].eq(0)]
                            else:
                                up = grid[r - 1][c]
                                m.d.sync += [cell["o"].eq(up["o"]), cell["oov"].eq(up["oov"]),
                                             cell["ovld"].eq(up["ovld"])]
                        if r == R - 1:
                            with m.Else():
                                m.d.sync += cell["ovld"].eq(0)
        for c in range(C):
            bottom = grid[R - 1][c]
            m.d.comb += [self.out[c].eq(bottom["o"]), self.ovf_out[c].eq(bottom["oov"]),
                         self.out_valid[c].eq(bottom["ovld"])]
        return m


def make_array2(name: str, rows: int, cols: int, kind: str = "pot_mnz",
                acc_bits: int = formats.ACC_BITS) -> WS2Array | OS2Array:
    """A v2 array by top name: ``ws2`` (both weight ports), ``ws2_chain``, ``ws2_port`` or ``os2``."""
    if name not in V2_ARRAYS:
        raise QiftError(f"unknown v2 array {name!r}; use one of {', '.join(V2_ARRAYS)}")
    array, ports = V2_ARRAYS[name]
    if array == "os2":
        return OS2Array(rows, cols, kind, acc_bits)
    return WS2Array(rows, cols, kind, acc_bits, ports)
