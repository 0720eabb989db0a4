"""W2 kernel checks: the PyTorch path, the packed word layout and the PTX decode against independent references.

The PTX is checked on the CPU by executing its instructions with a small emulator written here (prmt byte
selection, fp16x2 arithmetic); the Triton kernels run in Triton's interpreter when Triton is installed, and
on the GPU (marked ``gpu``) when CUDA is there.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from qift_hw.core.errors import QiftError
from qift_hw.gpu.packed import dequantize_w2, from_codes, pack_weight, random_packed, w2_matmul_torch

POT_MNZ = {0: 1.0, 1: 4.0, 2: -1.0, 3: -4.0}  # sign-and-shift: bit 1 = sign, bit 0 = x4


def _codes_and_scale(N, K, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 4, (N, K), generator=g, dtype=torch.uint8), torch.rand(N, generator=g) + 0.5


def _reference(x, codes, scale, table=POT_MNZ):
    lut = np.array([table[c] for c in range(4)])
    W = lut[codes.numpy().astype(np.int64)] * scale.double().numpy()[:, None]
    return x.double().numpy() @ W.T


@pytest.mark.parametrize("N,K,M", [(8, 16, 1), (37, 576, 3), (64, 1536, 5)])
def test_torch_path_matches_reference(N, K, M):
    codes, scale = _codes_and_scale(N, K, N + K)
    pw = from_codes(codes, scale, "pot_mnz", scale_dtype=torch.float32)
    x = torch.randn(M, K)
    y = w2_matmul_torch(x, pw, block_rows=16)
    ref = _reference(x, codes, scale)
    assert np.allclose(y.double().numpy(), ref, rtol=1e-5, atol=1e-4 * np.abs(ref).max())


def test_word_layout():
    codes, scale = _codes_and_scale(5, 64, 1)
    pw = from_codes(codes, scale)
    words = pw.words().numpy().view(np.uint32)
    for n in range(5):
        for k in range(64):
            assert (words[n, k // 16] >> (2 * (k % 16))) & 3 == codes[n, k]


def test_pack_weight_rounds_to_nearest_level():
    W = torch.randn(16, 64)
    pw = pack_weight(W, "pot_mnz", method="maxabs", scale_dtype=torch.float32)
    deq = dequantize_w2(pw, torch.float64)
    s = pw.scale.double()[:, None]
    cand = torch.tensor([-4.0, -1.0, 1.0, 4.0], dtype=torch.float64)
    best = (W.double()[..., None] - cand * s[..., None]).abs().min(-1).values
    assert torch.allclose((W.double() - deq).abs(), best, atol=1e-6)


def test_bad_input():
    with pytest.raises(QiftError):
        pack_weight(torch.randn(4, 16), "asym")
    with pytest.raises(QiftError):
        from_codes(torch.zeros(4, 6, dtype=torch.uint8), torch.ones(4))
    with pytest.raises(QiftError):
        w2_matmul_torch(torch.randn(2, 8), random_packed(4, 16))


# --- PTX emulator: the few instructions the generated decode uses -------------------------------------------

def _prmt(a, b, sel):
    src = [(a >> (8 * i)) & 0xFF for i in range(4)] + [(b >> (8 * i)) & 0xFF for i in range(4)]
    out = 0
    for i in range(4):
        s = (sel >> (4 * i)) & 0xF
        byte = src[s & 7]
        if s & 8:
            byte = 0xFF if byte & 0x80 else 0
        out |= byte << (8 * i)
    return out


def _halves(v):
    return np.array([v & 0xFFFF, v >> 16], dtype=np.uint16).view(np.float16).astype(np.float64)


def _pack(h):
    b = np.array(h, dtype=np.float16).view(np.uint16).astype(np.uint32)
    return int(b[0]) | int(b[1]) << 16


def run_ptx(asm: str, args: dict[int, int]) -> dict:
    """Execute the decode PTX on 32-bit integers ($n operands given in ``args``); returns all registers."""
    r: dict[str, object] = {f"${k}": v for k, v in args.items()}

    def val(tok):
        tok = tok.strip()
        return int(tok, 0) if re.fullmatch(r"-?(0x[0-9a-fA-F]+|\d+)", tok) else r[tok]

    for line in asm.splitlines():
        line = line.strip().rstrip(";")
        if not line or line in "{}" or line.startswith(".reg"):
            continue
        op, rest = line.split(None, 1)
        if op == "mov.b32" and rest.startswith("{"):
            lo, hi, src = re.fullmatch(r"\{\s*(\S+),\s*(\S+)\s*\},\s*(\S+)", rest).groups()
            v = val(src)
            r[lo], r[hi] = v & 0xFFFF, v >> 16
            continue
        d, *ops = [t.strip() for t in rest.split(",")]
        v = [val(o) for o in ops]
        if op == "mov.b32":
            r[d] = v[0]
        elif op == "and.b32":
            r[d] = v[0] & v[1]
        elif op == "shr.b32":
            r[d] = (v[0] & 0xFFFFFFFF) >> v[1]
        elif op == "prmt.b32":
            r[d] = _prmt(v[0], v[1], v[2])
        elif op == "mul.rn.f16x2":
            r[d] = _pack(_halves(v[0]) * _halves(v[1]))
        elif op == "fma.rn.f16x2":
            r[d] = _pack(_halves(v[0]) * _halves(v[1]) + _halves(v[2]))
        elif op == "cvt.f32.f16":
            r[d] = float(np.array([v[0]], dtype=np.uint16).view(np.float16)[0])
        elif op == "add.f32":
            r[d] = float(np.float32(v[0]) + np.float32(v[1]))
        else:
            raise AssertionError(f"emulator does not know {op}")
    return r


def _fp16_pair(a, b):
    return _pack([a, b])


@pytest.mark.parametrize("level_set", ["pot_mnz", "pm12", "lloyd"])
def test_ptx_decode_word_emulated(level_set):
    wk = pytest.importorskip("qift_hw.gpu.w2_kernel")
    from qift_hw.core.levels import get_level_set

    table = torch.as_tensor(get_level_set(level_set).level_of_code, dtype=torch.float32)
    lo, hi = wk.fp16_table_bytes(table)
    asm = wk.decode_word_ptx(lo, hi)
    rng = np.random.default_rng(0)
    for _ in range(20):
        codes = rng.integers(0, 4, 16)
        word = int(sum(int(c) << (2 * i) for i, c in enumerate(codes)))
        r = run_ptx(asm, {16: word})
        got = np.array([r[f"${i}"] for i in range(16)], dtype=np.uint16).view(np.float16).astype(np.float64)
        want = table.numpy()[codes].astype(np.float16).astype(np.float64)
        assert np.array_equal(got, want)


def test_ptx_gemv_word_emulated():
    wk = pytest.importorskip("qift_hw.gpu.w2_kernel")
    lo, hi = wk.fp16_table_bytes(torch.tensor([POT_MNZ[c] for c in range(4)]))
    assert lo == 0  # sign-and-shift levels are fp16 powers of two: the one-table path
    asm = wk.gemv_word_ptx(lo, hi)
    rng = np.random.default_rng(1)
    for _ in range(50):
        codes = rng.integers(0, 4, 16)
        x = rng.standard_normal(16).astype(np.float16)
        word = int(sum(int(c) << (2 * i) for i, c in enumerate(codes)))
        pairs = {j + 2: _fp16_pair(x[a], x[b]) for j, (a, b) in enumerate(wk.PAIR_CODES)}
        got = run_ptx(asm, {1: word, **pairs})["$0"]
        terms = np.array([POT_MNZ[c] for c in codes]) * x.astype(np.float64)
        bound = 16 * 2.0**-11 * np.abs(terms).sum()  # fp16 accumulation of 16 exact products
        assert abs(got - terms.sum()) <= bound


def test_ptx_split_decode_and_dot_emulated():
    wk = pytest.importorskip("qift_hw.gpu.w2_kernel")
    lo, hi = wk.fp16_table_bytes(torch.tensor([POT_MNZ[c] for c in range(4)]))
    rng = np.random.default_rng(2)
    for _ in range(30):
        codes = rng.integers(0, 4, 16)
        word = int(sum(int(c) << (2 * i) for i, c in enumerate(codes)))
        r = run_ptx(wk.decode_pairs_ptx(lo, hi), {8: word})
        pairs = [r[f"${j}"] for j in range(8)]
        for p, (a, b) in zip(pairs, wk.PAIR_CODES):
            assert list(_halves(p)) == [POT_MNZ[codes[a]], POT_MNZ[codes[b]]]
        x = rng.standard_normal(16).astype(np.float16)
        xp = {j + 9: _fp16_pair(x[a], x[b]) for j, (a, b) in enumerate(wk.PAIR_CODES)}
        got = run_ptx(wk.DOT8_PTX, {**{j + 1: p for j, p in enumerate(pairs)}, **xp})["$0"]
        terms = np.array([POT_MNZ[c] for c in codes]) * x.astype(np.float64)
        assert abs(got - terms.sum()) <= 16 * 2.0**-11 * np.abs(terms).sum()


def test_xperm_matches_pair_order():
    wk = pytest.importorskip("qift_hw.gpu.w2_kernel")
    x = np.arange(1, 17).astype(np.float16)
    nat = [_fp16_pair(x[2 * j], x[2 * j + 1]) for j in range(8)]
    perm = {}
    for j in range(4):
        r = run_ptx(wk.XPERM_PTX, {2: nat[2 * j], 3: nat[2 * j + 1]})
        perm[2 * j], perm[2 * j + 1] = r["$0"], r["$1"]
    # the kernel feeds (q0,q1)->e0,e2 (q2,q3)->e1,e3 (q4,q5)->e4,e6 (q6,q7)->e5,e7
    e = {0: perm[0], 2: perm[1], 1: perm[2], 3: perm[3], 4: perm[4], 6: perm[5], 5: perm[6], 7: perm[7]}
    for j, (a, b) in enumerate(wk.PAIR_CODES):
        assert list(_halves(e[j])) == [x[a], x[b]]


INTERP_SNIPPET = textwrap.dedent("""
    import torch
    from qift_hw.gpu.packed import random_packed, dequantize_w2
    from qift_hw.gpu import w2_kernel as wk
    errs = []
    for N, K, M in [(24, 64, 1), (40, 576, 5)]:
        pw = random_packed(N, K, seed=N)
        W = dequantize_w2(pw, torch.float64)
        x = torch.randn(M, K).half()
        ref = x.double() @ W.T
        outs = [wk.mm(x, pw, "triton", BM=16, BN=16, BKW=4, SWAP=s) for s in (False, True)]
        if M == 1:
            outs.append(wk.gemv(x, pw, "triton", BN=16, BKW=16))
            outs.append(wk.gemv(x, pw, "triton", BN=8, BKW=16, prefetch=True))
        errs += [float((y.double() - ref).norm() / ref.norm()) for y in outs]
        errs.append(float((wk.dequantize(pw, "triton", BN=16, BKW=4).double() - W).abs().max() / W.abs().max()))
    print(max(errs))
