"""Stimulus for the RTL benches, taken from the bit-accurate model.

``gemm_trace`` runs a whole GEMM through the cycle-stepped array of ``qift_hw.sim.array`` pass by pass (the
protocol's schedule), keeps one array object across passes so the register state carries over exactly as in the
RTL, and concatenates the per-cycle traces: what to drive and what every output must be in every cycle. It also
records where each result appears, so the outputs the RTL produced can be put back into an M x N matrix and
compared with ``qift_hw.sim.matmul`` and a direct product.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from qift_hw.core import formats
from qift_hw.core.errors import QiftError


@dataclass
class GemmTrace:
    """A GEMM as one trace: per-cycle ports plus, per pass, where its results appear."""

    dataflow: str
    trace: dict
    passes: list = field(default_factory=list)
    """Per pass: (first trace row, m0, n0, result_cycle [rows, cols], rows, cols); result_cycle counts the
    pass's advancing cycles (stall rows not counted), as the model reports it."""
    M: int = 0
    N: int = 0
    K: int = 0
    final: list = field(default_factory=list)
    """Indices into ``passes`` whose results are final (the last K-tile of WS; every OS pass)."""
    hits: np.ndarray | None = None
    """Functional coverage: hits[r, c, code, a - a_min] = MACs PE(r, c) did on real (unpadded) data."""

    @property
    def cycles(self) -> int:
        """Advancing cycles (en = 1) of the whole trace."""
        return int(np.asarray(self.trace["en"]).sum())

    @property
    def wall_cycles(self) -> int:
        """Clock cycles including stalls."""
        return len(self.trace["en"])


def _stalls(rng: np.random.Generator, n: int, prob: float) -> dict[int, int]:
    if prob <= 0:
        return {}
    hits = np.flatnonzero(rng.random(n) < prob)
    return {int(t): int(rng.integers(1, 4)) for t in hits}


def _pad(x: np.ndarray, rows: int, cols: int) -> np.ndarray:
    out = np.zeros((rows, cols), dtype=np.int64)
    out[: x.shape[0], : x.shape[1]] = x
    return out


def gemm_trace(dataflow: str, acts: np.ndarray, codes: np.ndarray, rows: int, cols: int, level_set: str = "pot_mnz",
               acc_bits: int = formats.ACC_BITS, stall_prob: float = 0.0, seed: int = 0) -> GemmTrace:
    """The trace of acts [M, K] x codes [N, K] on a ``rows`` x ``cols`` array, with random stalls if asked."""
    from qift_hw.sim import array as model

    acts = np.asarray(acts, dtype=np.int64)
    codes = np.asarray(codes, dtype=np.int64)
    (M, K), N = acts.shape, codes.shape[0]
    if codes.shape[1] != K:
        raise QiftError(f"acts have K={K} but codes have K={codes.shape[1]}")
    rng = np.random.default_rng(seed)
    parts, passes, final = [], [], []
    offset = 0
    n_codes = 1 << _code_bits(level_set)
    a_min = formats.ACT_QMIN if acts.size == 0 else min(formats.ACT_QMIN, int(acts.min()))
    a_span = max(formats.ACT_QMAX, int(acts.max()) if acts.size else 0) - a_min + 1
    hits = np.zeros((rows, cols, n_codes, a_span), dtype=np.int64)
    if dataflow == "ws":
        arr = model.WSArray(rows, cols, level_set, acc_bits)
        for n0 in range(0, N, cols):
            p = np.zeros((M, cols), dtype=np.int64)
            o = np.zeros((M, cols), dtype=bool)
            for k0 in range(0, K, rows):
                a_t = _pad(acts[:, k0:k0 + rows], M, rows)
                w_t = _pad(codes[n0:n0 + cols, k0:k0 + rows], cols, rows)
                stalls = _stalls(rng, model.ws_pass_cycles(M, rows, cols), stall_prob)
                p, o, tr = model.ws_pass(arr, a_t, w_t, p, o, stalls, rng)
                for r in range(min(rows, K - k0)):
                    for c in range(min(cols, N - n0)):
                        np.add.at(hits[r, c, w_t[c, r]], acts[:, k0 + r] - a_min, 1)
                passes.append((offset, 0, n0, tr["result_cycle"], M, cols))
                if k0 + rows >= K:
                    final.append(len(passes) - 1)
                parts.append(tr)
                offset += len(tr["en"])
    elif dataflow == "os":
        arr = model.OSArray(rows, cols, level_set, acc_bits)
        for m0 in range(0, M, rows):
            for n0 in range(0, N, cols):
                a_t = _pad(acts[m0:m0 + rows], rows, K)
                w_t = _pad(codes[n0:n0 + cols], cols, K)
                stalls = _stalls(rng, model.os_pass_cycles(K, rows, cols), stall_prob)
                _, _, tr = model.os_pass(arr, a_t, w_t, stalls, rng)
                for r in range(min(rows, M - m0)):
                    for c in range(min(cols, N - n0)):
                        np.add.at(hits[r, c], (codes[n0 + c], acts[m0 + r] - a_min), 1)
                passes.append((offset, m0, n0, tr["result_cycle"], rows, cols))
                final.append(len(passes) - 1)
                parts.append(tr)
                offset += len(tr["en"])
    else:
        raise QiftError(f"unknown dataflow {dataflow!r}; use ws or os")
    keys = [k for k in parts[0] if k != "result_cycle"]
    trace = {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in keys}
    return GemmTrace(dataflow, trace, passes, M, N, K, final, hits)


