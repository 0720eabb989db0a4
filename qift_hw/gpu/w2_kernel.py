"""Triton W2 matmul: y = x @ (scale * table[codes])^T, reading the packed 2-bit codes straight from memory.

Two kernels, both working on int32 words of 16 codes (code i of a word in bits 2i..2i+1, the project's
``pack_codes`` layout read four bytes at a time):

* ``gemv`` (M = 1, the decode step): CUDA cores. Memory-bound in principle, but at 2 bits per weight the
  decode arithmetic is what limits it, so the ``ptx`` decode does the table look-up with byte permutes
  (``prmt``: four codes -> four fp16 high bytes in one instruction, about 1.1 integer instructions per weight)
  and multiplies with packed fp16x2 FMAs, summing each word's 16 products in fp16 before the fp32 accumulator.
* ``mm`` (any M): tensor cores through ``tl.dot``, the weight tile decoded to fp16 in registers first.

Decode modes: ``ptx`` (inline PTX, CUDA only) and ``triton`` (plain Triton integer ops and selects; also
runs in the Triton interpreter on the CPU). Levels are used as fp16, which is exact for the sign-and-shift
set pot_mnz {+-1, +-4} and for pm12, mnz, std; other sets are rounded to fp16.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import torch

from qift_hw.core.errors import QiftError
from qift_hw.gpu.packed import PackedW2, w2_matmul_torch

try:
    import triton
    import triton.language as tl
    HAVE_TRITON = True
except ImportError:  # CPU-only installs: the PyTorch path stands in
    HAVE_TRITON = False

MODES = ("ptx", "triton")


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _fix_interpreter_for_numpy2() -> None:
    """Triton 3.6's interpreter turns 1-element arrays into loop bounds with int(array), which NumPy >= 2.4
    refuses; give its tensors an __index__ that takes the single element instead."""
    from triton.runtime import interpreter

    orig = interpreter._patch_lang_tensor
    if getattr(orig, "_qift_fixed", False):
        return

    def patched(tensor, scope):
        orig(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(np.asarray(self.handle.data).reshape(-1)[0]))

    patched._qift_fixed = True
    interpreter._patch_lang_tensor = patched


if HAVE_TRITON and interpreting():
    _fix_interpreter_for_numpy2()


def fp16_table_bytes(table: torch.Tensor) -> tuple[int, int]:
    """The fp16 level table as two byte tables for ``prmt``: (low bytes, high bytes), byte c = code c."""
    bits = torch.as_tensor(table, dtype=torch.float32).to(torch.float16).view(torch.int16).numpy().astype(np.uint16)
    lo = sum(int(b & 0xFF) << (8 * c) for c, b in enumerate(bits))
    hi = sum(int(b >> 8) << (8 * c) for c, b in enumerate(bits))
    return lo, hi


def _lookup_ptx(lo: int, hi: int) -> tuple[str, list[str]]:
    """PTX that turns word $W into eight fp16x2 registers p0..p7 holding the levels of code pairs
    (0,2) (4,6) (1,3) (5,7) (8,10) (12,14) (9,11) (13,15). With an all-zero low-byte table one ``prmt`` per
    four codes gives the high bytes and two more spread them into fp16 pairs; otherwise both bytes are looked up.
    """
    lines = [
        "and.b32 t0, $W, 0x33333333;",
        "shr.b32 t1, $W, 2;",
        "and.b32 t1, t1, 0x33333333;",
        "shr.b32 t2, t0, 16;",
        "shr.b32 t3, t1, 16;",
    ]
    pairs = []
    for g in range(4):
        if lo == 0:
            lines.append(f"prmt.b32 h{g}, {hi:#010x}, 0, t{g};")
            lines.append(f"prmt.b32 p{2 * g}, h{g}, 0, 0x1404;")
            lines.append(f"prmt.b32 p{2 * g + 1}, h{g}, 0, 0x3424;")
        else:
            lines.append(f"prmt.b32 l{g}, {lo:#010x}, 0, t{g};")
            lines.append(f"prmt.b32 h{g}, {hi:#010x}, 0, t{g};")
            lines.append(f"prmt.b32 p{2 * g}, l{g}, h{g}, 0x5140;")
            lines.append(f"prmt.b32 p{2 * g + 1}, l{g}, h{g}, 0x7362;")
        pairs += [f"p{2 * g}", f"p{2 * g + 1}"]
    return "\n".join(lines), pairs


# codes held by p0..p7 of _lookup_ptx, as (low half, high half)
PAIR_CODES = ((0, 2), (4, 6), (1, 3), (5, 7), (8, 10), (12, 14), (9, 11), (13, 15))
_DECLS = ".reg .b32 t0, t1, t2, t3, h0, h1, h2, h3, l0, l1, l2, l3, p0, p1, p2, p3, p4, p5, p6, p7;"


def _lookup_block(lo: int, hi: int, word: str, extra_decls: tuple[str, ...], tail: list[str]) -> str:
    """One inline-PTX block: the register declarations, the level look-up of word register ``word`` and ``tail``."""
    body, _ = _lookup_ptx(lo, hi)
    return "\n".join(["{", _DECLS, *extra_decls, body.replace("$W", word), *tail, "}"])


_PAIRS = [f"p{j}" for j in range(8)]
"""Registers of the eight fp16x2 level pairs that ``_lookup_ptx`` leaves, in ``PAIR_CODES`` order."""


@functools.lru_cache(maxsize=None)
def gemv_word_ptx(lo: int, hi: int) -> str:
    """Inline PTX: $0 (f32) = sum over the 16 codes of word $1 of level * x, x given as pairs $2..$9 in
    ``PAIR_CODES`` order (fp16x2). Products are exact in fp16; the 16-term sum runs in fp16x2, then fp32."""
    fma = [f"mul.rn.f16x2 a, {_PAIRS[0]}, $2;"]
    fma += [f"fma.rn.f16x2 a, {p}, ${j + 2}, a;" for j, p in enumerate(_PAIRS) if j]
    return _lookup_block(lo, hi, "$1", (".reg .b32 a;", ".reg .b16 alo, ahi;", ".reg .f32 f0, f1;"),
                         [*fma, "mov.b32 {alo, ahi}, a;", "cvt.f32.f16 f0, alo;", "cvt.f32.f16 f1, ahi;",
                          "add.f32 $0, f0, f1;"])


@functools.lru_cache(maxsize=None)
def decode_word_ptx(lo: int, hi: int) -> str:
    """Inline PTX: the 16 fp16 levels $0..$15 (code order) of word $16."""
    return _lookup_block(lo, hi, "$16", (), [f"mov.b32 {{${a}, ${b}}}, {p};" for p, (a, b) in zip(_PAIRS, PAIR_CODES)])


@functools.lru_cache(maxsize=None)
def decode_pairs_ptx(lo: int, hi: int) -> str:
    """Inline PTX: the eight fp16x2 level pairs $0..$7 (``PAIR_CODES`` order) of word $8, as raw 32-bit words."""
    return _lookup_block(lo, hi, "$8", (), [f"mov.b32 ${j}, {p};" for j, p in enumerate(_PAIRS)])


DOT8_PTX = "\n".join(["{", ".reg .b32 a;", ".reg .b16 alo, ahi;", ".reg .f32 f0, f1;", "mul.rn.f16x2 a, $1, $9;",
                      *[f"fma.rn.f16x2 a, ${j + 1}, ${j + 9}, a;" for j in range(1, 8)],
                      "mov.b32 {alo, ahi}, a;", "cvt.f32.f16 f0, alo;", "cvt.f32.f16 f1, ahi;", "add.f32 $0, f0, f1;",
                      "}"])
"""Inline PTX: $0 (f32) = sum of the fp16x2 products of level pairs $1..$8 and activation pairs $9..$16."""


# x pairs: natural fp16x2 words P(2j), P(2j+1) -> (x[4j], x[4j+2]) and (x[4j+1], x[4j+3])
XPERM_PTX = "prmt.b32 $0, $2, $3, 0x5410;\nprmt.b32 $1, $2, $3, 0x7632;"


if HAVE_TRITON:

    @triton.jit
    def _decode_triton(w, L0: tl.constexpr, L1: tl.constexpr, L2: tl.constexpr, L3: tl.constexpr):
        """Word tile [R, C] int32 -> fp16 levels [R, C, 16] with plain integer ops and selects."""
        shifts = tl.arange(0, 16) * 2
        c = (w[:, :, None] >> shifts[None, None, :]) & 3
        lo = tl.where((c & 1) != 0, L1, L0)
        hi = tl.where((c & 1) != 0, L3, L2)
        return tl.where((c & 2) != 0, hi, lo).to(tl.float16)

    @triton.jit
    def _decode_ptx(w, ASM: tl.constexpr):
        """Word tile [R, C] int32 -> fp16 levels [R, C, 16] through the inline-PTX look-up."""
        o = tl.inline_asm_elementwise(ASM, "=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,r", [w],
                                      dtype=(tl.float16,) * 16, is_pure=True, pack=1)
        a0 = tl.join(o[0], o[8])
        a1 = tl.join(o[1], o[9])
        a2 = tl.join(o[2], o[10])
        a3 = tl.join(o[3], o[11])
        a4 = tl.join(o[4], o[12])
        a5 = tl.join(o[5], o[13])
        a6 = tl.join(o[6], o[14])
        a7 = tl.join(o[7], o[15])
        b0 = tl.join(a0, a4)
        b1 = tl.join(a1, a5)
        b2 = tl.join(a2, a6)
        b3 = tl.join(a3, a7)
        c0 = tl.join(b0, b2)
        c1 = tl.join(b1, b3)
        d = tl.join(c0, c1)
        return tl.reshape(d, (w.shape[0], w.shape[1], 16))

    @triton.jit
    def _word_dots(w, x_ptr, cols, cmask, ASM: tl.constexpr, XPERM: tl.constexpr):
        """Per-word dot products [BN, BKW] of the PTX decode with the activation words ``cols`` (x as int32)."""
        xw = x_ptr + cols * 8
        q0 = tl.load(xw + 0, mask=cmask, other=0)
        q1 = tl.load(xw + 1, mask=cmask, other=0)
        q2 = tl.load(xw + 2, mask=cmask, other=0)
        q3 = tl.load(xw + 3, mask=cmask, other=0)
        q4 = tl.load(xw + 4, mask=cmask, other=0)
        q5 = tl.load(xw + 5, mask=cmask, other=0)
        q6 = tl.load(xw + 6, mask=cmask, other=0)
        q7 = tl.load(xw + 7, mask=cmask, other=0)
        e0, e2 = tl.inline_asm_elementwise(XPERM, "=r,=r,r,r", [q0, q1], dtype=(tl.int32, tl.int32), is_pure=True,
                                           pack=1)
        e1, e3 = tl.inline_asm_elementwise(XPERM, "=r,=r,r,r", [q2, q3], dtype=(tl.int32, tl.int32), is_pure=True,
                                           pack=1)
        e4, e6 = tl.inline_asm_elementwise(XPERM, "=r,=r,r,r", [q4, q5], dtype=(tl.int32, tl.int32), is_pure=True,
                                           pack=1)
        e5, e7 = tl.inline_asm_elementwise(XPERM, "=r,=r,r,r", [q6, q7], dtype=(tl.int32, tl.int32), is_pure=True,
                                           pack=1)
        return tl.inline_asm_elementwise(
            ASM, "=f,r,r,r,r,r,r,r,r,r",
            [w, e0[None, :], e1[None, :], e2[None, :], e3[None, :], e4[None, :], e5[None, :], e6[None, :],
             e7[None, :]], dtype=tl.float32, is_pure=True, pack=1)

    @triton.jit
    def _gemv_kernel(x_ptr, w_ptr, s_ptr, y_ptr, N, KW, stride_wn,
                     BN: tl.constexpr, BKW: tl.constexpr, ALIGN4: tl.constexpr, PTX: tl.constexpr,
                     ASM: tl.constexpr, XPERM: tl.constexpr, PREFETCH: tl.constexpr,
                     L0: tl.constexpr, L1: tl.constexpr, L2: tl.constexpr, L3: tl.constexpr):
        """y[n] = scale[n] * sum_k table[code(n, k)] * x[k] for BN rows per program (M = 1). PREFETCH issues
        the next tile's loads before decoding the current one."""
        pid = tl.program_id(0)
        rows = pid * BN + tl.arange(0, BN)
        rmask = rows < N
        if ALIGN4:
            stride_wn = tl.multiple_of(stride_wn, 4)
        w_row = w_ptr + rows.to(tl.int64)[:, None] * stride_wn
        acc = tl.zeros([BN, BKW], dtype=tl.float32)
        if not PREFETCH:
            for kw0 in range(0, KW, BKW):
                cols = kw0 + tl.arange(0, BKW)
                cmask = cols < KW
                w = tl.load(w_row + cols[None, :], mask=rmask[:, None] & cmask[None, :], other=0)
                if PTX:
                    acc += _word_dots(w, x_ptr, cols, cmask, ASM, XPERM)
                else:
                    lv = _decode_triton(w, L0, L1, L2, L3).to(tl.float32)
                    k = cols[:, None] * 16 + tl.arange(0, 16)[None, :]
                    xv = tl.load(x_ptr + k, mask=cmask[:, None], other=0.0).to(tl.float32)
                    acc += tl.sum(lv * xv[None, :, :], axis=2)
        else:
            cols = tl.arange(0, BKW)
            # software prefetch: the next tile's loads are in flight while this tile is decoded
            w = tl.load(w_row + cols[None, :], mask=rmask[:, None] & (cols < KW)[None, :], other=0)
            if PTX:
                xw = x_ptr + cols * 8
                q0 = tl.load(xw + 0, mask=cols < KW, other=0)
                q1 = tl.load(xw + 1, mask=cols < KW, other=0)
                q2 = tl.load(xw + 2, mask=cols < KW, other=0)
                q3 = tl.load(xw + 3, mask=cols < KW, other=0)
                q4 = tl.load(xw + 4, mask=cols < KW, other=0)
                q5 = tl.load(xw + 5, mask=cols < KW, other=0)
                q6 = tl.load(xw + 6, mask=cols < KW, other=0)
                q7 = tl.load(xw + 7, mask=cols < KW, other=0)
            for kw0 in range(BKW, KW + BKW, BKW):
                nc = kw0 + cols
                nmask = nc < KW
                w_next = tl.load(w_row + nc[None, :], mask=rmask[:, None] & nmask[None, :], other=0)
                if PTX:
                    xw = x_ptr + nc * 8
                    n0 = tl.load(xw + 0, mask=nmask, other=0)
                    n1 = tl.load(xw + 1, mask=nmask, other=0)
                    n2 = tl.load(xw + 2, mask=nmask, other=0)
                    n3 = tl.load(xw + 3, mask=nmask, other=0)
                    n4 = tl.load(xw + 4, mask=nmask, other=0)
                    n5 = tl.load(xw + 5, mask=nmask, other=0)
                    n6 = tl.load(xw + 6, mask=nmask, other=0)
                    n7 = tl.load(xw + 7, mask=nmask, other=0)
                    e0, e2 = tl.inline_asm_elementwise(XPERM, "=r,=r,r,r", [q0, q1], dtype=(tl.int32, tl.int32),
                                                       is_pure=True, pack=1)
                    e1, e3 = tl.inline_asm_elementwise(XPERM, "=r,=r,r,r", [q2, q3], dtype=(tl.int32, tl.int32),
                                                       is_pure=True, pack=1)
                    e4, e6 = tl.inline_asm_elementwise(XPERM, "=r,=r,r,r", [q4, q5], dtype=(tl.int32, tl.int32),
                                                       is_pure=True, pack=1)
                    e5, e7 = tl.inline_asm_elementwise(XPERM, "=r,=r,r,r", [q6, q7], dtype=(tl.int32, tl.int32),
                                                       is_pure=True, pack=1)
                    part = tl.inline_asm_elementwise(
                        ASM, "=f,r,r,r,r,r,r,r,r,r",
                        [w, e0[None, :], e1[None, :], e2[None, :], e3[None, :], e4[None, :], e5[None, :],
                         e6[None, :], e7[None, :]],
                        dtype=tl.float32, is_pure=True, pack=1)
                    acc += part
                    q0, q1, q2, q3, q4, q5, q6, q7 = n0, n1, n2, n3, n4, n5, n6, n7
                else:
                    cur = kw0 - BKW + cols
                    lv = _decode_triton(w, L0, L1, L2, L3).to(tl.float32)
                    k = cur[:, None] * 16 + tl.arange(0, 16)[None, :]
                    xv = tl.load(x_ptr + k, mask=(cur < KW)[:, None], other=0.0).to(tl.float32)
                    acc += tl.sum(lv * xv[None, :, :], axis=2)
                w = w_next
        s = tl.load(s_ptr + rows, mask=rmask, other=0.0).to(tl.float32)
        y = tl.sum(acc, axis=1) * s
        tl.store(y_ptr + rows, y.to(y_ptr.dtype.element_ty), mask=rmask)

    @triton.jit
    def _xpairs(x_ptr, rows_m, stride_xm, cols, cmask, XPERM: tl.constexpr):
        """Activation pairs [BM, BKW] x 8 in PAIR_CODES order for the words ``cols`` of rows ``rows_m``."""
        xw = x_ptr + rows_m[:, None] * stride_xm + cols[None, :] * 8
        m = cmask[None, :] & (rows_m >= 0)[:, None]
        q0 = tl.load(xw + 0, mask=m, other=0)
        q1 = tl.load(xw + 1, mask=m, other=0)
        q2 = tl.load(xw + 2, mask=m, other=0)
        q3 = tl.load(xw + 3, mask=m, other=0)
        q4 = tl.load(xw + 4, mask=m, other=0)
        q5 = tl.load(xw + 5, mask=m, other=0)
        q6 = tl.load(xw + 6, mask=m, other=0)
        q7 = tl.load(xw + 7, mask=m, other=0)
        e0, e2 = tl.inline_asm_elementwise(XPERM, "=r,=r,r,r", [q0, q1], dtype=(tl.int32, tl.int32), is_pure=True,
                                           pack=1)
        e1, e3 = tl.inline_asm_elementwise(XPERM, "=r,=r,r,r", [q2, q3], dtype=(tl.int32, tl.int32), is_pure=True,
                                           pack=1)
        e4, e6 = tl.inline_asm_elementwise(XPERM, "=r,=r,r,r", [q4, q5], dtype=(tl.int32, tl.int32), is_pure=True,
                                           pack=1)
        e5, e7 = tl.inline_asm_elementwise(XPERM, "=r,=r,r,r", [q6, q7], dtype=(tl.int32, tl.int32), is_pure=True,
                                           pack=1)
        return e0, e1, e2, e3, e4, e5, e6, e7

    @triton.jit
    def _gemv_multi_kernel(x_ptr, w_ptr, s_ptr, y_ptr, M, N, KW, stride_xm, stride_wn, stride_ym,
                           BM: tl.constexpr, BN: tl.constexpr, BKW: tl.constexpr, ALIGN4: tl.constexpr,
                           DEC: tl.constexpr, DOT: tl.constexpr, XPERM: tl.constexpr):
        """A few activation rows (M <= BM) on CUDA cores: each word is decoded once (PTX) and its eight level
        pairs are reused for every row with fp16x2 FMAs; x is int32 pairs with row stride ``stride_xm``."""
        pid = tl.program_id(0)
        rows = pid * BN + tl.arange(0, BN)
        rmask = rows < N
        rm = tl.arange(0, BM)
        rm = tl.where(rm < M, rm, -1)
        if ALIGN4:
            stride_wn = tl.multiple_of(stride_wn, 4)
        w_row = w_ptr + rows.to(tl.int64)[:, None] * stride_wn
        acc = tl.zeros([BM, BN, BKW], dtype=tl.float32)
        for kw0 in range(0, KW, BKW):
            cols = kw0 + tl.arange(0, BKW)
            cmask = cols < KW
            w = tl.load(w_row + cols[None, :], mask=rmask[:, None] & cmask[None, :], other=0)
            e0, e1, e2, e3, e4, e5, e6, e7 = _xpairs(x_ptr, rm, stride_xm, cols, cmask, XPERM)
            p0, p1, p2, p3, p4, p5, p6, p7 = tl.inline_asm_elementwise(
                DEC, "=r,=r,=r,=r,=r,=r,=r,=r,r", [w], dtype=(tl.int32,) * 8, is_pure=True, pack=1)
            acc += tl.inline_asm_elementwise(
                DOT, "=f,r,r,r,r,r,r,r,r,r,r,r,r,r,r,r,r",
                [p0[None, :, :], p1[None, :, :], p2[None, :, :], p3[None, :, :], p4[None, :, :], p5[None, :, :],
                 p6[None, :, :], p7[None, :, :], e0[:, None, :], e1[:, None, :], e2[:, None, :], e3[:, None, :],
                 e4[:, None, :], e5[:, None, :], e6[:, None, :], e7[:, None, :]],
                dtype=tl.float32, is_pure=True, pack=1)
        s = tl.load(s_ptr + rows, mask=rmask, other=0.0).to(tl.float32)
        y = tl.sum(acc, axis=2) * s[None, :]
        rmo = tl.arange(0, BM)
        tl.store(y_ptr + rmo[:, None] * stride_ym + rows[None, :], y.to(y_ptr.dtype.element_ty),
                 mask=(rmo < M)[:, None] & rmask[None, :])

    @triton.jit
    def _mm_kernel(x_ptr, w_ptr, s_ptr, y_ptr, M, N, KW, stride_xm, stride_wn, stride_ym,
                   BM: tl.constexpr, BN: tl.constexpr, BKW: tl.constexpr, GROUP_M: tl.constexpr,
                   ALIGN4: tl.constexpr, PTX: tl.constexpr, ASM: tl.constexpr, SWAP: tl.constexpr,
                   L0: tl.constexpr, L1: tl.constexpr, L2: tl.constexpr, L3: tl.constexpr):
        """Tiled y = (x @ levels^T) * scale on tensor cores; the weight tile is decoded to fp16 per K step.
        SWAP computes y^T = levels @ x^T instead, so that a small batch M fills the narrow side of the MMA."""
        pid = tl.program_id(0)
        num_m = tl.cdiv(M, BM)
        num_n = tl.cdiv(N, BN)
        group = GROUP_M * num_n
        first_m = (pid // group) * GROUP_M
        size_m = tl.minimum(num_m - first_m, GROUP_M)
        pid_m = first_m + (pid % group) % size_m
        pid_n = (pid % group) // size_m
        rm = pid_m * BM + tl.arange(0, BM)
        rn = pid_n * BN + tl.arange(0, BN)
        if ALIGN4:
            stride_wn = tl.multiple_of(stride_wn, 4)
        BK: tl.constexpr = BKW * 16
        if SWAP:
            acc = tl.zeros([BN, BM], dtype=tl.float32)
        else:
            acc = tl.zeros([BM, BN], dtype=tl.float32)
        for kw0 in range(0, KW, BKW):
            cw = kw0 + tl.arange(0, BKW)
            ck = kw0 * 16 + tl.arange(0, BK)
            w = tl.load(w_ptr + rn.to(tl.int64)[:, None] * stride_wn + cw[None, :],
                        mask=(rn < N)[:, None] & (cw < KW)[None, :], other=0)
            if PTX:
                lv = _decode_ptx(w, ASM)
            else:
                lv = _decode_triton(w, L0, L1, L2, L3)
            wt = tl.reshape(lv, (BN, BK))
            xt = tl.load(x_ptr + rm.to(tl.int64)[:, None] * stride_xm + ck[None, :],
                         mask=(rm < M)[:, None] & (ck < KW * 16)[None, :], other=0.0)
            if SWAP:
                acc = tl.dot(wt, tl.trans(xt), acc)
            else:
                acc = tl.dot(xt, tl.trans(wt), acc)
        s = tl.load(s_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)
        if SWAP:
            acc = acc * s[:, None]
            tl.store(y_ptr + rm.to(tl.int64)[None, :] * stride_ym + rn[:, None], acc.to(y_ptr.dtype.element_ty),
                     mask=(rm < M)[None, :] & (rn < N)[:, None])
        else:
            acc = acc * s[None, :]
            tl.store(y_ptr + rm.to(tl.int64)[:, None] * stride_ym + rn[None, :], acc.to(y_ptr.dtype.element_ty),
                     mask=(rm < M)[:, None] & (rn < N)[None, :])

    @triton.jit
    def _dequant_kernel(w_ptr, s_ptr, out_ptr, N, KW, stride_wn, stride_on,
                        BN: tl.constexpr, BKW: tl.constexpr, PTX: tl.constexpr, ASM: tl.constexpr,
                        L0: tl.constexpr, L1: tl.constexpr, L2: tl.constexpr, L3: tl.constexpr):
        """Write the fp16 weight scale * level [N, K] (for dequantize-then-cuBLAS on large M)."""
        rn = tl.program_id(0) * BN + tl.arange(0, BN)
        cw = tl.program_id(1) * BKW + tl.arange(0, BKW)
        w = tl.load(w_ptr + rn.to(tl.int64)[:, None] * stride_wn + cw[None, :],
                    mask=(rn < N)[:, None] & (cw < KW)[None, :], other=0)
        if PTX:
            lv = _decode_ptx(w, ASM)
        else:
            lv = _decode_triton(w, L0, L1, L2, L3)
        s = tl.load(s_ptr + rn, mask=rn < N, other=0.0).to(tl.float16)
        v = tl.reshape(lv * s[:, None, None], (BN, BKW * 16))
        ck = tl.program_id(1) * BKW * 16 + tl.arange(0, BKW * 16)
        tl.store(out_ptr + rn.to(tl.int64)[:, None] * stride_on + ck[None, :], v,
                 mask=(rn < N)[:, None] & (ck < KW * 16)[None, :])


def _check(x: torch.Tensor, pw: PackedW2) -> None:
    if not HAVE_TRITON:
        raise QiftError("Triton is not installed; use impl='torch' or `pip install triton`")
    if x.shape[-1] != pw.K:
        raise QiftError(f"activation has {x.shape[-1]} features but the weight expects K={pw.K}")
    if x.dtype != torch.float16:
        raise QiftError(f"the Triton W2 kernel takes float16 activations, got {x.dtype}")
    if x.device != pw.device:
        raise QiftError(f"activation on {x.device} but weight on {pw.device}; move both to one device")
    if x.device.type != "cuda" and not interpreting():
        raise QiftError("the Triton W2 kernel needs a CUDA tensor (or TRITON_INTERPRET=1 on the CPU)")


def _mode(mode: str, x: torch.Tensor) -> str:
    if mode not in MODES:
        raise QiftError(f"unknown decode mode {mode!r}; use one of {', '.join(MODES)}")
    if mode == "ptx" and (x.device.type != "cuda" or interpreting()):
        raise QiftError("the 'ptx' decode needs a CUDA GPU (the interpreter cannot run inline PTX); use mode='triton'")
    return mode


@functools.lru_cache(maxsize=None)
def _levels_of(level_set: str) -> dict:
    from qift_hw.core.levels import get_level_set

    table = torch.as_tensor(get_level_set(level_set).level_of_code, dtype=torch.float32)
    lo, hi = fp16_table_bytes(table)
    t = [float(v) for v in table]
    return {"L0": t[0], "L1": t[1], "L2": t[2], "L3": t[3], "lo": lo, "hi": hi}


def _decode_args(pw: PackedW2, ptx: bool, asm=decode_word_ptx) -> dict:
    """The decode arguments of a kernel launch: the PTX look-up block (``asm``) or the four Triton levels.

    Built from the set's name only (no device read), so launches can be captured in a CUDA graph."""
    lv = _levels_of(pw.level_set)
    return dict(PTX=ptx, ASM=asm(lv["lo"], lv["hi"]) if ptx else "", L0=lv["L0"], L1=lv["L1"], L2=lv["L2"],
                L3=lv["L3"])


def gemv(x: torch.Tensor, pw: PackedW2, mode: str = "ptx", BN: int = 4, BKW: int = 64,
         num_warps: int = 2, num_stages: int = 2, prefetch: bool = False, out: torch.Tensor | None = None
         ) -> torch.Tensor:
    """W2 matrix-vector product for one activation row x [K] or [1, K] (fp16) -> [.., N] fp16."""
    _check(x, pw)
    mode = _mode(mode, x)
    if x.numel() != pw.K:
        raise QiftError(f"gemv takes a single activation row; got {x.numel() // pw.K} rows, use mm()")
    words = pw.words()
    xs = x.reshape(pw.K).contiguous()
    y = out if out is not None else torch.empty(pw.N, dtype=torch.float16, device=x.device)
    ptx = mode == "ptx"
    grid = (triton.cdiv(pw.N, BN),)
    _gemv_kernel[grid](xs.view(torch.int32) if ptx else xs, words, pw.scale, y, pw.N, words.shape[1],
                       words.stride(0), BN=BN, BKW=BKW, ALIGN4=words.stride(0) % 4 == 0,
                       XPERM=XPERM_PTX, PREFETCH=prefetch, num_warps=num_warps, num_stages=num_stages,
                       **_decode_args(pw, ptx, gemv_word_ptx))
    return y.reshape(*x.shape[:-1], pw.N)


def gemv_multi(x: torch.Tensor, pw: PackedW2, BM: int = 8, BN: int = 8, BKW: int = 64, num_warps: int = 4,
               num_stages: int = 2, out: torch.Tensor | None = None) -> torch.Tensor:
    """W2 product for up to BM activation rows on CUDA cores (PTX decode only) -> [..., N] fp16."""
    _check(x, pw)
    _mode("ptx", x)
    x2 = x.reshape(-1, pw.K).contiguous()
    M = x2.shape[0]
    if M > BM:
        raise QiftError(f"gemv_multi takes at most BM={BM} rows, got {M}; use mm()")
    words = pw.words()
    y = out if out is not None else torch.empty(M, pw.N, dtype=torch.float16, device=x.device)
    grid = (triton.cdiv(pw.N, BN),)
    _gemv_multi_kernel[grid](x2.view(torch.int32), words, pw.scale, y, M, pw.N, words.shape[1], x2.stride(0) // 2,
                             words.stride(0), y.stride(0), BM=BM, BN=BN, BKW=BKW,
                             ALIGN4=words.stride(0) % 4 == 0, DEC=_decode_args(pw, True, decode_pairs_ptx)["ASM"],
                             DOT=DOT8_PTX, XPERM=XPERM_PTX, num_warps=num_warps, num_stages=num_stages)
    return y.reshape(*x.shape[:-1], pw.N)


def mm(x: torch.Tensor, pw: PackedW2, mode: str = "ptx", BM: int = 16, BN: int = 64, BKW: int = 4,
       GROUP_M: int = 8, SWAP: bool = False, num_warps: int = 4, num_stages: int = 3,
       out: torch.Tensor | None = None) -> torch.Tensor:
    """W2 matmul for activations [..., K] (fp16) on tensor cores -> [..., N] fp16."""
    _check(x, pw)
    mode = _mode(mode, x)
    words = pw.words()
    x2 = x.reshape(-1, pw.K)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    M = x2.shape[0]
    y = out if out is not None else torch.empty(M, pw.N, dtype=torch.float16, device=x.device)
    ptx = mode == "ptx"
    grid = (triton.cdiv(M, BM) * triton.cdiv(pw.N, BN),)
    _mm_kernel[grid](x2, words, pw.scale, y, M, pw.N, words.shape[1], x2.stride(0), words.stride(0), y.stride(0),
                     BM=BM, BN=BN, BKW=BKW, GROUP_M=GROUP_M, ALIGN4=words.stride(0) % 4 == 0, SWAP=SWAP,
                     num_warps=num_warps, num_stages=num_stages, **_decode_args(pw, ptx))
    return y.reshape(*x.shape[:-1], pw.N)


def dequantize(pw: PackedW2, mode: str = "ptx", BN: int = 32, BKW: int = 8, num_warps: int = 4,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """The fp16 weight [N, K] decoded on the GPU (scale * level, rounded to fp16)."""
    if not HAVE_TRITON:
        raise QiftError("Triton is not installed")
    mode = _mode(mode, pw.packed)
    words = pw.words()
    o = out if out is not None else torch.empty(pw.N, pw.K, dtype=torch.float16, device=pw.device)
    ptx = mode == "ptx"
    grid = (triton.cdiv(pw.N, BN), triton.cdiv(words.shape[1], BKW))
    _dequant_kernel[grid](words, pw.scale, o, pw.N, words.shape[1], words.stride(0), o.stride(0), BN=BN, BKW=BKW,
                          num_warps=num_warps, **_decode_args(pw, ptx))
    return o
