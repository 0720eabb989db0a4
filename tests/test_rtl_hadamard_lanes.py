"""Amaranth-simulator tests of the lane-multiplexed Hadamard + INT4 quantizer unit (qift_hw.rtl.hadamard_lanes).

References are independent of the RTL: y from the model's ``hadamard_int`` (or the dense product x @ H_n^T where the
model refuses the input, -32768), q and the FP32 scale from ``formats.quantize_act`` on fp32(y), the end-to-end
float path from ``qift_hw.sim.hadamard_unit.hadamard_quantize``, FP32 roundings from numpy's float32.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from amaranth.sim import Simulator

from qift_hw.core import formats
from qift_hw.core.errors import QiftError
from qift_hw.core.hadamard import hadamard_matrix, split_order
from qift_hw.rtl.hadamard_lanes import HadamardLaneUnit, LaneQuantizer, raw_threshold
from qift_hw.rtl.pe import silence_unused
from qift_hw.sim.hadamard_timing import lane_unit_cycles, lane_unit_latency, lane_unit_period
from qift_hw.sim.hadamard_unit import hadamard_int, hadamard_quantize


def _fp32_bits(x) -> list[int]:
    return [int(v) for v in np.asarray(x, dtype=np.float32).view(np.uint32)]


def run_unit(dut: HadamardLaneUnit, X: np.ndarray, exps=None, p_gap: float = 0.0, p_busy: float = 0.0,
             seed: int = 0, max_cycles: int = 200_000) -> dict:
    """Stream the rows of X through the unit (random input gaps and output back-pressure); returns the beats taken,
    the cycle of each, and whether a held output ever changed before it was taken."""
    n, L = dut.n, dut.L
    rng = np.random.default_rng(seed)
    beats = [(X[v, r * L:(r + 1) * L], 0 if exps is None else int(exps[v])) for v in range(len(X))
             for r in range(n // L)]
    out = {"q": [], "scale": [], "exp": [], "last": [], "in_cycle": [], "out_cycle": [], "unstable": 0}

    async def bench(ctx):
        k, held, cyc = 0, None, 0
        while len(out["q"]) < len(beats):
            assert cyc < max_cycles, "the unit stopped producing output"
            valid = k < len(beats) and rng.random() >= p_gap
            if valid:
                ctx.set(dut.i.payload.x, [int(a) for a in beats[k][0]])
                ctx.set(dut.i.payload.exp, beats[k][1])
            ctx.set(dut.i.valid, int(valid))
            ready = rng.random() >= p_busy
            ctx.set(dut.o.ready, int(ready))
            if ctx.get(dut.o.valid):
                pl = ctx.get(dut.o.payload)
                now = ([pl.q[i] for i in range(L)], pl.scale, pl.exp, pl.last)
                if held is not None and held != now:
                    out["unstable"] += 1
                held = now
                if ready:
                    for key, val in zip(("q", "scale", "exp", "last"), now):
                        out[key].append(val)
                    out["out_cycle"].append(cyc)
                    held = None
            if valid and ctx.get(dut.i.ready):
                out["in_cycle"].append(cyc)
                k += 1
            await ctx.tick()
            cyc += 1

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return out


def _expected(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(q, FP32 scale bits) of formats.quantize_act on fp32(H_n x): y from the model, or the dense product where an
    input is -32768 (outside the model's +-32767 contract, inside the RTL's 16-bit port)."""
    n = X.shape[1]
    if (X == -(2 ** 15)).any():
        y = X.astype(np.int64) @ hadamard_matrix(n).numpy().T
    else:
        y = hadamard_int(X)
    q, s = formats.quantize_act(torch.from_numpy(y).to(torch.float32))
    return q.numpy(), np.array(_fp32_bits(s[:, 0].numpy()))


