"""GPTQ and round-to-nearest weight quantization onto a fixed level set with one scale per output row.

GPTQ (arXiv 2210.17323) quantizes a linear layer's weight one input column at a time and spreads each
column's rounding error over the columns not yet quantized, weighted by the inverse Hessian of the layer's
inputs, so that the layer's *output* on calibration data changes as little as possible. Here the grid is a
level set from `qift_hw.core.levels` (any of the 2-bit sets, or int3/int4 for the wider layers) and the per-row
scale (and zero point for `asym`) is fixed before the loop, as the Qift paper does.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from qift_hw.core.errors import QiftError
from qift_hw.core.levels import LevelSet, QParams, dequantize, fit_params, quantize

DAMP_RETRIES = 4
DAMP_GROWTH = 10.0


@dataclass
class GPTQResult:
    """Outcome of quantizing one weight matrix.

    codes: level codes (uint8 [N, K]); deq: the dequantized weight (float, same shape and dtype as W);
    params: the per-row scale (and zero); loss: GPTQ's proxy loss, sum over columns of (w-q)^2 / Hinv_ii^2 / 2;
    damp_used: the damping actually added to the Hessian diagonal (0 for RTN).
    """

    codes: torch.Tensor
    deq: torch.Tensor
    params: QParams
    loss: float
    damp_used: float


GRAM_BLOCK = 384
"""Column-block width of `gram`'s upper-triangle products (1536 inputs: 4 blocks, 10 of 16 block products)."""

_gram_blocked_ok: dict[tuple, bool] = {}


def _gram_blocked(x: torch.Tensor, block: int) -> torch.Tensor:
    """x^T x from the block products on and above the diagonal, mirrored below it."""
    K = x.shape[1]
    out = torch.empty(K, K, dtype=x.dtype, device=x.device)
    for i0 in range(0, K, block):
        i1 = min(i0 + block, K)
        rows = x[:, i0:i1].T @ x[:, i0:]
        out[i0:i1, i0:] = rows
        out[i1:, i0:i1] = rows[:, i1 - i0 :].T
    return out


def gram(x: torch.Tensor, block: int = GRAM_BLOCK) -> torch.Tensor:
    """x^T x for x [n, K], with the same bits as `x.T @ x` and up to 45% fewer products.

    X^T X is symmetric, so only the column blocks on and above the diagonal are multiplied. That gives the very
    floats of the full product when the BLAS sums each element in the same order whatever the block shape, and
    the full product is exactly symmetric; both hold for MKL and OpenBLAS here but nothing guarantees them, so the
    first product of each shape, dtype, device and thread count is computed both ways and compared, and the
    blocked form is used for that key only if they are equal (the calibration repeats a few shapes many times).
    """
    K = x.shape[1]
    if K <= block:
        return x.T @ x
    key = (tuple(x.shape), x.dtype, x.device.type, torch.get_num_threads(), block)
    ok = _gram_blocked_ok.get(key)
    if ok is False:
        return x.T @ x
    blocked = _gram_blocked(x, block)
    if ok is None:
        full = x.T @ x
        _gram_blocked_ok[key] = ok = torch.equal(blocked, full)
        if not ok:
            return full
    return blocked


class HessianAccumulator:
    """Running H = (2/N) sum_n x_n x_n^T over the rows of every batch of layer inputs, summed in float64.

    `product_dtype` is the dtype of each batch's X^T X (float32 halves the cost on CPU; the running sum stays
    float64 either way).
    """

    def __init__(self, in_features: int, device: torch.device | str = "cpu",
                 product_dtype: torch.dtype = torch.float64) -> None:
        self.in_features = in_features
        self.product_dtype = product_dtype
        self.sum = torch.zeros(in_features, in_features, dtype=torch.float64, device=device)
        self.count = 0

    def add(self, x: torch.Tensor) -> None:
        """Add a batch of inputs of any leading shape [..., K]."""
        if x.shape[-1] != self.in_features:
            raise QiftError(f"Hessian input has {x.shape[-1]} features, expected {self.in_features}")
        x = x.reshape(-1, self.in_features).to(device=self.sum.device, dtype=self.product_dtype)
        if self.product_dtype == torch.float64:
            self.sum.addmm_(x.T, x)
        else:
            self.sum += gram(x).to(torch.float64)
        self.count += x.shape[0]

    @property
    def hessian(self) -> torch.Tensor:
        """The current H (float64 [K, K]); raises if nothing was added."""
        if self.count == 0:
            raise QiftError("no calibration inputs reached this layer; check the calibration windows")
        return self.sum * (2.0 / self.count)


