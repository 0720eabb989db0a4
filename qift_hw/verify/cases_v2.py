"""Verification cases of the protocol-v2 arrays: model traces with stalls, and the checks on what the RTL did.

A case runs ``qift_hw.sim.array.gemm_v2(..., trace=True)`` (the stepped v2 model), inserts random stalls (``en``
low, junk on every input, outputs holding) and replays the trace on the v2 array cycle for cycle through the
generic bench (``sim/bench_replay.py``), every output lane compared in every cycle. The GEMM is then put back
together from the output lanes the RTL produced, at the cycles the protocol's tile table gives (start times
recomputed here from the written-out recurrence, not taken from the model), and compared with
``qift_hw.sim.matmul`` and the direct saturating product; the advancing cycles with ``sim.dataflow.gemm_compute``.
Coverage: code x activation bins per PE position and which PE positions saturated in which direction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from qift_hw.core import formats
from qift_hw.core.errors import QiftError
from qift_hw.rtl.generate import array_top
from qift_hw.verify.cases import Case, _observed, direct_reference, load_tiles

RESULT_PORTS = {"ws": ("p_out", "ovf_out", "pv_out"), "stream": ("p_out", "ovf_out", "pv_out"),
                "os": ("out", "ovf_out", "out_valid")}
"""(value, overflow, valid) output ports per v2 dataflow."""
ARRAY_FOR = {"ws": "ws2", "stream": "ws2", "os": "os2"}
"""The v2 array top each dataflow runs on by default (both WS weight ports)."""


@dataclass
class V2Trace:
    """A v2 GEMM as one trace (stall rows included) plus where every advancing cycle sits in it."""

    dataflow: str
    trace: dict
    rows_of_cycle: np.ndarray
    """Trace row of each advancing cycle."""
    cycles: int
    starts: list


def tile_schedule(dataflow: str, M: int, K: int, N: int, R: int, C: int, m_tile: int | None = None
                  ) -> list[tuple[int, int, int, int, int]]:
    """Tiles (m0, m rows, n0, k0, start S_j) in issue order, from docs/array_protocol.md v2 ("Tile order" and
    "Start times"): S_0 = load; S_j = max(S_{j-1} + max(m_{j-1}, load), S_dep(j) + R) for ws/stream (load = R or
    1), S_j = j * max(K, R) for os (k0 = 0, the whole K per tile)."""
    if dataflow == "os":
        tiles = [(m0, min(R, M - m0), n0, 0) for m0 in range(0, M, R) for n0 in range(0, N, C)]
        return [(*t, j * max(K, R)) for j, t in enumerate(tiles)]
    mt = min(M, m_tile) if m_tile else M
    load = R if dataflow == "ws" else 1
    out, prev, dep = [], None, {}
    for m0 in range(0, M, mt):
        m = min(mt, M - m0)
        order = ([(n0, k0) for n0 in range(0, N, C) for k0 in range(0, K, R)] if dataflow == "ws"
                 else [(n0, k0) for k0 in range(0, K, R) for n0 in range(0, N, C)])
        for n0, k0 in order:
            s = load if prev is None else prev[4] + max(prev[1], load)
            if k0:
                s = max(s, dep[(m0, n0)] + R)
            prev = (m0, m, n0, k0, s)
            dep[(m0, n0)] = s
            out.append(prev)
    return out


def result_slots(dataflow: str, M: int, K: int, N: int, R: int, C: int, m_tile: int | None = None
                 ) -> tuple[np.ndarray, int]:
    """([M, N] advancing cycle at which each final result is on its output lane (lane n mod C), the last output
    cycle of the GEMM, padded lanes included), per the protocol's tile tables: S_j + m + R + c of the last K tile
    (ws, stream), S_j + K + 2R + c - 2 - r (os)."""
    when = np.full((M, N), -1, dtype=np.int64)
    k_last = (math.ceil(K / R) - 1) * R
    last = -1
    for m0, m, n0, k0, s in tile_schedule(dataflow, M, K, N, R, C, m_tile):
        for c in range(C):
            for i in range(R if dataflow == "os" else m):
                t = s + K + 2 * R + c - 2 - i if dataflow == "os" else s + i + R + c
                last = max(last, t)
                if i < m and n0 + c < N and (dataflow == "os" or k0 == k_last):
                    when[m0 + i, n0 + c] = t
    return when, last


def _junk(rng: np.random.Generator, n: int, bits: int, signed: bool) -> np.ndarray:
    lo, hi = (-(1 << (bits - 1)), 1 << (bits - 1)) if signed else (0, 1 << bits)
    return rng.integers(lo, hi, n)


def with_stalls(trace: dict, lanes: dict, outputs: tuple, prob: float, rng: np.random.Generator
                ) -> tuple[dict, np.ndarray]:
    """The trace with 1-3 stall rows (``en`` 0) before a random ``prob`` of its cycles: junk on every input lane,
    outputs holding the values of the advancing cycle that follows. Returns (trace, row of each advancing cycle)."""
    T = len(trace["en"])
    stalls = np.where(rng.random(T) < prob, rng.integers(1, 4, T), 0) if prob > 0 else np.zeros(T, dtype=np.int64)
    inputs = [k for k in lanes if k not in outputs]
    out = {k: [] for k in ("en", *inputs, *outputs)}
    rows = np.zeros(T, dtype=np.int64)
    for t in range(T):
        for _ in range(int(stalls[t])):
            out["en"].append(False)
            for k in inputs:
                n, bits, signed = lanes[k]
                out[k].append(_junk(rng, n, bits, signed))
            for k in outputs:
                out[k].append(np.asarray(trace[k][t]))
        rows[t] = len(out["en"])
        out["en"].append(True)
        for k in (*inputs, *outputs):
            out[k].append(np.asarray(trace[k][t]).reshape(-1))
    return {k: np.array(v) for k, v in out.items()}, rows


def v2_trace(dataflow: str, acts: np.ndarray, codes: np.ndarray, R: int, C: int, lanes: dict,
             level_set: str = "pot_mnz", acc_bits: int = formats.ACC_BITS, m_tile: int | None = None,
             stall_prob: float = 0.0, seed: int = 0) -> V2Trace:
    """The model's v2 trace of acts [M, K] x codes [N, K] with stalls inserted, for a top with port ``lanes``
    (the R x C write port flattened to lane r*C + c)."""
    from qift_hw.sim.array import gemm_v2

    run = gemm_v2(acts, codes, R, C, dataflow, level_set, acc_bits, m_tile, trace=True)
    tr = dict(run.trace)
    for k in tr:
        if k != "en" and k not in lanes and np.asarray(tr[k]).any():
            raise QiftError(f"the {dataflow} trace drives {k}, which this array has not; use the ws2 array")
    outputs = RESULT_PORTS[dataflow]
    full, rows = with_stalls(tr, lanes, outputs, stall_prob, np.random.default_rng(seed))
    return V2Trace(dataflow, full, rows, run.cycles, list(run.starts))


def assemble_v2(vt: V2Trace, when: np.ndarray, values: np.ndarray, ovf: np.ndarray, valid: np.ndarray, C: int
                ) -> tuple[np.ndarray, np.ndarray, int]:
    """Results [M, N], overflow flags and the number of results whose valid bit was low, read from the per-row
    output lanes at the protocol's result cycles ``when``."""
    M, N = when.shape
    out = np.zeros((M, N), dtype=np.int64)
    flag = np.zeros((M, N), dtype=bool)
    missing = 0
    for m in range(M):
        for n in range(N):
            row, lane = vt.rows_of_cycle[when[m, n]], n % C
            out[m, n], flag[m, n] = values[row, lane], ovf[row, lane]
            missing += int(not valid[row, lane])
    return out, flag, missing


