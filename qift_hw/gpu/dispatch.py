"""Dispatch of the W2 kernels: `w2_matmul` picks a kernel and launch parameters per shape (candidate lists, a
timing sweep on the GPU, and a per-shape cache).

Which kernel and tile fit depends on the batch M: one row goes to the CUDA-core GEMV, a few rows to the
tensor-core kernel with the weight on the MMA's wide side (SWAP), prefill sizes to large tiles.
"""

from __future__ import annotations

import torch

from qift_hw.gpu import w2_kernel as wk
from qift_hw.gpu.packed import PackedW2, random_packed
from qift_hw.gpu.timing import copies_needed, time_graph

GEMV_CONFIGS = [dict(BN=bn, BKW=bkw, num_warps=w, prefetch=p) for bn, bkw, w, p in
                [(4, 64, 2, False), (4, 128, 4, False), (8, 64, 4, False), (4, 64, 2, True), (4, 256, 4, True),
                 (8, 128, 4, True), (16, 128, 4, True), (8, 256, 8, True), (16, 64, 2, True), (8, 64, 2, True),
                 (16, 256, 8, True), (32, 128, 8, True)]]
MULTI_CONFIGS = [dict(BM=8, BN=bn, BKW=bkw, num_warps=w) for bn, bkw, w in
                 [(2, 64, 2), (4, 64, 2), (2, 128, 4), (8, 64, 4), (1, 128, 4), (2, 32, 2)]]
MM_SMALL_CONFIGS = [dict(BM=16, BN=bn, BKW=bkw, SWAP=sw, num_warps=4, num_stages=st) for bn, bkw, sw, st in
                    [(16, 16, True, 3), (32, 8, True, 3), (64, 4, True, 3), (64, 8, True, 3), (128, 8, True, 3),
                     (32, 4, False, 3), (16, 8, False, 4)]]
MM_LARGE_CONFIGS = [dict(BM=bm, BN=bn, BKW=bkw, num_warps=w, num_stages=st) for bm, bn, bkw, w, st in
                    [(128, 128, 4, 8, 3), (128, 64, 4, 4, 3), (128, 128, 8, 8, 3), (64, 64, 4, 4, 4)]]
DEQ_CONFIGS = [dict(BN=32, BKW=8, num_warps=4), dict(BN=16, BKW=16, num_warps=4)]

_CACHE: dict[tuple, tuple[str, dict]] = {}


def _bucket(M: int) -> int:
    return 1 if M == 1 else 16 if M <= 16 else 1 << (M - 1).bit_length()


def candidates(M: int, mode: str = "ptx") -> list[tuple[str, dict]]:
    """(kernel, config) pairs worth trying for a batch of M rows."""
    if M == 1:
        return [("gemv", c) for c in GEMV_CONFIGS] + [("mm", c) for c in MM_SMALL_CONFIGS[:3]]
    if M <= 16:
        multi = [("gemv_multi", c) for c in MULTI_CONFIGS] if M <= 8 and mode == "ptx" else []
        return multi + [("mm", c) for c in MM_SMALL_CONFIGS]
    return [("mm", c) for c in MM_LARGE_CONFIGS] + [("deq_mm", c) for c in DEQ_CONFIGS]


def is_tuned(M: int, N: int, K: int, mode: str) -> bool:
    return (_bucket(M), N, K, mode) in _CACHE


def best_config(M: int, N: int, K: int, mode: str) -> tuple[str, dict]:
    """The tuned (kernel, config) for this shape if a sweep ran, else a sensible default."""
    hit = _CACHE.get((_bucket(M), N, K, mode))
    if hit:
        return hit
    if M == 1:
        return "gemv", dict(GEMV_CONFIGS[5])
    if M <= 8 and mode == "ptx":
        return "gemv_multi", dict(MULTI_CONFIGS[1])
    if M <= 16:
        return "mm", dict(MM_SMALL_CONFIGS[3])
    return "deq_mm", dict(DEQ_CONFIGS[0])


def autotune(M: int, N: int, K: int, mode: str = "ptx", pw=None, x: torch.Tensor | None = None,
             copies: list | None = None) -> dict:
    """Time every candidate for this shape on the GPU and cache the fastest.

    Timing is the benchmark's: a CUDA graph of back-to-back calls cycling through enough weight copies to
    miss the L2 (``timing.time_graph``), so the tile chosen is the one that is fastest when weights stream
    from HBM. Returns {"best": (kernel, config), "timings": [...]}; a config that fails to compile or launch
    is recorded with its error and skipped.
    """
    pw = pw if pw is not None else random_packed(N, K, device="cuda", seed=1)
    x = x if x is not None else torch.randn(M, K, device="cuda", dtype=torch.float16)
    if copies is None:
        l2 = torch.cuda.get_device_properties(0).L2_cache_size
        n = copies_needed(pw.nbytes, l2, max_copies=64)
        copies = [pw] + [PackedW2(torch.randint_like(pw.packed, 0, 256), pw.scale, pw.table, pw.K, pw.level_set)
                         for _ in range(n - 1)]
    rows = []
    for kind, cfg in candidates(M, mode):
        try:
            t = time_graph(lambda i, k=kind, c=cfg: run_config(k, x, copies[i], mode, c), len(copies),
                           calls=max(len(copies), 4 if M >= 256 else 32), replays=5)
        except Exception as exc:  # a tile that does not fit this GPU: skip it, keep the reason
            rows.append((kind, cfg, None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"))
            continue
        rows.append((kind, cfg, t["s"] * 1e3, ""))
    ok = [r for r in rows if r[2] is not None]
    if not ok:
        raise RuntimeError(f"no W2 kernel config ran for M={M} N={N} K={K}: {rows[0][3] if rows else ''}")
    kind, cfg, _, _ = min(ok, key=lambda r: r[2])
    _CACHE[(_bucket(M), N, K, mode)] = (kind, dict(cfg))
    return {"best": (kind, cfg), "timings": [{"kernel": k, "config": c, "ms": t, "error": e} for k, c, t, e in rows]}


def w2_matmul(x: torch.Tensor, pw: PackedW2, impl: str = "auto") -> torch.Tensor:
    """y = x @ W^T for a packed W2 weight. ``impl``: auto (Triton+PTX on CUDA, PyTorch elsewhere), ptx,
    triton, torch. Uses the tuned launch parameters from this module when they are known."""
    if impl == "torch" or (impl == "auto" and (x.device.type != "cuda" or not wk.HAVE_TRITON)):
        return wk.w2_matmul_torch(x, pw)
    mode = "ptx" if impl == "auto" else impl
    M = x.numel() // pw.K
    kind, cfg = best_config(M, pw.N, pw.K, mode)
    return run_config(kind, x, pw, mode, cfg)


def run_config(kind: str, x: torch.Tensor, pw: PackedW2, mode: str, cfg: dict) -> torch.Tensor:
    """Launch kernel ``kind`` (gemv, gemv_multi, mm, or deq_mm: decode to fp16 then cuBLAS) with ``cfg``."""
    if kind == "gemv":
        return wk.gemv(x, pw, mode, **cfg)
    if kind == "gemv_multi":
        return wk.gemv_multi(x, pw, **cfg)
    if kind == "deq_mm":
        return torch.nn.functional.linear(x, wk.dequantize(pw, mode, **cfg))
    return wk.mm(x, pw, mode, **cfg)
