"""Write a random-weight LLaMA checkpoint folder with LLaMA-2-7B's widths, one safetensors shard per layer.

Widths of LLaMA-2-7B (hidden 4096, intermediate 11008, 32 heads, vocabulary 32000; Touvron et al. 2023,
"Llama 2", and the model's published config.json); ``--layers`` decoder layers (32 as LLaMA-2-7B). Weights are
N(0, 1/fan_in), norm weights U(0.5, 1.5), seeded per tensor, stored in ``--dtype`` (float16 by default, half the
disk of float32). The model is never held: each shard is generated, written and dropped, so this runs in about
one layer's memory. The folder is what `save_pretrained` writes (config.json, model-*.safetensors and
model.safetensors.index.json), so `transformers` and `qift_hw.algo.streaming` read it.

    .venv/bin/python sw/make_big_random_llama.py runs/big_random --layers 32
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

WIDTHS = dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
              vocab_size=32000)


def config(layers: int, dtype: str) -> dict:
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": layers,
            "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu",
            "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False, "dtype": dtype, **WIDTHS}


def layer_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    h, i = cfg["hidden_size"], cfg["intermediate_size"]
    return {"self_attn.q_proj.weight": (h, h), "self_attn.k_proj.weight": (h, h), "self_attn.v_proj.weight": (h, h),
            "self_attn.o_proj.weight": (h, h), "mlp.gate_proj.weight": (i, h), "mlp.up_proj.weight": (i, h),
            "mlp.down_proj.weight": (h, i), "input_layernorm.weight": (h,), "post_attention_layernorm.weight": (h,)}


def random_tensor(shape: tuple[int, ...], seed: int, dtype: torch.dtype) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if len(shape) == 1:
        return (0.5 + torch.rand(shape, generator=gen)).to(dtype)
    return (torch.randn(shape, generator=gen) / shape[-1] ** 0.5).to(dtype)


def write(folder: Path, layers: int, dtype: torch.dtype, seed: int = 0) -> int:
    """Write the checkpoint; returns the bytes of its shards."""
    cfg = config(layers, str(dtype).removeprefix("torch."))
    h, v = cfg["hidden_size"], cfg["vocab_size"]
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    shards: list[dict[str, tuple[int, ...]]] = [
        {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,), "lm_head.weight": (v, h)},
        *({f"model.layers.{i}.{k}": s for k, s in layer_shapes(cfg).items()} for i in range(layers))]
    weight_map, total, n_tensor = {}, 0, 0
    for j, shapes in enumerate(shards):
        name = f"model-{j + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for key, shape in shapes.items():
            tensors[key] = random_tensor(shape, seed * 1_000_003 + n_tensor, dtype)
            n_tensor += 1
            weight_map[key] = name
        save_file(tensors, str(folder / name), metadata={"format": "pt"})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        del tensors
        print(f"{name} ({j}/{len(shards) - 1})", flush=True)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default="float16")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    total = write(a.folder, a.layers, getattr(torch, a.dtype), a.seed)
    print(f"wrote {a.folder}: {a.layers} layers, {total / 1e9:.2f} GB of {a.dtype} "
          f"({total / torch.tensor([], dtype=getattr(torch, a.dtype)).element_size() * 4 / 1e9:.2f} GB in float32)")


if __name__ == "__main__":
    main()
