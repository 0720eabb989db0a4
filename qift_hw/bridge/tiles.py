"""Small real tiles from SmolLM2 for the RTL benches: INT4 activations, W2 GPTQ codes, Hadamard-unit inputs.

The tiles come from the rotated model (QuaRot rotation, as the Qift pipeline runs it): the inputs of one layer's
q_proj on a calibration window are quantized per token to INT4 (``formats.quantize_act``) and its weight is
quantized to PoT-MNZ codes by GPTQ with the Hessian of those same inputs (or the codes are read from a qift-1
checkpoint). The Hadamard inputs are that layer's query heads (head_dim wide, the size of the online Q/K
Hadamard) in the unit's block floating-point input format. The file is small and lives in ``sim/data/``, so the
benches run real data without loading the model. Torch's thread count is the caller's choice.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from qift_hw.core import formats
from qift_hw.core.errors import QiftError
from qift_hw.core.io import atomic_path

KEEP_CODE_ROWS = 64
ROTATION_SEED = 0
HAD_TOKENS = 4
"""Tokens whose query heads become Hadamard-unit inputs."""


def export_tiles(path: Path, layer: int = 3, tokens: int = 16, checkpoint: Path | None = None,
                 calib_windows: int = 2, seqlen: int = 256, level_set: str = formats.HW_LEVEL_SET) -> Path:
    """Write ``path`` (.npz) with acts int8 [tokens, K], codes uint8 [64, K], had_in int32 [vectors, head_dim]
    and a ``source`` string describing where they come from."""
    import torch

    from qift_hw.algo.capture import capture_linear_inputs, decoder_layers
    from qift_hw.algo.data import calib_windows as get_calib
    from qift_hw.algo.gptq import HessianAccumulator, gptq_quantize
    from qift_hw.algo.models import head_dim, load_model
    from qift_hw.core.levels import get_level_set

    ls = get_level_set(level_set)
    name = f"model.layers.{layer}.self_attn.q_proj"
    if checkpoint is not None:
        from qift_hw.algo.checkpoint import load_quantized, quantized_weights

        model, meta = load_quantized(checkpoint)
        weights = quantized_weights(checkpoint)
        if name not in weights:
            raise QiftError(f"{checkpoint} has no quantized {name}; pick a --layer that was quantized")
        ls = weights[name].level_set
        codes = weights[name].codes.numpy().astype(np.uint8)
        _, tok = load_model(meta.get("model_id") or None)
        source = f"{checkpoint.name}: {name} ({ls.name})"
    else:
        from qift_hw.algo.rotation import rotate_model

        model, tok = load_model()
        rotate_model(model, seed=ROTATION_SEED)
        codes = None
        source = f"GPTQ {ls.name} of rotated SmolLM2-135M {name}, pydoc calib {calib_windows}x{seqlen} tokens"
    layers = decoder_layers(model)
    if not 0 <= layer < len(layers):
        raise QiftError(f"layer must be 0..{len(layers) - 1}, got {layer}")
    q_proj = layers[layer].self_attn.q_proj
    X = capture_linear_inputs(model, q_proj, get_calib(tok, seqlen=seqlen, n=calib_windows)).to(torch.float64)
    if codes is None:
        acc = HessianAccumulator(X.shape[1], product_dtype=torch.float64)
        acc.add(X)
        codes = gptq_quantize(q_proj.weight.detach().float(), acc.hessian.float(), ls).codes.numpy().astype(np.uint8)
    acts, _ = formats.quantize_act(X[:tokens].float())
    q_heads = (X[:HAD_TOKENS].float() @ q_proj.weight.detach().float().T).reshape(-1, head_dim(model))
    mant, _ = formats.had_input_fixed(q_heads)
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, acts=acts.numpy().astype(np.int8), codes=codes[:KEEP_CODE_ROWS],
                            had_in=mant.numpy().astype(np.int32), source=np.array(source),
                            meta=np.array(json.dumps({"layer": layer, "tokens": tokens, "level_set": ls.name})))
    return Path(path)