def saturation_positions(dataflow: str, acts: np.ndarray, codes: np.ndarray, R: int, C: int, level_set: str,
                         acc_bits: int) -> np.ndarray:
    """[R, C, 2] bool: PE positions whose add saturated high ([..., 0]) or low ([..., 1]) somewhere in the GEMM.

    The add of term k for (m, n) happens in PE(k mod R, n mod C) in ws/stream and PE(m mod R, n mod C) in os,
    each in ascending k from the formats' sequential saturating sum written out here.
    """
    from qift_hw.verify.cases import _int_weights

    w = _int_weights(codes, level_set)
    lo, hi = formats.acc_range(acc_bits)
    terms = np.asarray(acts, dtype=np.int64)[:, None, :] * w[None, :, :]
    M, N, K = terms.shape
    hit = np.zeros((R, C, 2), dtype=bool)
    acc = np.zeros((M, N), dtype=np.int64)
    mm, nn = np.meshgrid(np.arange(M), np.arange(N), indexing="ij")
    for k in range(K):
        x = acc + terms[:, :, k]
        acc = np.clip(x, lo, hi)
        rr = (mm % R) if dataflow == "os" else np.full_like(mm, k % R)
        for d, mask in enumerate((x > hi, x < lo)):
            hit[rr[mask], nn[mask] % C, d] = True
    return hit


def _hits(dataflow: str, acts: np.ndarray, codes: np.ndarray, R: int, C: int, n_codes: int, a_min: int,
          a_span: int) -> np.ndarray:
    """hits[r, c, code, a - a_min]: real (unpadded) MACs PE(r, c) did."""
    (M, K), N = acts.shape, codes.shape[0]
    hits = np.zeros((R, C, n_codes, a_span), dtype=np.int64)
    for m in range(M):
        for n in range(N):
            r = (m % R) if dataflow == "os" else np.arange(K) % R
            np.add.at(hits, (r, n % C, codes[n], acts[m] - a_min), 1)
    return hits


