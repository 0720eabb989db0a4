"""The RTL verification suite: named cases, each a top, a model trace and the checks run on what the RTL did.

Every case replays a trace of the bit-accurate model (``qift_hw.sim``) on a simulator, cycle by cycle (the bench
fails on the first wrong output, valid bit or output cycle), then checks the outputs the RTL produced against
independent references: the GEMM put back together from the RTL's output lanes must equal ``qift_hw.sim.matmul``
and the direct integer product (or, where an accumulator saturates, the formats' written-out saturating sum),
and the number of advancing cycles must equal the cycle model's closed form. Coverage bins are counted from the
stimulus the array actually consumed (codes x activation values per PE position) plus the events exercised
(saturation, stalls, reset, padding).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qift_hw.core import formats
from qift_hw.core.errors import QiftError
from qift_hw.rtl.generate import Top, array_top, hadamard_top, pe_top, write_top

TILES_FILE = Path("data") / "smollm2_tiles.npz"
"""The real SmolLM2 tiles, relative to the bench folder (``simulate.sim_dir()``)."""


@dataclass
class Case:
    """One verification case: what to simulate and how to judge the result."""

    name: str
    top: Top
    stimulus: dict
    check: Callable[[dict], list[str]]
    cycles: int
    expected_cycles: int | None = None
    compare_when: dict = field(default_factory=dict)
    reset_at: int | None = None
    coverage: dict = field(default_factory=dict)
    note: str = ""


@dataclass
class CaseResult:
    """Outcome of one case on one simulator."""

    name: str
    sim: str
    top: str
    passed: bool
    cycles: int
    expected_cycles: int | None
    wall_cycles: int
    problems: list
    build_s: float
    run_s: float
    coverage: dict
    note: str = ""

    def as_dict(self) -> dict:
        """JSON-able form (private coverage arrays left out)."""
        d = dict(self.__dict__)
        d["coverage"] = {k: v for k, v in self.coverage.items() if not k.startswith("_")}
        return d


# ---------------------------------------------------------------- references


def _int_weights(codes: np.ndarray, level_set: str) -> np.ndarray:
    from qift_hw.sim.pe import pe_kind, pe_product

    kind, bits = pe_kind(level_set)
    table = np.array([int(pe_product(kind, c, 1, bits)) for c in range(1 << bits)], dtype=np.int64)
    return table[np.asarray(codes, dtype=np.int64)]


def direct_reference(acts: np.ndarray, codes: np.ndarray, level_set: str, acc_bits: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(values, overflow) by the formats' rule written out: exact int64 products, saturating sum in ascending k."""
    w = _int_weights(codes, level_set)
    a = np.asarray(acts, dtype=np.int64)
    exact = a @ w.T
    hi = formats.acc_range(acc_bits)[1]
    if int(np.abs(a).max(initial=0)) * int(np.abs(w).max(initial=0)) * a.shape[1] <= hi:
        return exact, np.zeros(exact.shape, dtype=bool)
    out = np.zeros(exact.shape, dtype=np.int64)
    ovf = np.zeros(exact.shape, dtype=bool)
    for m in range(a.shape[0]):
        for n in range(w.shape[0]):
            out[m, n], ovf[m, n] = formats.saturating_dot(a[m] * w[n], acc_bits)
    return out, ovf


def saturation_sites(acts: np.ndarray, codes: np.ndarray, level_set: str, acc_bits: int, dataflow: str,
                     rows: int, cols: int) -> np.ndarray:
    """bool [rows, cols, 2]: PE position x direction (0 = high rail, 1 = low rail) where some add of the GEMM
    saturates, by the formats' rule (sequential saturating sum in ascending k). The add for k of output (m, n) is
    done by PE(k mod R, n mod C) in WS and by PE(m mod R, n mod C) in OS; its flag travels to ``ovf_out``."""
    w = _int_weights(codes, level_set)
    a = np.asarray(acts, dtype=np.int64)
    lo, hi = formats.acc_range(acc_bits)
    sites = np.zeros((rows, cols, 2), dtype=bool)
    for m in range(a.shape[0]):
        for n in range(w.shape[0]):
            acc = 0
            for k, p in enumerate(a[m] * w[n]):
                exact = acc + int(p)
                acc = min(max(exact, lo), hi)
                if exact != acc:
                    r = k % rows if dataflow == "ws" else m % rows
                    sites[r, n % cols, int(exact < lo)] = True
    return sites