def _code_bits(level_set: str) -> int:
    from qift_hw.sim.pe import pe_kind

    return pe_kind(level_set)[1]


def result_port(dataflow: str) -> tuple[str, str, str]:
    """(value, overflow, valid) output port names of a dataflow."""
    return ("p_out", "ovf_out", "pv_out") if dataflow == "ws" else ("out", "ovf_out", "out_valid")


def assemble(gt: GemmTrace, values: np.ndarray, ovf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Put per-cycle output lanes ``values``/``ovf`` [cycles, C] back into the M x N result and overflow mask."""
    out = np.zeros((gt.M, gt.N), dtype=np.int64)
    flag = np.zeros((gt.M, gt.N), dtype=bool)
    en = np.asarray(gt.trace["en"], dtype=bool)
    for i in gt.final:
        start, m0, n0, when, rows, cols = gt.passes[i]
        advancing = start + np.flatnonzero(en[start:])
        for r in range(rows):
            for c in range(cols):
                m, n = m0 + r, n0 + c
                if m < gt.M and n < gt.N and when[r, c] >= 0:
                    row = advancing[when[r, c]]
                    out[m, n] = values[row, c]
                    flag[m, n] = ovf[row, c]
    return out, flag


def pe_trace(kind: str, acc_bits: int, cycles: int, seed: int = 0, p_en: float = 0.85, p_clr: float = 0.08,
             act_bits: int | None = None) -> dict:
    """Random trace of one stand-alone MAC PE, expected values from the model's PE product.

    Starts with a sweep of every (code, activation) pair when it fits in half the cycles; then random
    activations (the most negative value included), codes, ``en`` and ``clr``, with two runs of the largest
    positive and negative product that push a narrow accumulator into saturation in both directions.
    """
    from qift_hw.sim.pe import pe_kind, pe_product
    from qift_hw.rtl.pe import pe_format

    fmt = pe_format(kind)
    ab = fmt.act_bits if act_bits is None else act_bits
    wb = fmt.w_shape.width
    kind_id, code_bits = pe_kind(kind)
    rng = np.random.default_rng(seed)
    a = rng.integers(-(1 << (ab - 1)), 1 << (ab - 1), cycles)
    w = rng.integers(0, 1 << wb, cycles)
    en = rng.random(cycles) < p_en
    clr = rng.random(cycles) < p_clr
    n_acts = 1 << ab
    sweep = (1 << wb) * n_acts if (1 << wb) * n_acts <= cycles // 2 else 0
    if sweep:
        w[:sweep] = np.arange(sweep) // n_acts
        a[:sweep] = np.arange(sweep) % n_acts - (1 << (ab - 1))
        en[:sweep] = True
    rest = cycles - sweep
    run = max(8, rest // 6)
    pairs = sorted((int(pe_product(kind_id, c, x, code_bits)), x, c)
                   for c in range(1 << wb) for x in (-(1 << (ab - 1)), (1 << (ab - 1)) - 1))
    for start, (_, x, code) in ((sweep + rest // 4, pairs[-1]), (sweep + rest // 2, pairs[0])):
        a[start:start + run] = x
        w[start:start + run] = code
        en[start:start + run] = True
        clr[start:start + run] = False
        clr[start] = True
    lo, hi = formats.acc_range(acc_bits)
    acc_out = np.zeros(cycles, dtype=np.int64)
    ovf_out = np.zeros(cycles, dtype=bool)
    acc, ovf = 0, False
    for t in range(cycles):
        acc_out[t], ovf_out[t] = acc, ovf
        base, flag = (0, False) if clr[t] else (acc, ovf)
        if en[t]:
            x = base + int(pe_product(kind_id, int(w[t]), int(a[t]), code_bits))
            acc = min(max(x, lo), hi)
            ovf = flag or acc != x
        elif clr[t]:
            acc, ovf = 0, False
    return {"en": en, "a": a, "w": w, "clr": clr, "acc": acc_out, "ovf": ovf_out}


def hadamard_trace(vectors: np.ndarray, latency: int, seed: int = 0, p_gap: float = 0.15,
                   p_stall: float = 0.1, in_bits: int = formats.HAD_IN_BITS, exponents: np.ndarray | None = None,
                   quantize: bool = False) -> dict:
    """Trace of the Hadamard unit streaming ``vectors`` [V, n] (with random gaps and stalls).

    Expected outputs come from the model's integer Hadamard (``qift_hw.sim.hadamard_unit.hadamard_int``): the
    vector accepted in advancing cycle j appears with its valid bit in advancing cycle j + latency; data outputs
    are only defined where the valid bit is set. Stall cycles drive junk, which must be ignored. With
    ``quantize`` the outputs are those of ``HadamardQuantUnit``: q and the FP32 scale of ``formats.quantize_act``
    on fp32(y), and the token's block exponent (``exponents``, default 0) passed through.
    """
    import torch

    from qift_hw.sim.hadamard_unit import hadamard_int

    vectors = np.asarray(vectors, dtype=np.int64)
    V, n = vectors.shape
    expected = hadamard_int(vectors, in_bits)
    exps = np.zeros(V, dtype=np.int64) if exponents is None else np.asarray(exponents, dtype=np.int64)
    if quantize:
        q, s_u = formats.quantize_act(torch.from_numpy(expected).to(torch.float32))
        bits = s_u.numpy().astype(np.float32).view(np.uint32)[:, 0].astype(np.int64)
        outs = {"q": q.numpy().astype(np.int64), "scale": bits, "exp_out": exps}
        valid_name, in_names = "q_valid", ("x", "x_valid", "exp_in")
    else:
        outs = {"y": expected}
        valid_name, in_names = "y_valid", ("x", "x_valid")
    rng = np.random.default_rng(seed)
    lim = 1 << (in_bits - 1)
    rows = {k: [] for k in ("en", *in_names, *outs, valid_name)}
    pipe = [(False, None)] * latency
    v = 0
    while v < V or any(ok for ok, _ in pipe):
        ok_out, idx = pipe[0]
        for k, vals in outs.items():
            rows[k].append(vals[idx] if ok_out else np.zeros_like(vals[0]))
        rows[valid_name].append(ok_out)
        if rng.random() < p_stall:
            rows["en"].append(False)
            rows["x"].append(rng.integers(-lim, lim, n))
            rows["x_valid"].append(bool(rng.integers(2)))
            if quantize:
                rows["exp_in"].append(int(rng.integers(-20, 20)))
        else:
            feed = v < V and rng.random() >= p_gap
            rows["en"].append(True)
            rows["x"].append(vectors[v] if feed else np.zeros(n, dtype=np.int64))
            rows["x_valid"].append(feed)
            if quantize:
                rows["exp_in"].append(int(exps[v]) if feed else 0)
            pipe = pipe[1:] + [(feed, v if feed else None)]
            v += int(feed)
    return {k: np.array(vals) for k, vals in rows.items()}
