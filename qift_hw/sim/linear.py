"""A quantized linear layer executed in the integer model: online Hadamard, INT4 quantizer, W2 x INT4, dequantize.

    x (FP) --[Hadamard unit, if the rotation put one here]--> q (INT4), s_a (FP32 per token)
      --[PE array: sign/shift/add, acc_bits saturating]--> acc (int) --[formats.dequantize_acc]--> y (FP32)

Without an online Hadamard the quantizer is formats.quantize_act. ``hadamard="float"`` replaces the Hadamard
unit by the floating-point transform the PyTorch pipeline uses (hadamard_transform, normalize=True), so that the
INT4 codes are the pipeline's own and only the integer product and the dequantization differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from qift_hw.core import formats
from qift_hw.core.errors import QiftError
from qift_hw.core.hadamard import hadamard_transform
from qift_hw.core.levels import LevelSet
from qift_hw.sim.hadamard_unit import hadamard_quantize
from qift_hw.sim.matmul import PreparedWeights, matmul, prepare_weights

HADAMARD_MODES = ("unit", "float")


@dataclass
class SimLinear:
    """One quantized linear for the integer model: prepared codes, FP32 per-channel scale, options."""

    weights: PreparedWeights
    w_scale: torch.Tensor
    online_hadamard: bool = False
    bias: torch.Tensor | None = None
    a_bits: int = formats.ACT_BITS
    a_clip: float = formats.ACT_CLIP
    acc_bits: int = formats.ACC_BITS
    overflow: str = "saturate"
    hadamard: str = "unit"

    @classmethod
    def from_codes(cls, codes: torch.Tensor, w_scale: torch.Tensor, level_set: str | LevelSet, **kw) -> SimLinear:
        """Build from uint8 codes [N, K] and per-row scales ([N] or [N, 1])."""
        pw = prepare_weights(codes, level_set)
        scale = torch.as_tensor(w_scale).reshape(-1).to(formats.SCALE_DTYPE)
        if scale.numel() != pw.N:
            raise QiftError(f"weight scale has {scale.numel()} values for {pw.N} output channels")
        return cls(pw, scale, **kw)

    def quantize_input(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """FP input [T, K] -> (INT4 values int8 [T, K], FP32 scale [T, 1]) as the hardware front end makes them."""
        if self.hadamard not in HADAMARD_MODES:
            raise QiftError(f"unknown hadamard mode {self.hadamard!r}; use one of {', '.join(HADAMARD_MODES)}")
        if self.online_hadamard and self.hadamard == "unit":
            return hadamard_quantize(x, self.a_bits, self.a_clip)
        if self.online_hadamard:
            x = hadamard_transform(x.to(torch.float32), normalize=True)
        return formats.quantize_act(x, self.a_bits, self.a_clip)

    def accumulate(self, q: torch.Tensor) -> np.ndarray:
        """Integer accumulators int64 [T, N] of INT4 inputs."""
        return matmul(q.numpy(), self.weights, self.weights.level_set, self.acc_bits, self.overflow)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """y = layer(x) over the last dim, FP32 arithmetic, returned in x's dtype."""
        if x.shape[-1] != self.weights.K:
            raise QiftError(f"input has {x.shape[-1]} features, the layer expects {self.weights.K}")
        lead = x.shape[:-1]
        xf = x.detach().reshape(-1, x.shape[-1]).to("cpu", torch.float32)
        q, s_a = self.quantize_input(xf)
        acc = torch.from_numpy(self.accumulate(q))
        y = formats.dequantize_acc(acc, s_a, self.w_scale, self.weights.level_set, self.bias)
        return y.reshape(*lead, -1).to(device=x.device, dtype=x.dtype)