def overflow_gemm(K: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(acts [8, K], PoT-MNZ codes [8, K]) that saturate a 10-bit accumulator at every PE position of a 4x4 array
    in both directions and both dataflows: rows 0-3 (-8 or +7 on every k) against codes that run one way for 24
    adds and back for the rest (+-32 or +-28 per add), so every chain reaches one rail, stays on it for at least
    R adds, comes back and reaches the other rail for at least R adds; rows 4-7 mix the signs (alternating,
    half and half, a lone extreme) for sums that saturate and come back without reaching the other rail."""
    lo_a, hi_a = formats.ACT_QMIN, formats.ACT_QMAX
    half = K // 2
    acts = np.empty((8, K), dtype=np.int64)
    acts[0], acts[1], acts[2], acts[3] = lo_a, hi_a, lo_a, hi_a
    acts[4, ::2], acts[4, 1::2] = lo_a, hi_a
    acts[5, :half], acts[5, half:] = lo_a, hi_a
    acts[6] = 0
    acts[6, K - 1] = lo_a
    acts[7, :half], acts[7, half:] = hi_a, 0
    up, down = 3, 1  # PoT-MNZ codes -4 and +4: x -8 gives +32 and -32
    codes = np.empty((8, K), dtype=np.int64)
    codes[:4, :24], codes[:4, 24:] = up, down
    codes[4:, :24], codes[4:, 24:] = down, up
    codes[6, ::3] = 0
    return acts, codes


def _observed(summary: dict, name: str, lanes: dict, rows: int) -> np.ndarray:
    from qift_hw.verify.replay import unpack_rows

    vals = [int(v, 16) for v in summary["observed"][name]]
    return unpack_rows(vals[-rows:], name, lanes)


# ---------------------------------------------------------------- case builders


def array_case(name: str, dataflow: str, rows: int, cols: int, acts: np.ndarray, codes: np.ndarray,
               level_set: str = "pot_mnz", acc_bits: int = formats.ACC_BITS, stall_prob: float = 0.1,
               reset_frac: float | None = 0.4, seed: int = 0, note: str = "") -> Case:
    """A GEMM acts [M, K] x codes [N, K] through the array, compared lane by lane and as a whole."""
    from qift_hw.verify.stimulus import assemble, gemm_trace, result_port
    from qift_hw.sim import cycle_model, matmul

    acts = np.asarray(acts, dtype=np.int64)
    codes = np.asarray(codes, dtype=np.uint8)
    top = array_top(dataflow, rows, cols, level_set, acc_bits)
    gt = gemm_trace(dataflow, acts, codes, rows, cols, level_set, acc_bits, stall_prob, seed)
    lanes = top.component.lanes()
    (M, K), N = acts.shape, codes.shape[0]
    expected = (cycle_model.ws_gemm_cycles(M, K, N, rows, cols) if dataflow == "ws"
                else cycle_model.os_gemm_cycles(M, K, N, rows, cols))
    n_rows = len(gt.trace["en"])

    def check(summary: dict) -> list[str]:
        v, o, _ = result_port(dataflow)
        out, ovf = assemble(gt, _observed(summary, v, lanes, n_rows), _observed(summary, o, lanes, n_rows))
        problems = []
        if acts.size and int(acts.min()) >= formats.ACT_QMIN and int(acts.max()) <= formats.ACT_QMAX:
            ref, ref_ovf = matmul(acts.astype(np.int8), codes, level_set, acc_bits, return_overflow=True,
                                  kernel="pe")
            if not np.array_equal(out, ref):
                bad = np.argwhere(out != ref)[0]
                problems.append(f"GEMM from RTL outputs differs from qift_hw.sim.matmul at {tuple(bad)}: "
                                f"{out[tuple(bad)]} vs {ref[tuple(bad)]}")
            if not np.array_equal(ovf, ref_ovf):
                problems.append("overflow flags from RTL differ from qift_hw.sim.matmul's overflow mask")
        direct, direct_ovf = direct_reference(acts, codes, level_set, acc_bits)
        if not np.array_equal(out, direct) or not np.array_equal(ovf, direct_ovf):
            problems.append("GEMM from RTL outputs differs from the direct saturating integer product")
        if gt.cycles != expected:
            problems.append(f"advancing cycles {gt.cycles} != cycle model {expected}")
        return problems

    hits = gt.hits
    cov = {
        "kind": "array", "level_set": level_set, "dataflow": dataflow, "rows": rows, "cols": cols,
        "macs": int(hits.sum()),
        "code_bins": [int((hits.sum(axis=(0, 1, 3)) > 0).sum()), hits.shape[2]],
        "act_bins": [int((hits.sum(axis=(0, 1, 2)) > 0).sum()), hits.shape[3]],
        "cross_bins": [int((hits.sum(axis=(0, 1)) > 0).sum()), hits.shape[2] * hits.shape[3]],
        "positions": [int((hits.sum(axis=(2, 3)) > 0).sum()), rows * cols],
        "position_cross_min": int((hits > 0).sum(axis=(2, 3)).min()),
        "_cross": hits.sum(axis=(0, 1)) > 0,
        "saturated_outputs": 0, "saturation_sites": [0, 2 * rows * cols], "stall_cycles": int((~np.asarray(gt.trace["en"], dtype=bool)).sum()),
        "reset": reset_frac is not None,
        "padding": bool((K % rows if dataflow == "ws" else M % rows) or N % cols),
    }
    cov["saturated_outputs"] = int(direct_reference(acts, codes, level_set, acc_bits)[1].sum())
    cov["saturation_sites"][0] = int(saturation_sites(acts, codes, level_set, acc_bits, dataflow, rows, cols).sum())
    reset_at = None if reset_frac is None else max(1, int(n_rows * reset_frac))
    stim = {"lanes": lanes, **gt.trace}
    return Case(name, top, stim, check, gt.cycles, expected, {}, reset_at, cov, note)


def pe_case(name: str, kind: str, acc_bits: int, cycles: int = 400, seed: int = 0) -> Case:
    """A random MAC sequence on one PE (edge activations, every code, clears, saturation both ways)."""
    from qift_hw.verify.stimulus import pe_trace

    top = pe_top(kind, acc_bits)
    tr = pe_trace(kind, acc_bits, cycles, seed)
    lanes = top.component.lanes()
    act_lo = -(1 << (top.component.fmt.act_bits - 1))
    en = tr["en"].astype(bool)
    n_codes = 1 << top.component.fmt.w_shape.width
    cross = np.zeros((n_codes, 1 << top.component.fmt.act_bits), dtype=np.int64)
    np.add.at(cross, (tr["w"][en], tr["a"][en] - act_lo), 1)
    cov = {"kind": "pe", "level_set": kind, "macs": int(en.sum()), "_cross": cross > 0,
           "code_bins": [int((cross.sum(1) > 0).sum()), n_codes],
           "act_bins": [int((cross.sum(0) > 0).sum()), cross.shape[1]],
           "cross_bins": [int((cross > 0).sum()), cross.size],
           "saturated_high": bool((tr["acc"] == formats.acc_range(acc_bits)[1]).any()),
           "saturated_low": bool((tr["acc"] == formats.acc_range(acc_bits)[0]).any()),
           "clears": int(tr["clr"].sum()), "reset": True}

    def check(summary: dict) -> list[str]:
        return []

    stim = {"lanes": lanes, **tr}
    return Case(name, top, stim, check, int(en.sum()), None, {}, cycles // 3, cov,
                f"{kind} PE, {acc_bits}-bit acc: acc/ovf every cycle vs the model")


def hadamard_case(name: str, n: int, vectors: np.ndarray, seed: int = 0, note: str = "", quantize: bool = False,
                  exponents: np.ndarray | None = None) -> Case:
    """Stream vectors through the Hadamard unit (and the INT4 quantizer): every valid output vs the model, with
    its latency; then the outputs taken vs x @ H_n^T (qift_hw.core.hadamard) and, quantized, formats.had_output_quant."""
    import torch

    from qift_hw.core.hadamard import hadamard_matrix
    from qift_hw.verify.stimulus import hadamard_trace

    top = hadamard_top(n, quantize=quantize)
    unit = top.component
    vectors = np.asarray(vectors, dtype=np.int64)
    exps = (np.random.default_rng(seed).integers(-30, 10, len(vectors)) if exponents is None
            else np.asarray(exponents, dtype=np.int64))
    tr = hadamard_trace(vectors, unit.latency, seed, exponents=exps, quantize=quantize)
    lanes = unit.lanes()
    n_rows = len(tr["en"])
    valid = "q_valid" if quantize else "y_valid"
    direct = vectors @ hadamard_matrix(n).numpy().T

    def check(summary: dict) -> list[str]:
        en = np.asarray(tr["en"], dtype=bool)
        taken = en & _observed(summary, valid, lanes, n_rows)[:, 0].astype(bool)
        if not quantize:
            y = _observed(summary, "y", lanes, n_rows)[taken]
            if y.shape != direct.shape or not np.array_equal(y, direct):
                return ["Hadamard outputs taken from the RTL differ from x @ H_n^T (qift_hw.core.hadamard)"]
            return []
        q = _observed(summary, "q", lanes, n_rows)[taken]
        s_u = _observed(summary, "scale", lanes, n_rows)[taken][:, 0].astype(np.uint32).view(np.float32)
        e_out = _observed(summary, "exp_out", lanes, n_rows)[taken][:, 0]
        q_ref, s_ref = formats.had_output_quant(torch.from_numpy(direct), torch.from_numpy(exps)[:, None], n)
        inv = torch.tensor(1.0 / np.sqrt(n), dtype=torch.float64).to(torch.float32)
        s_rtl = torch.ldexp(torch.from_numpy(s_u.copy()) * inv, torch.from_numpy(e_out).to(torch.int32))
        problems = []
        if q.shape != tuple(q_ref.shape) or not np.array_equal(q, q_ref.numpy()):
            problems.append("INT4 outputs differ from formats.had_output_quant(x @ H_n^T)")
        elif not torch.equal(s_rtl, s_ref[:, 0]):
            problems.append("ldexp(scale * fp32(1/sqrt(n)), exp_out) differs from formats.had_output_quant's scale")
        return problems

    en = np.asarray(tr["en"], dtype=bool)
    cov = {"kind": "hadamard", "n": n, "vectors": len(vectors), "latency": unit.latency, "quantized": quantize,
           "stall_cycles": int((~en).sum()), "gap_cycles": int((en & ~np.asarray(tr["x_valid"], bool)).sum()),
           "input_extremes": bool((np.abs(vectors) == formats.HAD_IN_MAX).any()), "reset": True}
    if quantize:
        cov["_q_values"] = set(np.unique(tr["q"][np.asarray(tr["q_valid"], bool)]).tolist())
        cov["q_bins"] = [len(cov["_q_values"]), 1 << formats.ACT_BITS]
    when = {k: valid for k in lanes if k not in ("x", "x_valid", "exp_in", valid)}
    stim = {"lanes": lanes, **tr}
    return Case(name, top, stim, check, int(en.sum()), None, when, n_rows // 2, cov,
                note or f"K={unit.K} x 2^{unit.had.stages if quantize else unit.stages}, latency {unit.latency}")


# ---------------------------------------------------------------- the suite


def _random_gemm(rng: np.random.Generator, M: int, K: int, N: int, code_max: int = 4) -> tuple[np.ndarray, ...]:
    acts = rng.integers(formats.ACT_QMIN, formats.ACT_QMAX + 1, (M, K))
    acts[0, : min(K, 3)] = formats.ACT_QMIN
    return acts, rng.integers(0, code_max, (N, K))


def tiles_path() -> Path:
    """Where ``qift-hw rtl tiles`` writes the real SmolLM2 tiles and the suite reads them (``sim/data/``)."""
    from qift_hw.verify.simulate import sim_dir

    return sim_dir() / TILES_FILE


def load_tiles(path: Path | None = None) -> dict | None:
    """The real SmolLM2 tiles written by ``qift-hw rtl tiles`` (None if the file is absent)."""
    p = Path(path) if path else tiles_path()
    if not p.exists():
        return None
    with np.load(p, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def default_cases(quick: bool = False, seed: int = 0) -> list[Case]:
    """The suite ``qift-hw rtl verify`` runs (``quick``: a subset for the second simulator in tests)."""
    rng = np.random.default_rng(seed)
    cases = []
    a, w = _random_gemm(rng, 6, 11, 9)
    cases.append(array_case("ws_random_pot_mnz", "ws", 4, 4, a, w, seed=seed,
                            note="random INT4 x PoT-MNZ, partial K and N tiles, stalls, reset mid-run"))
    a, w = _random_gemm(rng, 7, 10, 6)
    cases.append(array_case("os_random_pot_mnz", "os", 4, 4, a, w, seed=seed + 1,
                            note="random INT4 x PoT-MNZ, partial M and N tiles, stalls, reset mid-run"))
    cases.append(pe_case("pe_pot_mnz", "pot_mnz", 10, seed=seed))
    cases.append(hadamard_case("hadamard_q4_24", 24, _had_vectors(rng, 24, 12), quantize=True,
                               note="n = 12 x 2 (Paley K stage + butterfly) + INT4 quantizer"))
    if quick:
        return cases
    tiles = load_tiles()
    if tiles is not None:
        ta, tw = tiles["acts"][:8, :48], tiles["codes"][:8, :48]
        cases.append(array_case("ws_smollm2_gptq", "ws", 4, 4, ta, tw, seed=seed, stall_prob=0.05,
                                note=f"real SmolLM2 codes/activations ({str(tiles['source'])})"))
        cases.append(array_case("os_smollm2_gptq", "os", 4, 4, ta, tw, seed=seed, stall_prob=0.05,
                                note=f"real SmolLM2 codes/activations ({str(tiles['source'])})"))
        cases.append(hadamard_case("hadamard_q4_64_smollm2", 64, tiles["had_in"][:12, :64], quantize=True,
                                   note="real SmolLM2 query heads (block-FP mantissas), n = 64, + INT4 quantizer"))
    edge_a, edge_w = overflow_gemm()
    cases.append(array_case("ws_overflow_a10", "ws", 4, 4, edge_a, edge_w, acc_bits=10, seed=seed,
                            note="-8 / +7 activations x largest codes on a 10-bit accumulator: every PE position saturates at both "
                                 "rails"))
    cases.append(array_case("os_overflow_a10", "os", 4, 4, edge_a, edge_w, acc_bits=10, seed=seed,
                            note="the same on the output-stationary array"))
    for level_set, df in (("std", "ws"), ("mnz", "os"), ("pm12", "ws")):
        a, w = _random_gemm(rng, 5, 9, 7)
        cases.append(array_case(f"{df}_random_{level_set}", df, 3, 4, a, w, level_set, seed=seed,
                                note=f"{level_set} PE in a 3x4 {df.upper()} array"))
    a, w = _random_gemm(rng, 5, 9, 7, code_max=16)
    cases.append(array_case("ws_random_int4", "ws", 3, 4, a, w, "int4", seed=seed,
                            note="INT4 x INT4 multiplier baseline in a 3x4 WS array"))
    for kind in ("mnz", "pm12", "std"):
        cases.append(pe_case(f"pe_{kind}", kind, 10, seed=seed))
    cases.append(pe_case("pe_int4", "int4", 10, cycles=600, seed=seed))
    cases.append(pe_case("pe_int8", "int8", 20, seed=seed))
    cases.append(hadamard_case("hadamard_16", 16, _had_vectors(rng, 16, 10), note="n = 16 (butterfly only, y checked)"))
    small = rng.integers(-1, 2, (24, 16))
    small[:4] = 0
    small[4, 0] = 1
    cases.append(hadamard_case("hadamard_q4_small_16", 16, small, quantize=True,
                               note="tiny max|y| (ties of the FP32 rounding and of round-half-even), zero vectors"))
    return cases


def _had_vectors(rng: np.random.Generator, n: int, count: int) -> np.ndarray:
    lim = formats.HAD_IN_MAX
    v = rng.integers(-lim, lim + 1, (count, n))
    v[0] = lim
    v[1] = -lim
    v[2, ::2], v[2, 1::2] = lim, -lim
    return v


def run_case(case: Case, sim: str, build_root: Path | None = None, out_dir: Path | None = None) -> CaseResult:
    """Generate, build and simulate one case on ``sim`` and apply its checks."""
    from qift_hw.verify.replay import port_plan
    from qift_hw.verify.simulate import BUILD_ROOT, run_bench

    root = Path(build_root) if build_root else BUILD_ROOT
    verilog = write_top(case.top, Path(out_dir) if out_dir else root / "verilog")
    lanes, inputs, outputs = port_plan(case.top.component)
    stim = dict(case.stimulus)
    stim.update({"lanes": lanes, "inputs": inputs, "outputs": outputs, "compare_when": case.compare_when,
                 "reset_at": case.reset_at})
    t0 = time.perf_counter()
    run = run_bench(sim, verilog, case.top.name, "bench_replay", stim, build_root=root, tag=case.name)
    problems = [] if run.passed else [run.message or "bench failed"]
    if run.summary.get("observed"):
        try:
            problems += case.check(run.summary)
        except Exception as exc:  # a check that cannot even read the outputs is a failure, not a crash
            problems.append(f"check failed: {type(exc).__name__}: {exc}")
    elif run.passed:
        problems.append("the bench wrote no outputs")
    return CaseResult(case.name, sim, case.top.name, not problems, case.cycles, case.expected_cycles,
                      int(run.summary.get("wall_cycles", 0)), problems, round(run.build_s, 2),
                      round(time.perf_counter() - t0 - run.build_s, 2), case.coverage, case.note)


def coverage_summary(results: list[CaseResult]) -> dict:
    """Coverage merged over the cases: the union of (code, activation) bins per level set, and the events hit."""
    cross: dict[str, np.ndarray] = {}
    macs: dict[str, int] = {}
    events = {"saturation": False, "stall_cycles": 0, "resets": 0, "padding": False}
    q_values: set = set()
    for r in results:
        cov = r.coverage
        q_values |= cov.get("_q_values", set())
        if "_cross" in cov:
            ls = cov["level_set"]
            cross[ls] = cov["_cross"] | cross[ls] if ls in cross else cov["_cross"].copy()
            macs[ls] = macs.get(ls, 0) + cov["macs"]
        events["saturation"] |= bool(cov.get("saturated_outputs") or cov.get("saturated_high"))
        events["stall_cycles"] += int(cov.get("stall_cycles", 0))
        events["resets"] += int(bool(cov.get("reset")))
        events["padding"] |= bool(cov.get("padding"))
    per_set = {ls: {"macs": macs[ls], "code_bins": [int(c.any(axis=1).sum()), c.shape[0]],
                    "act_bins": [int(c.any(axis=0).sum()), c.shape[1]], "cross_bins": [int(c.sum()), c.size]}
               for ls, c in cross.items()}
    return {"per_level_set": per_set, "events": events,
            "quantizer_q_bins": [len(q_values), 1 << formats.ACT_BITS] if q_values else None}


def check_sim_name(sim: str) -> None:
    """Reject an unknown simulator name early."""
    from qift_hw.verify.simulate import SIMULATORS

    if sim not in SIMULATORS:
        raise QiftError(f"unknown simulator {sim!r}; use one of {', '.join(SIMULATORS)}")