def array2_case(name: str, dataflow: str, R: int, C: int, acts: np.ndarray, codes: np.ndarray,
                level_set: str = "pot_mnz", acc_bits: int = formats.ACC_BITS, m_tile: int | None = None,
                stall_prob: float = 0.1, reset_frac: float | None = 0.4, seed: int = 0, array: str | None = None,
                note: str = "") -> Case:
    """A GEMM acts [M, K] x codes [N, K] through a v2 array (``array``: a v2 top name, default by dataflow)."""
    from qift_hw.sim import matmul
    from qift_hw.sim.dataflow import gemm_compute
    from qift_hw.sim.pe import pe_kind

    acts = np.asarray(acts, dtype=np.int64)
    codes = np.asarray(codes, dtype=np.int64)
    (M, K), N = acts.shape, codes.shape[0]
    top = array_top(array or ARRAY_FOR[dataflow], R, C, level_set, acc_bits)
    lanes = top.component.lanes()
    vt = v2_trace(dataflow, acts, codes, R, C, lanes, level_set, acc_bits, m_tile, stall_prob, seed)
    expected = gemm_compute(dataflow, M, K, N, R, C, m_tile).cycles
    when, last = result_slots(dataflow, M, K, N, R, C, m_tile)
    starts = [t[4] for t in tile_schedule(dataflow, M, K, N, R, C, m_tile)]
    n_rows = len(vt.trace["en"])
    v_name, o_name, valid_name = RESULT_PORTS[dataflow]

    def check(summary: dict) -> list[str]:
        got = [_observed(summary, k, lanes, n_rows) for k in (v_name, o_name, valid_name)]
        out, ovf, missing = assemble_v2(vt, when, *got, C)
        problems = []
        if missing:
            problems.append(f"{missing} results had {valid_name} low at the protocol's result cycle")
        if int(acts.min()) >= formats.ACT_QMIN and int(acts.max()) <= formats.ACT_QMAX:
            ref, ref_ovf = matmul(acts.astype(np.int8), codes.astype(np.uint8), level_set, acc_bits,
                                  return_overflow=True, kernel="pe")
            if not np.array_equal(out, ref):
                bad = tuple(np.argwhere(out != ref)[0])
                problems.append(f"GEMM from RTL outputs differs from qift_hw.sim.matmul at {bad}: {out[bad]} vs "
                                f"{ref[bad]}")
            if not np.array_equal(ovf, ref_ovf):
                problems.append("overflow flags from RTL differ from qift_hw.sim.matmul's overflow mask")
        direct, direct_ovf = direct_reference(acts, codes, level_set, acc_bits)
        if not np.array_equal(out, direct) or not np.array_equal(ovf, direct_ovf):
            problems.append("GEMM from RTL outputs differs from the direct saturating integer product")
        if not vt.cycles == int(np.asarray(vt.trace["en"]).sum()) == expected:
            problems.append(f"advancing cycles {vt.cycles} != gemm_compute {expected}")
        if last != expected - 1:
            problems.append(f"last output at cycle {last}, not {expected - 1}")
        if vt.starts != starts:
            problems.append("the model's tile starts differ from the protocol's recurrence")
        return problems

    n_codes = 1 << pe_kind(level_set)[1]
    a_min = min(formats.ACT_QMIN, int(acts.min()))
    a_span = max(formats.ACT_QMAX, int(acts.max())) - a_min + 1
    hits = _hits(dataflow, acts, codes % n_codes, R, C, n_codes, a_min, a_span)
    sat = saturation_positions(dataflow, acts, codes, R, C, level_set, acc_bits)
    en = np.asarray(vt.trace["en"], dtype=bool)
    cov = {
        "kind": "array_v2", "level_set": level_set, "dataflow": dataflow, "array": top.name, "rows": R, "cols": C,
        "shape": [M, K, N], "m_tile": m_tile, "macs": int(hits.sum()),
        "code_bins": [int((hits.sum(axis=(0, 1, 3)) > 0).sum()), n_codes],
        "act_bins": [int((hits.sum(axis=(0, 1, 2)) > 0).sum()), hits.shape[3]],
        "cross_bins": [int((hits.sum(axis=(0, 1)) > 0).sum()), n_codes * hits.shape[3]],
        "positions": [int((hits.sum(axis=(2, 3)) > 0).sum()), R * C],
        "_cross": hits.sum(axis=(0, 1)) > 0,
        "saturated_outputs": int(direct_reference(acts, codes, level_set, acc_bits)[1].sum()),
        "saturation_position_dirs": [int(sat.sum()), 2 * R * C],
        "stall_cycles": int((~en).sum()), "reset": reset_frac is not None,
        "tiles": len(starts), "padding": bool((K % R if dataflow != "os" else M % R) or N % C),
    }
    reset_at = None if reset_frac is None else max(1, int(n_rows * reset_frac))
    return Case(name, top, {"lanes": lanes, **vt.trace}, check, vt.cycles, expected, {}, reset_at, cov, note)