class _ColumnQuantizer:
    """Nearest-level rounding of one weight column at fixed per-row params, with the level tables precomputed.

    Computes exactly what `levels.quantize` computes for a one-column matrix (same formulas and dtypes), without
    its per-call validation, because GPTQ calls it once per input column.
    """

    def __init__(self, level_set: LevelSet, params: QParams, dtype: torch.dtype, device) -> None:
        self.asym = level_set.kind == "asym"
        self.scale = params.scale[:, 0].to(device)
        self.zero = None if params.zero is None else params.zero[:, 0].to(device)
        self.top = len(level_set.levels) - 1
        self.levels = torch.as_tensor(level_set.levels, dtype=dtype, device=device)
        self.mids = (self.levels[1:] + self.levels[:-1]) / 2
        self.codes = torch.as_tensor(level_set.code_of_level, device=device)

    def __call__(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.asym:
            q = torch.clamp(torch.round(w / self.scale) + self.zero, 0, self.top)
            return q.to(torch.uint8), ((q - self.zero) * self.scale).to(w.dtype)
        idx = torch.bucketize((w / self.scale).contiguous(), self.mids)
        return self.codes[idx], (self.levels[idx] * self.scale).to(w.dtype)


def rtn_quantize(
    W: torch.Tensor,
    level_set: LevelSet,
    scale_method: str = "mse",
    params: QParams | None = None,
) -> GPTQResult:
    """Round every weight to the nearest level at a per-row scale fitted on W (no error feedback)."""
    if params is None:
        params = fit_params(W, level_set, method=scale_method)
    codes, deq = quantize(W, level_set, params)
    return GPTQResult(codes=codes, deq=deq.to(W.dtype), params=params, loss=0.0, damp_used=0.0)


def _upper_cholesky_of_inverse(H: torch.Tensor, damp: float, what: str) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor of (H + damp I)^-1; on failure multiply damp by DAMP_GROWTH and retry, warning."""
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    for attempt in range(DAMP_RETRIES + 1):
        L, info = torch.linalg.cholesky_ex(H + damp * eye)
        if int(info) == 0:
            Hinv = torch.cholesky_inverse(L)
            U, info2 = torch.linalg.cholesky_ex(Hinv, upper=True)
            if int(info2) == 0 and torch.isfinite(U).all():
                return U, damp
        if attempt < DAMP_RETRIES:
            new_damp = damp * DAMP_GROWTH if damp > 0 else 1e-6
            warnings.warn(
                f"GPTQ{what}: Hessian not positive definite with damping {damp:.3g}; retrying with {new_damp:.3g}",
                RuntimeWarning,
                stacklevel=3,
            )
            damp = new_damp
    raise QiftError(
        f"GPTQ{what}: Cholesky of the damped Hessian failed {DAMP_RETRIES + 1} times (last damping {damp:.3g}); "
        "use more calibration windows or a larger --damp"
    )


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run the enclosed operations on one CPU thread (same values): GPTQ's small column operations and the
    float64 Cholesky steps gain nothing from a second thread, and on a shared machine every parallel region waits
    for a descheduled thread (measured: 0.2 s single-threaded against 9 s with two threads, 3072 x 576 weight).
    """
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _gptq_columns(W: torch.Tensor, Hinv: torch.Tensor, quant: _ColumnQuantizer, blocksize: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """GPTQ's column loop on W [N, K] (updated in place) with the upper Cholesky factor Hinv of H^-1.

    Returns the codes [N, K] and the per-row loss. Inside a block the columns are held as rows (the block
    transposed), so every column operation reads and writes contiguous memory; each element sees the same
    operations in the same order as in the column layout, so the values are the same.
    """
    N, K = W.shape
    codes_t = torch.zeros(K, N, dtype=torch.uint8, device=W.device)
    loss = torch.zeros(N, dtype=W.dtype, device=W.device)
    for i1 in range(0, K, blocksize):
        i2 = min(i1 + blocksize, K)
        W1t = W[:, i1:i2].T.contiguous()
        Err1t = torch.zeros_like(W1t)
        Hinv1 = Hinv[i1:i2, i1:i2]
        with _one_thread():
            for i in range(i2 - i1):
                w = W1t[i]
                d = Hinv1[i, i]
                c, q = quant(w)
                codes_t[i1 + i] = c
                diff = w - q
                err = diff / d
                loss += diff**2 / d**2 / 2
                W1t[i:] -= Hinv1[i, i:].unsqueeze(1) * err.unsqueeze(0)
                Err1t[i] = err
        W[:, i2:] -= Err1t.T.contiguous() @ Hinv[i1:i2, i2:]
    return codes_t.T.contiguous(), loss


def gptq_quantize(
    W: torch.Tensor,
    H: torch.Tensor,
    level_set: LevelSet,
    params: QParams | None = None,
    scale_method: str = "mse",
    blocksize: int = 128,
    act_order: bool = False,
    damp: float = 0.01,
    compute_dtype: torch.dtype = torch.float32,
    name: str = "",
) -> GPTQResult:
    """Quantize W [N, K] (rows = output channels) with GPTQ given the input Hessian H [K, K].

    The per-row scale comes from `params` or is fitted on W by `fit_params(scale_method)` before the loop.
    Dead inputs (H_ii = 0) get H_ii = 1 and a zero weight column. Damping is `damp * mean(diag H)`, raised
    tenfold with a warning whenever the Cholesky factorisation fails. With `act_order` the columns are
    processed by decreasing H_ii and the result is permuted back.
    """
    if W.dim() != 2 or H.shape != (W.shape[1], W.shape[1]):
        raise QiftError(f"GPTQ needs W [N,K] and H [K,K]; got W {tuple(W.shape)} and H {tuple(H.shape)}")
    if blocksize < 1:
        raise QiftError(f"GPTQ blocksize must be >= 1, got {blocksize}")
    what = f" ({name})" if name else ""
    out_dtype = W.dtype
    N, K = W.shape
    W = W.to(compute_dtype).clone()
    if params is None:
        params = fit_params(W, level_set, method=scale_method)

    H = H.to(device=W.device, dtype=torch.float64).clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0

    perm = None
    if act_order:
        perm = torch.argsort(torch.diag(H), descending=True)
        W = W[:, perm]
        H = H[perm][:, perm]

    mean_diag = float(torch.diag(H).mean())
    if not math.isfinite(mean_diag):
        raise QiftError(f"GPTQ{what}: the Hessian has non-finite entries; check the calibration activations")
    with _one_thread():
        U, damp_used = _upper_cholesky_of_inverse(H, damp * mean_diag, what)
    Hinv = U.to(compute_dtype)

    if torch.any(params.scale <= 0):
        raise QiftError(f"GPTQ{what}: scales must be positive")
    quant = _ColumnQuantizer(level_set, params, compute_dtype, W.device)
    codes, loss = _gptq_columns(W, Hinv, quant, blocksize)
    if perm is not None:
        codes = codes[:, torch.argsort(perm)]
    deq = dequantize(codes, level_set, params).to(out_dtype)
    return GPTQResult(codes=codes, deq=deq, params=params, loss=float(loss.sum()), damp_used=damp_used)


def relative_output_error(W: torch.Tensor, Wq: torch.Tensor, H: torch.Tensor) -> float:
    """||W X - Wq X||_F / ||W X||_F over the calibration inputs summarised by H = (2/N) X X^T."""
    H = H.to(torch.float64)
    D = (W - Wq).to(torch.float64)
    W64 = W.to(torch.float64)
    num = torch.einsum("nk,kl,nl->", D, H, D)
    den = torch.einsum("nk,kl,nl->", W64, H, W64)
    return float(torch.sqrt(num.clamp_min(0) / den.clamp_min(1e-300)))
