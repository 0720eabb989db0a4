"""Turn a float model into the one quantization calibrates and runs: QuaRot rotation, then the quantized forward."""

from __future__ import annotations

from torch import nn

from qift_hw.algo.config import QuantConfig
from qift_hw.algo.qmodel import quantize_model_forward
from qift_hw.algo.rotation import rotate_model


def prepare_model(model: nn.Module, cfg: QuantConfig) -> dict | None:
    """Rotate (if configured) and switch on the activation/KV quantizers; returns the rotation record."""
    rot = rotate_model(model, seed=cfg.rotation_seed).to_dict() if cfg.rotate else None
    quantize_model_forward(model, a_bits=cfg.a_bits, kv_bits=cfg.kv_bits, a_clip=cfg.a_clip, kv_clip=cfg.kv_clip)
    return rot