def _vectors(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.integers(-32767, 32768, (8, n))
    X[0] = -(2 ** 15)                      # the most negative input everywhere
    X[1, ::2], X[1, 1::2] = 32767, -(2 ** 15)
    X[2] = 0                               # all-zero: scale 1.0, q = 0
    X[3] = 1234                            # all equal: one nonzero y
    X[4] = rng.integers(-1, 2, n)          # tiny max|y|: ties in both FP32 roundings and in round-half-even
    X[5] = rng.integers(-3, 4, n)
    X[6, :] = rng.integers(-40, 41, n)
    X[6, rng.integers(n)] = 32767          # one outlier
    return X


@pytest.mark.parametrize("n,lanes", [(24, 8), (48, 8), (48, 16), (64, 8), (64, 16), (72, 8)])
def test_unit_matches_model_bit_for_bit(n, lanes):
    """Every q and FP32 scale equals the model's for extremes, ties, zeros and random vectors, under random gaps on
    the input and random back-pressure on the output; held outputs never change; ``last`` marks each vector's end;
    the block exponent travels with the vector. (24, 48: K = 12 with 2^k < L; 72: K = 36; 64: K = 1, two passes.)"""
    dut = HadamardLaneUnit(n, lanes)
    X = _vectors(n, n + lanes)
    exps = np.arange(len(X)) - 3
    out = run_unit(dut, X, exps, p_gap=0.3, p_busy=0.4, seed=n)
    R = n // lanes
    q_ref, s_ref = _expected(X)
    assert np.array_equal(np.array(out["q"]).reshape(len(X), n), q_ref)
    assert np.array_equal(np.array(out["scale"]).reshape(len(X), R), np.repeat(s_ref[:, None], R, 1))
    assert out["exp"] == list(np.repeat(exps, R))
    assert out["last"] == [int(r == R - 1) for _ in X for r in range(R)]
    assert out["unstable"] == 0


@pytest.mark.parametrize("n,lanes", [(24, 8), (64, 16), (72, 8), (48, 16)])
def test_cycles_equal_the_closed_form(n, lanes):
    """Always-valid source, always-ready sink: vectors follow back to back, the first output beat comes
    lane_unit_latency cycles after the first input beat, and the last one ends lane_unit_cycles."""
    dut = HadamardLaneUnit(n, lanes)
    X = _vectors(n, 1)[:3]
    out = run_unit(dut, X)
    R, P = n // lanes, lane_unit_period(n, lanes)
    assert dut.period == P
    assert out["in_cycle"] == [v * P + r for v in range(3) for r in range(R)]
    assert out["out_cycle"][0] - out["in_cycle"][0] == lane_unit_latency(n, lanes)
    assert out["out_cycle"][-1] - out["in_cycle"][0] + 1 == lane_unit_cycles(3, n, lanes)
    K, p = split_order(n)
    c = max(int(np.log2(p)) - int(np.log2(lanes)), 0)
    assert P == 2 * R + c * (R + 1) + (K * R if K > 1 else 0) + 9


@pytest.mark.parametrize("n,lanes", [(64, 16), (48, 8)])
def test_end_to_end_from_float_activations(n, lanes):
    """formats.had_input_fixed -> RTL -> q and ldexp(s_u * fp32(1/sqrt n), exponent) equal the model's
    hadamard_quantize exactly, over six decades of magnitude and a zero token."""
    x = torch.randn(6, n, generator=torch.Generator().manual_seed(n)) * torch.logspace(-3, 3, 6)[:, None]
    x[2] = 0
    mant, exp = formats.had_input_fixed(x)
    dut = HadamardLaneUnit(n, lanes)
    out = run_unit(dut, mant.numpy(), exp.numpy()[:, 0], p_gap=0.2, p_busy=0.2, seed=3)
    R = n // lanes
    q_m, s_m = hadamard_quantize(x)
    assert np.array_equal(np.array(out["q"]).reshape(-1, n), q_m.numpy())
    s_u = torch.from_numpy(np.array(out["scale"][::R], dtype=np.uint32).view(np.float32).copy())
    inv = torch.tensor(1.0 / np.sqrt(n), dtype=torch.float64).to(torch.float32)
    e = torch.tensor(out["exp"][::R], dtype=torch.int32)
    assert torch.equal(torch.ldexp(s_u * inv, e), s_m[:, 0])


def run_quantizer(dut: LaneQuantizer, Y: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Each row of Y (L lanes, row 0 of a group holds its max) through start / wait for ready / read q."""
    L = dut.lanes_n
    qs, scales = [], []

    async def bench(ctx):
        for v in Y:
            ctx.set(dut.amax, int(np.abs(v).max()))
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            while not ctx.get(dut.ready):
                await ctx.tick()
            ctx.set(dut.y, [int(a) for a in v])
            qs.append(list(ctx.get(dut.q)[i] for i in range(L)))
            scales.append(ctx.get(dut.scale))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return np.array(qs), scales


def _near_boundaries(amax: int, L: int, rng) -> list[np.ndarray]:
    """Vectors with max|y| = amax whose other lanes sit on and around every INT4 rounding boundary of fp32(y)."""
    s = np.float32(np.float32(np.float32(amax) * np.float32(formats.ACT_CLIP)) / np.float32(7))
    cand = []
    for j in range(8):
        c = int(round(float(s) * (j + 0.5)))
        step = max(1, c >> 23)
        cand += [c + d * step for d in range(-3, 4)]
    cand = [v for v in cand if 0 <= v <= amax]
    rng.shuffle(cand)
    out = []
    for i in range(0, len(cand), L - 1):
        vals = np.array(cand[i:i + L - 1] + [0] * (L - 1))[:L - 1] * rng.choice([-1, 1], L - 1)
        out.append(np.concatenate([[amax * rng.choice([-1, 1])], vals]))
    return out


@pytest.mark.parametrize("y_bits", [25, 27])
def test_quantizer_on_rounding_boundaries(y_bits):
    """LaneQuantizer = formats.quantize_act(fp32(y)) for y on and next to every INT4 boundary (in FP32 ulps of y),
    max|y| from 1 to 2^(y_bits - 1); at 27 bits both the scale's fp32(max|y|) and the moved thresholds matter."""
    L = 8
    dut = LaneQuantizer(L, y_bits)
    rng = np.random.default_rng(y_bits)
    lim = 2 ** (y_bits - 1)
    maxima = [1, 2, 3, 7, 40, 1000, 2**24 - 1, 2**24, lim - 1]
    if y_bits > 25:
        maxima += [2**24 + 1, 2**24 + 3, 2**25 - 1, 2**25 + 5, 2**26 - 3, lim]
        maxima += [int(v) for v in rng.integers(2**24, lim + 1, 12)]
    else:
        maxima += [int(v) for v in rng.integers(41, lim, 8)]
    Y = np.array([v for a in maxima for v in _near_boundaries(a, L, rng)] + [np.zeros(L, dtype=np.int64)])
    Y = Y.clip(-lim, lim - 1)
    q, scales = run_quantizer(dut, Y)
    q_ref, s_ref = formats.quantize_act(torch.from_numpy(Y).to(torch.float32))
    assert np.array_equal(q, q_ref.numpy())
    assert scales == _fp32_bits(s_ref[:, 0].numpy())


def test_raw_threshold_against_float32():
    """raw_threshold(t) is the smallest y with fp32(y) >= t, checked by numpy float32 around 2^24, 2^25, 2^26 and at
    random t up to 2^30."""
    rng = np.random.default_rng(0)
    ts = list(range(2**24 - 4, 2**24 + 70)) + [2**25 - 1, 2**25, 2**25 + 1, 2**26, 2**26 + 7]
    ts += [int(v) for v in rng.integers(1, 2**30, 400)]
    for t in ts:
        y = raw_threshold(t)
        assert int(np.float32(y)) >= t and int(np.float32(y - 1)) < t, t


def test_bad_configurations():
    with pytest.raises(QiftError, match="lanes must be a power of two"):
        HadamardLaneUnit(48, 12)
    with pytest.raises(QiftError, match="lanes must be a power of two"):
        HadamardLaneUnit(64, 64)
    with pytest.raises(QiftError, match="lanes must be a power of two"):
        HadamardLaneUnit(24, 16)
    with pytest.raises(QiftError, match="not supported"):
        HadamardLaneUnit(116, 4)
    with pytest.raises(QiftError, match="lanes must be a power of two"):
        lane_unit_cycles(4, 1536, 3)
    with pytest.raises(QiftError, match="takes 2"):
        LaneQuantizer(4, 41)


def test_real_orders_closed_form():
    """The orders SmolLM2 and LLaMA need build, and their periods follow 2R + c(R+1) + KR + 9."""
    for n, lanes, want in [(64, 16, 8 + 2 * 5 + 9), (576, 16, 72 + 36 * 36 + 9),
                           (1536, 16, 192 + 3 * 97 + 12 * 96 + 9), (128, 16, 16 + 3 * 9 + 9)]:
        assert lane_unit_period(n, lanes) == want
        unit = HadamardLaneUnit(n, lanes)
        silence_unused(unit)
        assert unit.period == want


BUILD = Path(__file__).resolve().parents[1] / "sim_build"


def gaussian_outliers(tokens: int, n: int, seed: int) -> torch.Tensor:
    """Activation-like float vectors: N(0, 1) with a few outlier channels (x20 to x100) and one token x1e-3."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, n, generator=g)
    cols = torch.randperm(n, generator=g)[:max(2, n // 100)]
    x[:, cols] *= torch.linspace(20, 100, len(cols))
    x[-1] *= 1e-3
    return x


REAL = {576: "q_proj_in", 1536: "down_proj_in"}
"""Captured SmolLM2-135M activations in sim/data/smollm2_had_lanes.npz (layer 3, 6 tokens; its ``source`` says how)."""


def real_activations(n: int) -> torch.Tensor:
    """The captured activations of width n (576: q_proj inputs, 1536: down_proj inputs, the online Hadamard's)."""
    from qift_hw.verify.simulate import sim_dir

    with np.load(sim_dir() / "data" / "smollm2_had_lanes.npz") as z:
        return torch.from_numpy(z[REAL[n]].copy())


def _cocotb(sim: str, n: int, lanes: int, tokens: int, seed: int, real: bool = False) -> None:
    from qift_hw.rtl.generate import write_top
    from qift_hw.rtl.hadamard_lanes import hadamard_lanes_top, unpack_beats
    from qift_hw.verify.simulate import run_bench, simulator_available

    reason = simulator_available(sim)
    if reason is not None:
        pytest.skip(reason)
    x = real_activations(n)[:tokens] if real else gaussian_outliers(tokens, n, seed)
    x[0, :lanes] = 0
    mant, exp = formats.had_input_fixed(x)
    X = mant.numpy().astype(np.int64)
    X[0, 0] = -(2 ** 15)
    top = hadamard_lanes_top(n, lanes)
    path = write_top(top, BUILD / "verilog")
    period = lane_unit_period(n, lanes)
    res = run_bench(sim, path, top.name, "bench_hadamard_lanes",
                    {"n": n, "lanes": lanes, "in_bits": formats.HAD_IN_BITS, "seed": seed, "p_gap": 0.25,
                     "p_busy": 0.35, "max_cycles": 4 * period * tokens + 1000, "x": X, "exp": exp.numpy()[:, 0]},
                    build_root=BUILD, tag=f"lanes_{n}_{lanes}")
    assert res.passed, res.message
    R = n // lanes
    out = unpack_beats([int(w, 16) for w in res.summary["beats"]], lanes)
    q_ref, s_ref = _expected(X)
    assert np.array_equal(np.array(out["q"]).reshape(tokens, n), q_ref)
    assert out["scale"] == [int(s) for s in s_ref for _ in range(R)]
    assert out["exp"] == [int(e) for e in exp.numpy()[:, 0] for _ in range(R)]
    assert out["last"] == [int(r == R - 1) for _ in range(tokens) for r in range(R)]
    q_m, s_m = hadamard_quantize(x[1:])
    assert np.array_equal(np.array(out["q"]).reshape(tokens, n)[1:], q_m.numpy())


@pytest.mark.sim
@pytest.mark.parametrize("sim", ["icarus", "verilator"])
def test_cocotb_reduced(sim):
    """n = 48 (K = 12), L = 8, 4 vectors with random gaps and back-pressure, on each simulator."""
    _cocotb(sim, 48, 8, 4, 7)


@pytest.mark.sim
@pytest.mark.slow
@pytest.mark.parametrize("sim", ["icarus", "verilator"])
@pytest.mark.parametrize("n,lanes", [(576, 16), (1536, 16)])
def test_cocotb_real_orders(sim, n, lanes):
    """SmolLM2's hidden 576 = 36 x 16 and intermediate 1536 = 12 x 128 at 16 lanes: y exceeds 2^24, so the FP32
    rounding of y is exercised; real SmolLM2-135M activations (6 tokens), random stalls on both streams."""
    _cocotb(sim, n, lanes, 6, n, real=True)


@pytest.mark.sim
@pytest.mark.slow
@pytest.mark.parametrize("n", [576, 1536])
def test_cocotb_gaussian_outliers(n):
    """The same orders on Icarus with synthetic activations: Gaussian with x20 to x100 outlier channels."""
    _cocotb("icarus", n, 16, 6, n)


def test_usable_lanes_by_brute_force():
    """usable_lanes = the largest power of two <= the budget that divides n and is below it."""
    from qift_hw.sim.hadamard_timing import usable_lanes

    for n in (4, 12, 24, 48, 64, 72, 576, 1536, 11008):
        for budget in (2, 3, 8, 16, 20, 64, 128, 4096):
            want = max(L for L in (2 ** i for i in range(1, 16)) if L <= budget and n % L == 0 and L < n)
            assert usable_lanes(n, budget) == want, (n, budget)
