"""Real tiles from SmolLM2 for the RTL benches: INT4 activations, W2 GPTQ codes, Hadamard-unit inputs.

The tiles come from the rotated model (QuaRot rotation, as the Qift pipeline runs it): the inputs of one layer's
q_proj on a calibration window are quantized per token to INT4 (``formats.quantize_act``) and its weight is
quantized to PoT-MNZ codes by GPTQ with the Hessian of those same inputs (or the codes are read from a qift-1
checkpoint). The same is done for that layer's down_proj, whose input the pipeline passes through the online
Hadamard (order 1536) first: its Hessian is that of the transformed inputs the weight sees, and its INT4
activations are what the integer path feeds the kernel (``sim_backend.unit_quantize``: the Hadamard unit, then
the INT4 quantizer). The Hadamard inputs are q_proj's query heads (head_dim wide, the size of the online Q/K
Hadamard) in the unit's block floating-point input format. The file is small (the whole q_proj's codes packed
four per byte) and lives in ``sim/data/``, so the benches run real data without loading the model. Torch's
thread count is the caller's choice.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from qift_hw.core import formats
from qift_hw.core.errors import QiftError
from qift_hw.core.io import atomic_path

KEEP_CODE_ROWS = 64
"""q_proj output channels kept unpacked in ``codes`` (the benches' small slice)."""
KEEP_DOWN_ROWS = 64
"""down_proj output channels kept in ``down_codes`` (each a 1536-long row)."""
ROTATION_SEED = 0
HAD_TOKENS = 4
"""Tokens whose query heads become Hadamard-unit inputs."""


def export_tiles(path: Path, layer: int = 3, tokens: int = 16, checkpoint: Path | None = None,
                 calib_windows: int = 2, seqlen: int = 256, level_set: str = formats.HW_LEVEL_SET) -> Path:
    """Write ``path`` (.npz) with acts int8 [tokens, K], codes uint8 [64, K] (q_proj's first channels),
    qproj_packed uint8 [N, K/4] and qproj_shape (the whole q_proj, ``levels.pack_codes``), down_acts int8
    [tokens, K_down], down_codes uint8 [64, K_down], had_in int32 [vectors, head_dim] and a ``source`` string
    describing where they come from."""
    import torch

    from qift_hw.algo.capture import capture_linear_inputs, decoder_layers
    from qift_hw.algo.data import calib_windows as get_calib
    from qift_hw.algo.gptq import HessianAccumulator, gptq_quantize
    from qift_hw.algo.models import head_dim, load_model
    from qift_hw.bridge.sim_backend import unit_quantize
    from qift_hw.core.levels import get_level_set, pack_codes

    ls = get_level_set(level_set)
    names = {p: f"model.layers.{layer}.{p}" for p in ("self_attn.q_proj", "mlp.down_proj")}
    given: dict = {}
    if checkpoint is not None:
        from qift_hw.algo.checkpoint import read_quantized

        model, meta, weights = read_quantized(checkpoint)
        for name in names.values():
            if name not in weights:
                raise QiftError(f"{checkpoint} has no quantized {name}; pick a --layer that was quantized")
            given[name] = weights[name].codes.numpy().astype(np.uint8)
        ls = weights[names["self_attn.q_proj"]].level_set
        _, tok = load_model(meta.get("model_id") or None)
        source = f"{checkpoint.name}: {names['self_attn.q_proj']}, {names['mlp.down_proj']} ({ls.name})"
    else:
        from qift_hw.algo.rotation import rotate_model

        model, tok = load_model()
        rotate_model(model, seed=ROTATION_SEED)
        source = (f"GPTQ {ls.name} of rotated SmolLM2-135M {names['self_attn.q_proj']} and {names['mlp.down_proj']}, "
                  f"pydoc calib {calib_windows}x{seqlen} tokens")
    layers = decoder_layers(model)
    if not 0 <= layer < len(layers):
        raise QiftError(f"layer must be 0..{len(layers) - 1}, got {layer}")
    windows = get_calib(tok, seqlen=seqlen, n=calib_windows)

    def gptq(lin, X: torch.Tensor, name: str) -> np.ndarray:
        if name in given:
            return given[name]
        acc = HessianAccumulator(X.shape[1], product_dtype=torch.float64)
        acc.add(X)
        return gptq_quantize(lin.weight.detach().float(), acc.hessian.float(), ls).codes.numpy().astype(np.uint8)

    q_proj = layers[layer].self_attn.q_proj
    X = capture_linear_inputs(model, q_proj, windows).to(torch.float64)
    codes = gptq(q_proj, X, names["self_attn.q_proj"])
    acts, _ = formats.quantize_act(X[:tokens].float())
    q_heads = (X[:HAD_TOKENS].float() @ q_proj.weight.detach().float().T).reshape(-1, head_dim(model))
    mant, _ = formats.had_input_fixed(q_heads)

    down = layers[layer].mlp.down_proj
    raw: list[torch.Tensor] = []  # down_proj's input before its online Hadamard, as the integer path receives it
    hook = down.register_forward_pre_hook(lambda m, a: raw.append(a[0].detach().reshape(-1, m.in_features).clone()))
    try:
        Xd = capture_linear_inputs(model, down, windows).to(torch.float64)
    finally:
        hook.remove()
    down_codes = gptq(down, Xd, names["mlp.down_proj"])
    down_in = torch.cat(raw)[:tokens].to(formats.SCALE_DTYPE)
    if getattr(down, "online_hadamard", False):
        down_acts, _ = unit_quantize(down_in, formats.ACT_BITS, formats.ACT_CLIP)
    else:
        down_acts, _ = formats.quantize_act(down_in)
    meta = {"layer": layer, "tokens": tokens, "level_set": ls.name, "qproj_rows_in_codes": KEEP_CODE_ROWS,
            "down_rows": KEEP_DOWN_ROWS, "down_online_hadamard": bool(getattr(down, "online_hadamard", False)),
            "down_acts": "sim_backend.unit_quantize (Hadamard unit + INT4)" if getattr(down, "online_hadamard", False)
            else "formats.quantize_act"}
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, acts=acts.numpy().astype(np.int8), codes=codes[:KEEP_CODE_ROWS],
                            qproj_packed=pack_codes(np.ascontiguousarray(codes)).numpy(),
                            qproj_shape=np.array(codes.shape, dtype=np.int64),
                            down_acts=down_acts.numpy().astype(np.int8), down_codes=down_codes[:KEEP_DOWN_ROWS],
                            had_in=mant.numpy().astype(np.int32), source=np.array(source),
                            meta=np.array(json.dumps(meta)))
    return Path(path)