def _random_gemm(rng: np.random.Generator, M: int, K: int, N: int, code_max: int = 4) -> tuple[np.ndarray, ...]:
    acts = rng.integers(formats.ACT_QMIN, formats.ACT_QMAX + 1, (M, K))
    acts[0, : min(K, 3)] = formats.ACT_QMIN
    return acts, rng.integers(0, code_max, (N, K))


def saturating_gemm(rng: np.random.Generator, M: int, K: int, N: int) -> tuple[np.ndarray, np.ndarray]:
    """-8 / +7 activations x the largest PoT-MNZ codes (|w| = 4): sums that walk into both rails of a narrow
    accumulator at many k and come back."""
    acts = np.where(rng.random((M, K)) < 0.5, formats.ACT_QMIN, formats.ACT_QMAX)
    codes = np.where(rng.random((N, K)) < 0.5, 1, 3)
    return acts, codes


QUICK = ("v2_ws_random", "v2_stream_random", "v2_os_random")


def default_cases_v2(quick: bool = False, seed: int = 0) -> list[Case]:
    """The v2 suite: the quick cases (default test group, both simulators), then the slow ones."""
    rng = np.random.default_rng(seed + 2)
    cases = []
    a, w = _random_gemm(rng, 6, 11, 9)
    cases.append(array2_case("v2_ws_random", "ws", 4, 4, a, w, m_tile=4, seed=seed, note="random INT4 x PoT-MNZ, "
                             "partial K/N/M tiles (M chunks of 4), stalls with junk, reset mid-run"))
    a, w = _random_gemm(rng, 3, 13, 10)
    cases.append(array2_case("v2_stream_random", "stream", 4, 4, a, w, seed=seed + 1,
                             note="decode mode: per-PE weight port, K rounds of 3 N tiles, stalls, reset"))
    a, w = _random_gemm(rng, 7, 10, 6)
    cases.append(array2_case("v2_os_random", "os", 4, 4, a, w, seed=seed + 2,
                             note="random INT4 x PoT-MNZ, partial M/N tiles, output chain under the next tile"))
    if quick:
        return cases
    a, w = saturating_gemm(rng, 9, 24, 7)
    for df in ("ws", "stream", "os"):
        cases.append(array2_case(f"v2_{df}_sat_a8", df, 4, 4, a, w, acc_bits=8, m_tile=4, seed=seed,
                                 note="-8/+7 x |w| = 4 on an 8-bit accumulator: saturation both ways, every PE"))
    a, w = _random_gemm(rng, 5, 3, 11)
    cases.append(array2_case("v2_os_short_k", "os", 4, 3, a, w, seed=seed,
                             note="K < R: tiles every R cycles (the output chain binds)"))
    a, w = _random_gemm(rng, 1, 23, 30)
    cases.append(array2_case("v2_stream_decode_m1", "stream", 4, 4, a, w, seed=seed,
                             note="M = 1 decode: one weight tile per cycle, K rounds bound by R"))
    for level_set, df, code_max in (("mnz", "ws", 4), ("std", "os", 4), ("int4", "stream", 16), ("pm12", "ws", 4)):
        a, w = _random_gemm(rng, 5, 9, 7, code_max)
        cases.append(array2_case(f"v2_{df}_random_{level_set}", df, 3, 4, a, w, level_set, 20, m_tile=3,
                                 seed=seed, note=f"{level_set} PE in a 3x4 v2 array, 20-bit accumulator"))
    a, w = _random_gemm(rng, 6, 11, 9)
    cases.append(array2_case("v2_ws_chain_only", "ws", 4, 4, a, w, m_tile=4, array="ws2_chain", seed=seed,
                             note="WS v2 array built without the per-PE write port"))
    a, w = _random_gemm(rng, 3, 13, 10)
    cases.append(array2_case("v2_stream_port_only", "stream", 4, 4, a, w, array="ws2_port", seed=seed,
                             note="WS v2 array built without the shadow shift chain"))
    tiles = load_tiles()
    if tiles is not None:
        ta, tw = tiles["acts"][:8, :64], tiles["codes"][:8, :64]
        src = str(tiles["source"])
        for df in ("ws", "os", "stream"):
            cases.append(array2_case(f"v2_{df}_smollm2_gptq", df, 4, 4, ta, tw, seed=seed, stall_prob=0.05,
                                     note=f"real SmolLM2 tile, 8 tokens x 64 x 8 channels ({src})"))
    return cases