""")


def test_triton_kernels_in_interpreter():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", INTERP_SNIPPET], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout.strip().splitlines()[-1]) < 2e-3  # fp16 output rounding


# --- on the GPU ----------------------------------------------------------------------------------------------

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _gpu_case(N, K, M, level_set, seed):
    from qift_hw.core.levels import get_level_set

    codes, scale = _codes_and_scale(N, K, seed)
    pw = from_codes(codes, scale * 0.05, level_set).to("cuda")
    table = get_level_set(level_set).level_of_code.astype(np.float16).astype(np.float64)
    x = torch.randn(M, K, dtype=torch.float16)
    ref = _reference(x, codes, pw.scale.cpu().double(), dict(enumerate(table)))
    return pw, x.cuda(), ref


def _rel(y, ref):
    return float(np.linalg.norm(y.double().cpu().numpy() - ref) / np.linalg.norm(ref))


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("mode", ["ptx", "triton"])
@pytest.mark.parametrize("N,K", [(100, 576), (576, 1536), (1024, 4096), (333, 11008)])
def test_gemv_on_gpu(mode, N, K):
    from qift_hw.gpu import w2_kernel as wk

    for cfg in ({}, {"BN": 8, "BKW": 32}, {"BN": 32, "BKW": 64, "num_warps": 8}, {"prefetch": True},
                {"BN": 4, "BKW": 256, "num_warps": 4, "prefetch": True}):
        pw, x, ref = _gpu_case(N, K, 1, "pot_mnz", N * K + len(cfg))
        out = torch.full((N,), float("nan"), dtype=torch.float16, device="cuda")
        wk.gemv(x, pw, mode, out=out, **cfg)
        assert not torch.isnan(out).any()
        assert _rel(out[None], ref) < 2e-3


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("mode", ["ptx", "triton"])
@pytest.mark.parametrize("swap", [False, True])
@pytest.mark.parametrize("N,K,M", [(100, 576, 1), (576, 1536, 8), (1024, 4096, 13), (333, 11008, 37)])
def test_mm_on_gpu(mode, swap, N, K, M):
    from qift_hw.gpu import w2_kernel as wk

    pw, x, ref = _gpu_case(N, K, M, "pot_mnz", N + K + M)
    out = torch.full((M, N), float("nan"), dtype=torch.float16, device="cuda")
    wk.mm(x, pw, mode, BM=16, BN=32, BKW=4, SWAP=swap, out=out)
    assert not torch.isnan(out).any()
    assert _rel(out, ref) < 2e-3


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("N,K,M", [(100, 576, 1), (576, 1536, 8), (1024, 4096, 5), (333, 11008, 3)])
def test_gemv_multi_on_gpu(N, K, M):
    from qift_hw.gpu import w2_kernel as wk

    for cfg in ({}, {"BN": 2, "BKW": 128, "num_warps": 4}, {"BN": 8, "BKW": 64}):
        pw, x, ref = _gpu_case(N, K, M, "pot_mnz", N + K + M + len(cfg))
        out = torch.full((M, N), float("nan"), dtype=torch.float16, device="cuda")
        wk.gemv_multi(x, pw, out=out, **cfg)
        assert not torch.isnan(out).any()
        assert _rel(out, ref) < 2e-3


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("level_set", ["pot_mnz", "pm12", "lloyd", "std"])
def test_level_sets_and_large_tiles_on_gpu(level_set):
    from qift_hw.gpu import dispatch, w2_kernel as wk

    pw, x, ref = _gpu_case(512, 1024, 300, level_set, 7)
    y = wk.mm(x, pw, "ptx", BM=128, BN=128, BKW=4, num_warps=8)
    assert _rel(y, ref) < 2e-3
    y1 = wk.gemv(x[:1], pw, "ptx")
    assert _rel(y1, ref[:1]) < 2e-3
    y2 = dispatch.run_config("deq_mm", x, pw, "ptx", {"BN": 16, "BKW": 16})
    assert _rel(y2, ref) < 2e-3
    W = wk.dequantize(pw, "ptx").double().cpu()
    Wref = wk.dequantize(pw, "triton").double().cpu()
    assert torch.equal(W, Wref)


@pytest.mark.gpu
@gpu
def test_auto_dispatch_and_torch_path_on_gpu():
    from qift_hw.gpu.dispatch import w2_matmul

    from qift_hw.gpu import dispatch

    for M in (1, 3, 8, 64):
        pw, x, ref = _gpu_case(256, 576, M, "pot_mnz", M)
        assert _rel(w2_matmul(x, pw), ref) < 2e-3
        dispatch.autotune(M, 256, 576, "ptx", pw=pw, x=x)
        assert _rel(w2_matmul(x, pw), ref) < 2e-3
        assert _rel(w2_matmul(x, pw), ref) < 2e-3
        assert _rel(w2_matmul(x, pw, impl="torch"), ref) < 2e-3
