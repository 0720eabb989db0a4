"""Packed W2 weights (2-bit codes, four per byte, plus one scale per output row) and the PyTorch W2 matmul.

The PyTorch path is the CPU implementation and the fallback wherever Triton or CUDA is missing: it unpacks a
block of rows, looks the codes up in the level table and multiplies, so memory stays bounded for big layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qift_hw.core.errors import QiftError
from qift_hw.core.formats import HW_LEVEL_SET
from qift_hw.core.levels import LevelSet, fit_params, get_level_set, pack_codes, quantize, unpack_codes


@dataclass(frozen=True)
class PackedW2:
    """A linear layer's weight as 2-bit codes: ``packed`` uint8 [N, K/4], ``scale`` [N], level per code ``table``.

    Weight ``W[n, k] = scale[n] * table[code(n, k)]`` with code k of a row in bits 2(k%4)..2(k%4)+1 of byte k//4.
    """

    packed: torch.Tensor
    scale: torch.Tensor
    table: torch.Tensor
    K: int
    level_set: str

    @property
    def N(self) -> int:
        return int(self.packed.shape[0])

    @property
    def device(self) -> torch.device:
        return self.packed.device

    @property
    def nbytes(self) -> int:
        """Bytes a matmul must read for the weight: packed codes plus scales."""
        return self.packed.numel() + self.scale.numel() * self.scale.element_size()

    def to(self, device: torch.device | str) -> "PackedW2":
        return PackedW2(self.packed.to(device), self.scale.to(device), self.table.to(device), self.K, self.level_set)

    def words(self) -> torch.Tensor:
        """The codes as int32 words [N, K/16], 16 codes per word (code i of a word in bits 2i..2i+1)."""
        if self.K % 16:
            raise QiftError(f"in_features K={self.K} must be a multiple of 16 for the word-wise kernels")
        return self.packed.contiguous().view(torch.int32)

    def codes(self) -> torch.Tensor:
        """Unpacked codes, uint8 [N, K]."""
        return unpack_codes(self.packed, self.K)


def _table_of(ls: LevelSet) -> torch.Tensor:
    if ls.bits != 2:
        raise QiftError(f"the W2 kernel needs a 2-bit level set, {ls.name!r} has {ls.bits} bits")
    if ls.kind == "asym":
        raise QiftError("the W2 kernel takes level sets without a zero point; 'asym' is not supported, use e.g. pot_mnz")
    return torch.as_tensor(ls.level_of_code, dtype=torch.float32)


def from_codes(codes: torch.Tensor, scale: torch.Tensor, level_set: str | LevelSet = HW_LEVEL_SET,
               scale_dtype: torch.dtype = torch.float16) -> PackedW2:
    """Pack uint8 codes [N, K] (values 0..3) and per-row scales [N] or [N, 1]."""
    ls = get_level_set(level_set)
    table = _table_of(ls)
    if codes.dim() != 2:
        raise QiftError(f"codes must be 2-D [N, K], got shape {tuple(codes.shape)}")
    N, K = codes.shape
    if K % 4:
        raise QiftError(f"in_features K={K} must be a multiple of 4 to pack four 2-bit codes per byte")
    scale = torch.as_tensor(scale).reshape(-1)
    if scale.numel() != N:
        raise QiftError(f"need one scale per output row ({N}), got {scale.numel()}")
    return PackedW2(pack_codes(codes.to(torch.uint8)), scale.to(scale_dtype).contiguous(),
                    table.to(codes.device), K, ls.name)


def pack_weight(W: torch.Tensor, level_set: str | LevelSet = HW_LEVEL_SET, method: str = "mse",
                scale_dtype: torch.dtype = torch.float16) -> PackedW2:
    """Quantize a float weight [N, K] with per-row scales (``levels.fit_params``) and pack it."""
    ls = get_level_set(level_set)
    _table_of(ls)
    Wf = W.detach().float()
    params = fit_params(Wf, ls, method)
    codes, _ = quantize(Wf, ls, params)
    return from_codes(codes, params.scale.reshape(-1), ls, scale_dtype)


def random_packed(N: int, K: int, level_set: str | LevelSet = HW_LEVEL_SET, device: str | torch.device = "cpu",
                  seed: int = 0, scale_dtype: torch.dtype = torch.float16) -> PackedW2:
    """Uniformly random codes (drawn as random bytes, on ``device``) and scales, for benchmarks and tests."""
    if K % 4:
        raise QiftError(f"in_features K={K} must be a multiple of 4")
    ls = get_level_set(level_set)
    g = torch.Generator(device=device).manual_seed(seed)
    packed = torch.randint(0, 256, (N, K // 4), generator=g, dtype=torch.uint8, device=device)
    scale = torch.rand(N, generator=g, device=device) * 0.02 + 0.005
    return PackedW2(packed, scale.to(scale_dtype), _table_of(ls).to(device), K, ls.name)


def dequantize_w2(pw: PackedW2, dtype: torch.dtype = torch.float32, rows: slice | None = None) -> torch.Tensor:
    """The float weight [N, K] (or a block of its rows) that the packed codes stand for."""
    rows = rows or slice(0, pw.N)
    codes = unpack_codes(pw.packed[rows], pw.K).long()
    lv = pw.table.to(pw.device, torch.float32)[codes]
    return (lv * pw.scale[rows].float()[:, None]).to(dtype)


def w2_matmul_torch(x: torch.Tensor, pw: PackedW2, block_rows: int = 4096) -> torch.Tensor:
    """y = x @ W^T for packed W, in plain PyTorch: float32 on the CPU, x's dtype on CUDA. Output in x's dtype."""
    if x.shape[-1] != pw.K:
        raise QiftError(f"activation has {x.shape[-1]} features but the weight expects K={pw.K}")
    compute = torch.float32 if x.device.type == "cpu" else x.dtype
    x2 = x.reshape(-1, pw.K).to(compute)
    out = torch.empty(x2.shape[0], pw.N, dtype=compute, device=x.device)
    for r0 in range(0, pw.N, block_rows):
        sl = slice(r0, min(r0 + block_rows, pw.N))
        codes = unpack_codes(pw.packed[sl], pw.K).long()
        lv = pw.table.to(x.device, compute)[codes]
        out[:, sl] = (x2 @ lv.T) * pw.scale[sl].to(compute)
    return out.to(x.dtype).reshape(*x.shape[:-1], pw.N)
