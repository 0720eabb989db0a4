"""Cycle-stepped R x C PE array: weight-stationary and output-stationary, register by register.

This is the executable form of docs/array_protocol.md. Each `step` is one clock edge: every register takes the
value computed from the register outputs and input ports of the cycle that ends. `ws_pass` / `os_pass` drive one
pass with the protocol's input schedule and return the per-cycle trace (inputs driven, outputs seen) that the RTL
bench replays; `ws_gemm` / `os_gemm` run a whole GEMM as back-to-back passes and count the cycles, which the cycle
model (`qift_hw.sim.cycle_model`) must equal. Meant for small tiles: it is a Python loop over cycles.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from qift_hw.core import formats
from qift_hw.core.errors import QiftError
from qift_hw.core.levels import LevelSet, get_level_set
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
