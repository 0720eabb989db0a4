"""Amaranth-simulator tests of the pipelined Hadamard unit against qift_hw.core.hadamard and the model."""

import numpy as np
import pytest

from qift_hw.core import formats
from qift_hw.core.errors import QiftError
from qift_hw.core.hadamard import hadamard_matrix, split_order
from qift_hw.rtl.hadamard import HadamardUnit
from qift_hw.verify.replay import replay_amaranth, unpack_rows
from qift_hw.verify.stimulus import hadamard_trace


@pytest.mark.parametrize("n,in_bits", [(2, 16), (8, 16), (12, 16), (24, 16), (40, 8), (64, 16)])
def test_stream_matches_matrix(n, in_bits):
    """Vectors with gaps and stalls: each output equals H_n x (qift_hw.core.hadamard's matrix) exactly, `latency`
    advancing cycles after its input, extremes included, and a reset mid-stream clears the pipeline."""
    unit = HadamardUnit(n, in_bits)
    K, p = split_order(n)
    assert unit.latency == (p.bit_length() - 1) + (K > 1)
    assert unit.out_bits == formats.had_out_bits(K, p, in_bits)
    lim = 2 ** (in_bits - 1) - 1
    rng = np.random.default_rng(n)
    X = rng.integers(-lim, lim + 1, (9, n))
    X[0], X[1] = lim, -lim
    X[2, ::2], X[2, 1::2] = lim, -lim
    tr = hadamard_trace(X, unit.latency, seed=n, in_bits=in_bits)
    obs, errors = replay_amaranth(unit, tr, reset_at=len(tr["en"]) // 2, compare_when={"y": "y_valid"})
    assert not errors, errors
    rows = len(tr["en"])
    y = unpack_rows(obs["y"][-rows:], "y", unit.lanes())
    taken = np.asarray(tr["en"], bool) & unpack_rows(obs["y_valid"][-rows:], "y_valid", unit.lanes())[:, 0].astype(bool)
    assert np.array_equal(y[taken], X @ hadamard_matrix(n).numpy().T)


def test_largest_input_fits():
    """-(2^(b-1) - 1) everywhere (the formats' inputs are symmetric) gives the largest |y|; the width holds it."""
    unit = HadamardUnit(16, 6)
    X = np.full((1, 16), -31)
    tr = hadamard_trace(X, unit.latency, p_gap=0, p_stall=0, in_bits=6)
    obs, errors = replay_amaranth(unit, tr, compare_when={"y": "y_valid"})
    assert not errors, errors
    y = unpack_rows(obs["y"], "y", unit.lanes())[unit.latency]
    assert y[0] == -31 * 16 and (y[1:] == 0).all()


def test_bad_sizes():
    with pytest.raises(QiftError, match="not supported"):
        HadamardUnit(6)
    with pytest.raises(QiftError, match="lanes"):
        HadamardUnit(1)


def _fp32_bits(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.int64)


def test_quantizer_matches_formats_on_ties_and_ranges():
    """Int4Quantizer = formats.quantize_act on fp32(y), bit for bit (q and the FP32 scale), for max|y| from 0 to
    2^24 - 1, including every |y| <= 40 against tiny maxima, where both roundings hit ties."""
    import torch
    from amaranth.sim import Simulator

    from qift_hw.rtl.hadamard import Int4Quantizer

    n, yb = 8, 25
    rng = np.random.default_rng(5)
    vecs = [np.zeros(n, dtype=np.int64)]
    for amax in range(1, 41):
        vals = np.arange(-amax, amax + 1)
        for start in range(0, len(vals), n - 1):
            vecs.append(np.concatenate([[amax], vals[start:start + n - 1], np.zeros(n, dtype=np.int64)])[:n])
    for lim in (100, 1000, 2**15, 2**20, 2**24 - 1):
        for _ in range(20):
            v = rng.integers(-lim, lim + 1, n)
            v[rng.integers(n)] = lim * rng.choice([-1, 1])
            vecs.append(v)
    Y = np.array(vecs)
    dut = Int4Quantizer(n, yb)
    got = []

    async def bench(ctx):
        ctx.set(dut.en, 1)
        for t in range(len(Y) + dut.LATENCY):
            ctx.set(dut.y, [int(v) for v in Y[t]] if t < len(Y) else [0] * n)
            ctx.set(dut.y_valid, int(t < len(Y)))
            if ctx.get(dut.q_valid):
                q = ctx.get(dut.q)
                got.append(([q[i] for i in range(n)], ctx.get(dut.scale)))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    q_ref, s_ref = formats.quantize_act(torch.from_numpy(Y).to(torch.float32))
    assert len(got) == len(Y)
    assert np.array_equal(np.array([g[0] for g in got]), q_ref.numpy())
    assert np.array_equal(np.array([g[1] for g in got]), _fp32_bits(s_ref[:, 0].numpy()))


@pytest.mark.parametrize("n", [16, 24, 64])
def test_hadamard_quant_unit_end_to_end(n):
    """Float activations -> formats.had_input_fixed -> RTL -> (q, s_u, exponent): q and
    ldexp(s_u * fp32(1/sqrt n), exponent) equal the model's hadamard_quantize exactly, stalls and a reset included."""
    import torch

    from qift_hw.rtl.hadamard import HadamardQuantUnit
    from qift_hw.sim.hadamard_unit import hadamard_quantize

    unit = HadamardQuantUnit(n)
    x = torch.randn(8, n, generator=torch.Generator().manual_seed(n)) * torch.logspace(-3, 3, 8)[:, None]
    x[2] = 0
    mant, exp = formats.had_input_fixed(x)
    tr = hadamard_trace(mant.numpy(), unit.latency, seed=n, exponents=exp.numpy()[:, 0], quantize=True)
    when = {"q": "q_valid", "scale": "q_valid", "exp_out": "q_valid"}
    obs, errors = replay_amaranth(unit, tr, reset_at=len(tr["en"]) // 2, compare_when=when)
    assert not errors, errors
    rows, lanes = len(tr["en"]), unit.lanes()
    take = np.asarray(tr["en"], bool) & unpack_rows(obs["q_valid"][-rows:], "q_valid", lanes)[:, 0].astype(bool)
    q = unpack_rows(obs["q"][-rows:], "q", lanes)[take]
    s_u = np.array(obs["scale"][-rows:], dtype=np.uint32)[take].view(np.float32)
    e_out = unpack_rows(obs["exp_out"][-rows:], "exp_out", lanes)[take][:, 0]
    q_m, s_m = hadamard_quantize(x)
    inv = torch.tensor(1.0 / np.sqrt(n), dtype=torch.float64).to(torch.float32)
    assert np.array_equal(q, q_m.numpy())
    assert torch.equal(torch.ldexp(torch.from_numpy(s_u.copy()) * inv, torch.from_numpy(e_out).to(torch.int32)),
                       s_m[:, 0])


def test_quantizer_rejects_inexact_widths():
    from qift_hw.rtl.hadamard import HadamardQuantUnit

    with pytest.raises(QiftError, match="exact in FP32"):
        HadamardQuantUnit(1024)


@pytest.mark.parametrize("n", [16, 24])
def test_measured_latency_is_the_one_the_cycle_model_counts(n):
    """One vector into the RTL: the quantizer's q_valid rises 4 cycles after y_valid (formats.HAD_QUANT_LATENCY),
    and the whole unit's measured latency is the cycle model's Hadamard depth for one vector at full width."""
    from amaranth.sim import Simulator

    from qift_hw.rtl.hadamard import HadamardQuantUnit, Int4Quantizer
    from qift_hw.sim.cycle_model import had_cycles

    def first_valid(dut, x_port, valid_in, valid_out, lanes):
        seen = []

        async def bench(ctx):
            ctx.set(dut.en, 1)
            ctx.set(x_port, [1] * lanes)
            ctx.set(valid_in, 1)
            for t in range(40):
                if ctx.get(valid_out):
                    seen.append(t)
                await ctx.tick()
                ctx.set(valid_in, 0)

        sim = Simulator(dut)
        sim.add_clock(1e-8)
        sim.add_testbench(bench)
        sim.run()
        return seen

    quant = Int4Quantizer(n, 20)
    assert first_valid(quant, quant.y, quant.y_valid, quant.q_valid, n) == [4]
    assert formats.HAD_QUANT_LATENCY == 4
    unit = HadamardQuantUnit(n)
    K, p = split_order(n)
    measured = first_valid(unit, unit.x, unit.x_valid, unit.q_valid, n)
    assert measured == [(p.bit_length() - 1) + (K > 1) + 4]
    assert had_cycles(1, n, n) == 1 + 1 + measured[0]


def test_fp32_fields_the_quantizer_uses():
    """The named FP32 constants rebuild numpy's own bit patterns: 1.5 = 0x3FC00000 and fp32(0.9) from its
    significand and exponent; the clip's significand is a normal 24-bit one."""
    s, e = formats.fp32_significand(1.5)
    bits = ((e + formats.FP32_FRAC_BITS + formats.FP32_EXP_BIAS) << formats.FP32_FRAC_BITS) | (
        s & ((1 << formats.FP32_FRAC_BITS) - 1))
    assert bits == 0x3FC00000 == int(np.array(1.5, np.float32).view(np.uint32))
    assert formats.FP32_BITS == 32 and (s, e) == (3 << 22, -23)
    clip_s, clip_e = formats.ACT_CLIP_FP32_SIG, formats.ACT_CLIP_FP32_EXP
    assert 2**23 <= clip_s < 2**24
    assert np.float32(clip_s * 2.0**clip_e) == np.float32(formats.ACT_CLIP)
    assert (clip_s, clip_e) == (15099494, -24)
