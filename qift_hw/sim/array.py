"""Cycle-stepped R x C PE array: weight-stationary and output-stationary, register by register.

This is the executable form of docs/array_protocol.md. Each `step` is one clock edge: every register takes the
value computed from the register outputs and input ports of the cycle that ends.

Protocol v1 (the current RTL): `ws_pass` / `os_pass` drive one pass with the protocol's input schedule and return
the per-cycle trace (inputs driven, outputs seen) that the RTL bench replays; `ws_gemm` / `os_gemm` run a whole
GEMM as back-to-back passes and count the cycles, which the cycle model (`qift_hw.sim.cycle_model`) must equal.

Protocol v2 (overlapped tiles): `WS2Array` (double-buffered weights; also the decode mode ``stream``) and
`OS2Array` (output chain drained under the next tile); `gemm_v2` runs a whole GEMM and returns the results, the
cycles, the array-edge words counted while stepping and optionally the trace; all equal `qift_hw.sim.dataflow`.
Meant for small tiles: it is a Python loop over cycles.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from qift_hw.core import formats
from qift_hw.core.errors import QiftError
from qift_hw.core.levels import LevelSet, get_level_set
from qift_hw.sim.dataflow import check_gemm, chunks
from qift_hw.sim.pe import pe_kind, pe_product

DATAFLOWS = ("ws", "os")
_ACT_SPAN = (formats.ACT_QMIN, formats.ACT_QMAX + 1)
"""Half-open range of an INT4 activation, for the junk driven during stalls."""


def _check_dims(R: int, C: int) -> None:
    if not (isinstance(R, (int, np.integer)) and isinstance(C, (int, np.integer)) and R >= 1 and C >= 1):
        raise QiftError(f"array size must be positive integers R x C, got {R} x {C}")


@dataclass
class _Array:
    R: int
    C: int
    level_set: str | LevelSet = formats.HW_LEVEL_SET
    acc_bits: int = formats.ACC_BITS
    kind: int = field(init=False)
    code_bits: int = field(init=False)

    def __post_init__(self) -> None:
        _check_dims(self.R, self.C)
        self.level_set = get_level_set(self.level_set)
        self.kind, self.code_bits = pe_kind(self.level_set)
        self.lo, self.hi = formats.acc_range(self.acc_bits)
        self.reset()

    def _mac(self, acc_in: np.ndarray, codes: np.ndarray, acts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = acc_in + pe_product(self.kind, codes, acts, self.code_bits)
        s = np.clip(x, self.lo, self.hi)
        return s, s != x


class WSArray(_Array):
    """Weight-stationary array: weights shift in from the top, activations move right, partial sums move down."""

    def reset(self) -> None:
        z = np.zeros((self.R, self.C), dtype=np.int64)
        self.wreg, self.areg, self.preg = z.copy(), z.copy(), z.copy()
        self.ovreg, self.pvreg = z.astype(bool), z.astype(bool)

    def outputs(self) -> dict[str, np.ndarray]:
        """Output ports during the current cycle (bottom-row registers)."""
        return {"p_out": self.preg[-1].copy(), "ovf_out": self.ovreg[-1].copy(), "pv_out": self.pvreg[-1].copy()}

    def step(self, w_load: bool, w_in, a_in, p_in, ovf_in, pv_in, en: bool = True) -> None:
        """One clock edge with these port values (ignored when ``en`` is low: a stall changes nothing)."""
        if not en:
            return
        if w_load:
            self.wreg = np.vstack([np.asarray(w_in, dtype=np.int64)[None, :], self.wreg[:-1]])
            return
        a_cur = np.hstack([np.asarray(a_in, dtype=np.int64)[:, None], self.areg[:, :-1]])
        p_cur = np.vstack([np.asarray(p_in, dtype=np.int64)[None, :], self.preg[:-1]])
        o_cur = np.vstack([np.asarray(ovf_in, dtype=bool)[None, :], self.ovreg[:-1]])
        v_cur = np.vstack([np.asarray(pv_in, dtype=bool)[None, :], self.pvreg[:-1]])
        self.preg, sat = self._mac(p_cur, self.wreg, a_cur)
        self.ovreg = o_cur | sat
        self.areg, self.pvreg = a_cur, v_cur


class OSArray(_Array):
    """Output-stationary array: activations move right, weights move down, each PE accumulates in place."""

    def reset(self) -> None:
        z = np.zeros((self.R, self.C), dtype=np.int64)
        self.areg, self.wreg, self.acc = z.copy(), z.copy(), z.copy()
        self.ovreg = z.astype(bool)

    def outputs(self) -> dict[str, np.ndarray]:
        """Output ports during the current cycle (bottom-row accumulators)."""
        return {"out": self.acc[-1].copy(), "ovf_out": self.ovreg[-1].copy()}

    def step(self, drain: bool, a_in, w_in, en: bool = True) -> None:
        """One clock edge: a MAC everywhere, or (``drain``) every column shifts down with zeros entering at the top."""
        if not en:
            return
        if drain:
            self.acc = np.vstack([np.zeros((1, self.C), dtype=np.int64), self.acc[:-1]])
            self.ovreg = np.vstack([np.zeros((1, self.C), dtype=bool), self.ovreg[:-1]])
            return
        a_cur = np.hstack([np.asarray(a_in, dtype=np.int64)[:, None], self.areg[:, :-1]])
        w_cur = np.vstack([np.asarray(w_in, dtype=np.int64)[None, :], self.wreg[:-1]])
        self.acc, sat = self._mac(self.acc, w_cur, a_cur)
        self.ovreg |= sat
        self.areg, self.wreg = a_cur, w_cur


# ---------------------------------------------------------------- one pass, with its trace


def ws_pass_cycles(M: int, R: int, C: int) -> int:
    """Advancing cycles of one WS pass: R (weight load) + M + R + C - 1 (stream until the last output)."""
    return R + M + R + C - 1


def os_pass_cycles(K: int, R: int, C: int) -> int:
    """Advancing cycles of one OS pass: K + R + C - 2 (stream until the last MAC) + R (drain)."""
    return K + R + C - 2 + R


def _stall_plan(stalls, n_cycles: int) -> list[int]:
    """Stall cycles to insert before each advancing cycle (dict {cycle: count} or None)."""
    plan = [0] * n_cycles
    for t, s in (stalls or {}).items():
        if 0 <= t < n_cycles:
            plan[t] += int(s)
    return plan


def ws_pass(arr: WSArray, acts: np.ndarray, codes: np.ndarray, p_in: np.ndarray | None = None,
            ovf_in: np.ndarray | None = None, stalls: dict[int, int] | None = None, rng=None):
    """One WS pass. acts int [M, R] (A[m, k0+r], 0 where padded), codes [C, R] (W[n0+c, k0+r]), p_in/ovf_in [M, C]
    (previous K-tile's partial sums; zeros for the first). Returns (results [M, C], ovf [M, C], trace dict).

    The trace has one row per wall-clock cycle: ``en`` plus every input port and output port (see the protocol).
    Stall cycles (``stalls`` {advancing cycle: count}) drive random junk on the inputs, which must be ignored.
    """
    R, C = arr.R, arr.C
    acts = np.asarray(acts, dtype=np.int64)
    codes = np.asarray(codes, dtype=np.int64)
    M = acts.shape[0]
    if acts.shape != (M, R) or codes.shape != (C, R):
        raise QiftError(f"WS pass wants acts [M, {R}] and codes [{C}, {R}], got {acts.shape} and {codes.shape}")
    p_in = np.zeros((M, C), dtype=np.int64) if p_in is None else np.asarray(p_in, dtype=np.int64)
    ovf_in = np.zeros((M, C), dtype=bool) if ovf_in is None else np.asarray(ovf_in, dtype=bool)
    T = ws_pass_cycles(M, R, C)
    rng = np.random.default_rng(0) if rng is None else rng
    trace = {k: [] for k in ("en", "w_load", "w_in", "a_in", "p_in", "ovf_in", "pv_in", "p_out", "ovf_out",
                             "pv_out")}
    res = np.zeros((M, C), dtype=np.int64)
    ovf = np.zeros((M, C), dtype=bool)
    seen = np.zeros(C, dtype=np.int64)
    when = np.full((M, C), -1, dtype=np.int64)
    plan = _stall_plan(stalls, T)
    for t in range(T):
        for _ in range(plan[t]):
            junk = (bool(rng.integers(2)), rng.integers(0, 2**arr.code_bits, C), rng.integers(*_ACT_SPAN, R),
                    rng.integers(-100, 100, C), rng.integers(0, 2, C).astype(bool), rng.integers(0, 2, C).astype(bool))
            _record(trace, arr.outputs(), False, *junk)
            arr.step(*junk, en=False)
        w_load = t < R
        w_in = codes[:, R - 1 - t] if w_load else np.zeros(C, dtype=np.int64)
        a = np.zeros(R, dtype=np.int64)
        p = np.zeros(C, dtype=np.int64)
        o = np.zeros(C, dtype=bool)
        v = np.zeros(C, dtype=bool)
        if not w_load:
            u = t - R
            for r in range(R):
                if 0 <= u - r < M:
                    a[r] = acts[u - r, r]
            for c in range(C):
                if 0 <= u - c < M:
                    p[c], o[c], v[c] = p_in[u - c, c], ovf_in[u - c, c], True
        out = arr.outputs()
        _record(trace, out, True, w_load, w_in, a, p, o, v)
        for c in np.flatnonzero(out["pv_out"]):
            m = seen[c]
            if m < M:
                res[m, c], ovf[m, c], when[m, c] = out["p_out"][c], out["ovf_out"][c], t
                seen[c] += 1
        arr.step(w_load, w_in, a, p, o, v)
    tr = {k: np.array(v) for k, v in trace.items()}
    tr["result_cycle"] = when
    return res, ovf, tr


def _record(trace: dict, out: dict, en: bool, *ports) -> None:
    trace["en"].append(en)
    for name, val in zip(trace_inputs(trace), ports):
        trace[name].append(np.array(val))
    for k, val in out.items():
        trace[k].append(val)


def trace_inputs(trace: dict) -> list[str]:
    """Names of the input ports in a trace, in step() argument order."""
    if "w_load" in trace:
        return ["w_load", "w_in", "a_in", "p_in", "ovf_in", "pv_in"]
    return ["drain", "a_in", "w_in"]


def os_pass(arr: OSArray, acts: np.ndarray, codes: np.ndarray, stalls: dict[int, int] | None = None, rng=None):
    """One OS pass. acts int [R, K] (A[m0+r, k], 0 for padded rows), codes [C, K] (W[n0+c, k]).
    Returns (results [R, C], ovf [R, C], trace dict); results are read during the drain (bottom row first).
    """
    R, C = arr.R, arr.C
    acts = np.asarray(acts, dtype=np.int64)
    codes = np.asarray(codes, dtype=np.int64)
    K = acts.shape[1]
    if acts.shape != (R, K) or codes.shape != (C, K):
        raise QiftError(f"OS pass wants acts [{R}, K] and codes [{C}, K], got {acts.shape} and {codes.shape}")
    T = os_pass_cycles(K, R, C)
    t_drain = K + R + C - 2
    rng = np.random.default_rng(0) if rng is None else rng
    trace = {k: [] for k in ("en", "drain", "a_in", "w_in", "out", "ovf_out", "out_valid")}
    res = np.zeros((R, C), dtype=np.int64)
    ovf = np.zeros((R, C), dtype=bool)
    when = np.full((R, C), -1, dtype=np.int64)
    plan = _stall_plan(stalls, T)
    for t in range(T):
        for _ in range(plan[t]):
            junk = (bool(rng.integers(2)), rng.integers(*_ACT_SPAN, R), rng.integers(0, 2**arr.code_bits, C))
            _record(trace, {**arr.outputs(), "out_valid": np.zeros(C, dtype=bool)}, False, *junk)
            arr.step(*junk, en=False)
        drain = t >= t_drain
        a = np.zeros(R, dtype=np.int64)
        w = np.zeros(C, dtype=np.int64)
        if not drain:
            for r in range(R):
                if 0 <= t - r < K:
                    a[r] = acts[r, t - r]
            for c in range(C):
                if 0 <= t - c < K:
                    w[c] = codes[c, t - c]
        out = {**arr.outputs(), "out_valid": np.full(C, drain)}
        _record(trace, out, True, drain, a, w)
        if drain:
            r = R - 1 - (t - t_drain)
            res[r], ovf[r], when[r] = out["out"], out["ovf_out"], t
        arr.step(drain, a, w)
    tr = {k: np.array(v) for k, v in trace.items()}
    tr["result_cycle"] = when
    return res, ovf, tr


# ---------------------------------------------------------------- whole GEMMs


def _pad(x: np.ndarray, rows: int, cols: int) -> np.ndarray:
    out = np.zeros((rows, cols), dtype=np.int64)
    out[: x.shape[0], : x.shape[1]] = x
    return out


def ws_gemm(acts, codes, R: int, C: int, level_set: str | LevelSet = formats.HW_LEVEL_SET,
            acc_bits: int = formats.ACC_BITS, m_tile: int | None = None, stalls_per_pass: dict[int, int] | None = None):
    """acts [M, K] x codes [N, K] on a WS array, pass by pass. Returns (acc [M, N], ovf [M, N], cycles).

    Loops: M in chunks of ``m_tile`` rows (output-buffer depth; all of M if None), N-tiles of C, K-tiles of R;
    each K-tile's outputs return on p_in in the next K-tile pass of the same N-tile.
    """
    acts, codes = np.asarray(acts, dtype=np.int64), np.asarray(codes, dtype=np.int64)
    (M, K), N = acts.shape, codes.shape[0]
    arr = WSArray(R, C, level_set, acc_bits)
    acc = np.zeros((M, N), dtype=np.int64)
    ovf = np.zeros((M, N), dtype=bool)
    mt = M if not m_tile else int(m_tile)
    cycles = 0
    for m0 in range(0, M, max(mt, 1)):
        m1 = min(M, m0 + mt)
        for n0 in range(0, N, C):
            p = np.zeros((m1 - m0, C), dtype=np.int64)
            o = np.zeros((m1 - m0, C), dtype=bool)
            for k0 in range(0, K, R):
                a_t = _pad(acts[m0:m1, k0:k0 + R], m1 - m0, R)
                w_t = _pad(codes[n0:n0 + C, k0:k0 + R], C, R)
                p, o, tr = ws_pass(arr, a_t, w_t, p, o, stalls_per_pass)
                cycles += int(tr["en"].sum())
            n1 = min(N, n0 + C)
            acc[m0:m1, n0:n1], ovf[m0:m1, n0:n1] = p[:, : n1 - n0], o[:, : n1 - n0]
    return acc, ovf, cycles


def os_gemm(acts, codes, R: int, C: int, level_set: str | LevelSet = formats.HW_LEVEL_SET,
            acc_bits: int = formats.ACC_BITS, stalls_per_pass: dict[int, int] | None = None):
    """acts [M, K] x codes [N, K] on an OS array: M-tiles of R rows, N-tiles of C columns, all of K streamed.
    Returns (acc [M, N], ovf [M, N], cycles)."""
    acts, codes = np.asarray(acts, dtype=np.int64), np.asarray(codes, dtype=np.int64)
    (M, K), N = acts.shape, codes.shape[0]
    arr = OSArray(R, C, level_set, acc_bits)
    acc = np.zeros((M, N), dtype=np.int64)
    ovf = np.zeros((M, N), dtype=bool)
    cycles = 0
    for m0 in range(0, M, R):
        m1 = min(M, m0 + R)
        for n0 in range(0, N, C):
            n1 = min(N, n0 + C)
            res, o, tr = os_pass(arr, _pad(acts[m0:m1], R, K), _pad(codes[n0:n1], C, K), stalls_per_pass)
            cycles += int(tr["en"].sum())
            acc[m0:m1, n0:n1], ovf[m0:m1, n0:n1] = res[: m1 - m0, : n1 - n0], o[: m1 - m0, : n1 - n0]
    return acc, ovf, cycles


def array_gemm(acts, codes, R: int, C: int, dataflow: str = "ws", level_set: str | LevelSet = formats.HW_LEVEL_SET,
               acc_bits: int = formats.ACC_BITS, m_tile: int | None = None):
    """The GEMM through the cycle-stepped array of the given dataflow: (acc, ovf, cycles)."""
    if dataflow == "ws":
        return ws_gemm(acts, codes, R, C, level_set, acc_bits, m_tile)
    if dataflow == "os":
        return os_gemm(acts, codes, R, C, level_set, acc_bits)
    raise QiftError(f"unknown dataflow {dataflow!r}; use one of {', '.join(DATAFLOWS)}")


# ---------------------------------------------------------------- protocol v2: overlapped tiles


class WS2Array(_Array):
    """WS v2 (also the ``stream`` mode): v1's PE plus a shadow weight register ``sreg``.

    The shadow is loaded by a column shift chain (WS: ``w_in[c]`` enters at the top, row r shifts while its
    ``shreg`` bit is set) or by the per-PE write port (stream: ``wp_in[r][c]`` where ``wp_we[r][c]``). The swap
    tag ``swreg`` travels right with the tile's first activation; the PE it reaches multiplies with ``sreg`` and
    copies it into ``wreg``, so the next tile follows the current one with no bubble.
    """

    def reset(self) -> None:
        z = np.zeros((self.R, self.C), dtype=np.int64)
        self.wreg, self.sreg, self.areg, self.preg = z.copy(), z.copy(), z.copy(), z.copy()
        self.swreg, self.shreg, self.ovreg, self.pvreg = (z.astype(bool) for _ in range(4))

    def outputs(self) -> dict[str, np.ndarray]:
        """Output ports during the current cycle (bottom-row registers), as in v1."""
        return {"p_out": self.preg[-1].copy(), "ovf_out": self.ovreg[-1].copy(), "pv_out": self.pvreg[-1].copy()}

    def step(self, a_in, sw_in, sh_in, w_in, wp_in, wp_we, p_in, ovf_in, pv_in, en: bool = True) -> None:
        """One clock edge with these port values (none when ``en`` is low)."""
        if not en:
            return
        a_cur = np.hstack([np.asarray(a_in, dtype=np.int64)[:, None], self.areg[:, :-1]])
        sw_cur = np.hstack([np.asarray(sw_in, dtype=bool)[:, None], self.swreg[:, :-1]])
        sh_cur = np.hstack([np.asarray(sh_in, dtype=bool)[:, None], self.shreg[:, :-1]])
        p_cur = np.vstack([np.asarray(p_in, dtype=np.int64)[None, :], self.preg[:-1]])
        o_cur = np.vstack([np.asarray(ovf_in, dtype=bool)[None, :], self.ovreg[:-1]])
        v_cur = np.vstack([np.asarray(pv_in, dtype=bool)[None, :], self.pvreg[:-1]])
        w_use = np.where(sw_cur, self.sreg, self.wreg)
        self.preg, sat = self._mac(p_cur, w_use, a_cur)
        self.ovreg, self.pvreg, self.wreg = o_cur | sat, v_cur, w_use
        s_above = np.vstack([np.asarray(w_in, dtype=np.int64)[None, :], self.sreg[:-1]])
        s_next = np.where(sh_cur, s_above, self.sreg)
        self.sreg = np.where(np.asarray(wp_we, dtype=bool), np.asarray(wp_in, dtype=np.int64), s_next)
        self.areg, self.swreg, self.shreg = a_cur, sw_cur, sh_cur


class OS2Array(_Array):
    """OS v2: v1's PE plus an output chain (``oreg``, ``oovf``, ``ovld``) that drains while the next tile streams.

    The ``last`` tag travels right with a tile's last activation; the PE it reaches writes sat(acc + product)
    into ``oreg`` and restarts ``acc`` at 0. Row r's output register takes the one above while its ``hreg`` bit
    (the drain lane, moving right like the activations) is set; ``out[c]`` is the bottom row's.
    """

    def reset(self) -> None:
        z = np.zeros((self.R, self.C), dtype=np.int64)
        self.areg, self.wreg, self.acc, self.oreg = z.copy(), z.copy(), z.copy(), z.copy()
        self.ovreg, self.lreg, self.hreg, self.oovf, self.ovld = (z.astype(bool) for _ in range(5))

    def outputs(self) -> dict[str, np.ndarray]:
        """Output ports during the current cycle (bottom row of the output chain)."""
        return {"out": self.oreg[-1].copy(), "ovf_out": self.oovf[-1].copy(), "out_valid": self.ovld[-1].copy()}

    def step(self, a_in, last_in, osh_in, w_in, en: bool = True) -> None:
        """One clock edge with these port values (none when ``en`` is low)."""
        if not en:
            return
        a_cur = np.hstack([np.asarray(a_in, dtype=np.int64)[:, None], self.areg[:, :-1]])
        l_cur = np.hstack([np.asarray(last_in, dtype=bool)[:, None], self.lreg[:, :-1]])
        h_cur = np.hstack([np.asarray(osh_in, dtype=bool)[:, None], self.hreg[:, :-1]])
        w_cur = np.vstack([np.asarray(w_in, dtype=np.int64)[None, :], self.wreg[:-1]])
        x, sat = self._mac(self.acc, w_cur, a_cur)
        ov = self.ovreg | sat

        def chain(reg, top, bottom_idle):
            above = np.vstack([np.full((1, self.C), top, dtype=reg.dtype), reg[:-1]])
            held = reg.copy()
            if bottom_idle is not None:
                held[-1] = bottom_idle
            return np.where(h_cur, above, held)

        self.oreg = np.where(l_cur, x, chain(self.oreg, 0, None))
        self.oovf = np.where(l_cur, ov, chain(self.oovf, False, None))
        self.ovld = l_cur | chain(self.ovld, False, False)
        self.acc = np.where(l_cur, 0, x)
        self.ovreg = ov & ~l_cur
        self.areg, self.wreg, self.lreg, self.hreg = a_cur, w_cur, l_cur, h_cur


class _Lanes:
    """Per-cycle values of one input port, filled tile by tile; two tiles driving one lane in one cycle is an
    illegal schedule and raises."""

    def __init__(self, shape: tuple, dtype) -> None:
        self.val = np.zeros(shape, dtype=dtype)
        self.used = np.zeros(shape, dtype=bool)
        self.real = np.zeros(shape, dtype=bool)

    def put(self, idx, value, real: bool = False) -> None:
        if self.used[idx]:
            raise QiftError(f"v2 schedule drives one lane twice at {idx}: the tiles overlap more than allowed")
        self.val[idx], self.used[idx], self.real[idx] = value, True, real


_WORDS = ("weight_words", "act_words", "psum_in_words", "out_words")


def _check_valid(valid: np.ndarray, expect: np.ndarray, t: int, what: str) -> None:
    if not np.array_equal(valid, expect):
        raise QiftError(f"v2 {what}: valid outputs at cycle {t} are not where the protocol puts them")


def _keep(tr: dict | None, names: tuple, values: tuple) -> None:
    if tr is not None:
        for k, v in zip(names, values):
            tr[k].append(np.array(v))


def _finish_trace(tr: dict | None, T: int) -> dict | None:
    if tr is None:
        return None
    out = {k: np.array(v) for k, v in tr.items()}
    out["en"] = np.ones(T, dtype=bool)
    return out


@dataclass
class Run:
    """A GEMM through a v2 stepped array: results, advancing cycles, edge words counted while stepping, trace."""

    acc: np.ndarray
    ovf: np.ndarray
    cycles: int
    words: dict[str, int]
    starts: list[int]
    trace: dict | None = None


def _prepare(acts, codes, dataflow: str, R: int, C: int, m_tile: int | None):
    acts, codes = np.asarray(acts, dtype=np.int64), np.asarray(codes, dtype=np.int64)
    if acts.ndim != 2 or codes.ndim != 2 or acts.shape[1] != codes.shape[1]:
        raise QiftError(f"want acts [M, K] and codes [N, K], got {acts.shape} and {codes.shape}")
    (M, K), N = acts.shape, codes.shape[0]
    mt = check_gemm(dataflow, M, K, N, R, C, m_tile)
    return acts, codes, M, K, N, mt


def _ws_family(acts, codes, R: int, C: int, stream: bool, level_set, acc_bits: int, m_tile, trace: bool,
               gap_cut: int = 0) -> Run:
    """WS v2 (shift-chain shadow load, N tiles outer) or stream (per-PE write port, K tiles outer).

    Tile j of m_j rows starts at S_j: S_0 = R (ws) or 1 (stream); S_j = max(S_{j-1} + max(m_{j-1}, load),
    S_dep + R) with load = R (ws) or 1 (stream) and S_dep the start of the same outputs' previous K tile (its
    partial sums leave on p_out R cycles after they entered on p_in). ``gap_cut`` starts tiles earlier than
    that (tests show the registers then break).
    """
    df = "stream" if stream else "ws"
    acts, codes, M, K, N, mt = _prepare(acts, codes, df, R, C, m_tile)
    arr = WS2Array(R, C, level_set, acc_bits)
    acc, ovf = np.zeros((M, N), dtype=np.int64), np.zeros((M, N), dtype=bool)
    if not (M and K and N):
        return Run(acc, ovf, 0, dict.fromkeys(_WORDS, 0), [])
    load = 1 if stream else R
    ks, ns = range(0, K, R), range(0, N, C)
    tiles, m0 = [], 0
    for m in chunks(M, mt):
        order = [(n0, k0) for k0 in ks for n0 in ns] if stream else [(n0, k0) for n0 in ns for k0 in ks]
        tiles += [(m0, m, n0, k0) for n0, k0 in order]
        m0 += m
    starts, last_k = [], {}
    for j, (m0, m, n0, k0) in enumerate(tiles):
        s = load if j == 0 else starts[-1] + max(tiles[j - 1][1], load)
        if k0:
            s = max(s, last_k[(m0, n0)] + R)
        s -= gap_cut if j else 0
        starts.append(s)
        last_k[(m0, n0)] = s
    T = starts[-1] + tiles[-1][1] + R + C - 1
    a, sw, sh = _Lanes((T, R), np.int64), _Lanes((T, R), bool), _Lanes((T, R), bool)
    w, wp, pv = _Lanes((T, C), np.int64), _Lanes((T, R, C), np.int64), _Lanes((T, C), bool)
    p_row, p_col, p_k = np.full((T, C), -1), np.full((T, C), -1), np.full((T, C), -1)
    o_row, o_col, o_k = np.full((T, C), -1), np.full((T, C), -1), np.full((T, C), -1)
    for (m0, m, n0, k0), s in zip(tiles, starts):
        ki = k0 // R
        for r in range(R):
            for c in range(C):
                real = k0 + r < K and n0 + c < N
                code = codes[n0 + c, k0 + r] if real else 0
                if stream:
                    wp.put((s + r + c - 1, r, c), code, real)
                else:
                    q = R - 1 - r
                    w.put((s - R + c + q, c), code, real)
            if not stream:
                for q in range(r, R):
                    sh.put((s - R + q, r), True)
            sw.put((s + r, r), True)
            for mm in range(m):
                real = k0 + r < K
                a.put((s + mm + r, r), acts[m0 + mm, k0 + r] if real else 0, real)
        for mm in range(m):
            for c in range(C):
                pv.put((s + mm + c, c), True, ki > 0 and n0 + c < N)
                if ki:
                    p_row[s + mm + c, c], p_col[s + mm + c, c], p_k[s + mm + c, c] = m0 + mm, n0 + c, ki - 1
                t_out = s + mm + R + c
                o_row[t_out, c], o_col[t_out, c], o_k[t_out, c] = m0 + mm, n0 + c, ki
    n_pad = len(ns) * C
    psum, pflag, pk = np.zeros((M, n_pad), np.int64), np.zeros((M, n_pad), bool), np.full((M, n_pad), -1)
    words = dict.fromkeys(_WORDS, 0)
    names = ("a_in", "sw_in", "sh_in", "w_in", "wp_in", "wp_we", "p_in", "ovf_in", "pv_in", "p_out", "ovf_out",
             "pv_out")
    tr = {k: [] for k in names} if trace else None
    for t in range(T):
        out = arr.outputs()
        expect = o_row[t] >= 0
        _check_valid(out["pv_out"], expect, t, "WS")
        for c in np.flatnonzero(expect):
            r_, n_ = o_row[t, c], o_col[t, c]
            psum[r_, n_], pflag[r_, n_], pk[r_, n_] = out["p_out"][c], out["ovf_out"][c], o_k[t, c]
            words["out_words"] += int(n_ < N)
        p, o = np.zeros(C, np.int64), np.zeros(C, bool)
        for c in np.flatnonzero(p_row[t] >= 0):
            r_, n_ = p_row[t, c], p_col[t, c]
            if pk[r_, n_] != p_k[t, c]:
                raise QiftError(f"v2 WS: partial sum ({r_}, {n_}) of K tile {p_k[t, c]} is not back by cycle {t}")
            p[c], o[c] = psum[r_, n_], pflag[r_, n_]
        words["weight_words"] += int(w.real[t].sum() + wp.real[t].sum())
        words["act_words"] += int(a.real[t].sum())
        words["psum_in_words"] += int(pv.real[t].sum())
        ports = (a.val[t], sw.val[t], sh.val[t], w.val[t], wp.val[t], wp.used[t], p, o, pv.val[t])
        _keep(tr, names, ports + (out["p_out"], out["ovf_out"], out["pv_out"]))
        arr.step(*ports)
    acc[:], ovf[:] = psum[:, :N], pflag[:, :N]
    if not (pk == len(ks) - 1).all():
        raise QiftError("v2 WS: some outputs never completed their last K tile")
    return Run(acc, ovf, T, words, starts, _finish_trace(tr, T))


def _os2(acts, codes, R: int, C: int, level_set, acc_bits: int, trace: bool, gap_cut: int = 0) -> Run:
    """OS v2: M tiles of R rows outer, N tiles of C columns inner, tile j starting at j * max(K, R).

    ``gap_cut`` starts tiles earlier than that (tests show the registers then break).
    """
    acts, codes, M, K, N, _ = _prepare(acts, codes, "os", R, C, None)
    arr = OS2Array(R, C, level_set, acc_bits)
    acc, ovf = np.zeros((M, N), dtype=np.int64), np.zeros((M, N), dtype=bool)
    if not (M and K and N):
        return Run(acc, ovf, 0, dict.fromkeys(_WORDS, 0), [])
    tiles = [(m0, n0) for m0 in range(0, M, R) for n0 in range(0, N, C)]
    starts = [j * (max(K, R) - gap_cut) for j in range(len(tiles))]
    T = starts[-1] + K + 2 * R + C - 2
    a, last, osh, w = _Lanes((T, R), np.int64), _Lanes((T, R), bool), _Lanes((T, R), bool), _Lanes((T, C), np.int64)
    o_row, o_col = np.full((T, C), -1), np.full((T, C), -1)
    for (m0, n0), s in zip(tiles, starts):
        for r in range(R):
            real = m0 + r < M
            for k in range(K):
                a.put((s + k + r, r), acts[m0 + r, k] if real else 0, real)
            last.put((s + K - 1 + r, r), True)
            for j in range(r):
                osh.put((s + K - 1 + R + j, r), True)
        for c in range(C):
            real = n0 + c < N
            for k in range(K):
                w.put((s + k + c, c), codes[n0 + c, k] if real else 0, real)
            for r in range(R):
                t_out = s + K - 1 + c + R + (R - 1 - r)
                o_row[t_out, c], o_col[t_out, c] = m0 + r, n0 + c
    words = dict.fromkeys(_WORDS, 0)
    names = ("a_in", "last_in", "osh_in", "w_in", "out", "ovf_out", "out_valid")
    tr = {k: [] for k in names} if trace else None
    for t in range(T):
        out = arr.outputs()
        expect = o_row[t] >= 0
        _check_valid(out["out_valid"], expect, t, "OS")
        for c in np.flatnonzero(expect):
            r_, n_ = o_row[t, c], o_col[t, c]
            if r_ < M and n_ < N:
                acc[r_, n_], ovf[r_, n_] = out["out"][c], out["ovf_out"][c]
                words["out_words"] += 1
        words["weight_words"] += int(w.real[t].sum())
        words["act_words"] += int(a.real[t].sum())
        ports = (a.val[t], last.val[t], osh.val[t], w.val[t])
        _keep(tr, names, ports + (out["out"], out["ovf_out"], out["out_valid"]))
        arr.step(*ports)
    return Run(acc, ovf, T, words, starts, _finish_trace(tr, T))


def gemm_v2(acts, codes, R: int, C: int, dataflow: str = "ws", level_set: str | LevelSet = formats.HW_LEVEL_SET,
            acc_bits: int = formats.ACC_BITS, m_tile: int | None = None, trace: bool = False) -> Run:
    """acts [M, K] x codes [N, K] through the v2 stepped array of ``dataflow`` (ws, os or stream; ``m_tile``
    chunks M for ws and stream). ``trace=True`` keeps every port per advancing cycle for an RTL bench."""
    if dataflow == "os":
        return _os2(acts, codes, R, C, level_set, acc_bits, trace)
    if dataflow in ("ws", "stream"):
        return _ws_family(acts, codes, R, C, dataflow == "stream", level_set, acc_bits, m_tile, trace)
    raise QiftError(f"unknown dataflow {dataflow!r}; use one of ws, os, stream")


def ws2_gemm(acts, codes, R: int, C: int, level_set: str | LevelSet = formats.HW_LEVEL_SET,
             acc_bits: int = formats.ACC_BITS, m_tile: int | None = None):
    """WS v2 (double-buffered weights): (acc [M, N], ovf [M, N], cycles)."""
    r = gemm_v2(acts, codes, R, C, "ws", level_set, acc_bits, m_tile)
    return r.acc, r.ovf, r.cycles


def os2_gemm(acts, codes, R: int, C: int, level_set: str | LevelSet = formats.HW_LEVEL_SET,
             acc_bits: int = formats.ACC_BITS):
    """OS v2 (drain overlapped with the next tile): (acc [M, N], ovf [M, N], cycles)."""
    r = gemm_v2(acts, codes, R, C, "os", level_set, acc_bits)
    return r.acc, r.ovf, r.cycles


def stream_gemm(acts, codes, R: int, C: int, level_set: str | LevelSet = formats.HW_LEVEL_SET,
                acc_bits: int = formats.ACC_BITS, m_tile: int | None = None):
    """Decode mode ``stream`` (a weight tile per cycle through the wide port): (acc [M, N], ovf [M, N], cycles)."""
    r = gemm_v2(acts, codes, R, C, "stream", level_set, acc_bits, m_tile)
    return r.acc, r.ovf, r.cycles
