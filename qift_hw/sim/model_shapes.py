"""Layer shapes of LLaMA-family decoders, from a built-in name or a Hugging Face config.json (no weights loaded)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from qift_hw.errors import QiftError


@dataclass(frozen=True)
class ModelShape:
    """What the cycle model needs to know about a decoder."""

    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    def linears(self) -> list[tuple[str, int, int, bool]]:
        """(name, K = in_features, N = out_features, online Hadamard on the input) of one decoder layer."""
        h, i, q, kv = self.hidden, self.intermediate, self.heads * self.head_dim, self.kv_heads * self.head_dim
        return [("q_proj", h, q, False), ("k_proj", h, kv, False), ("v_proj", h, kv, False),
                ("o_proj", q, h, False), ("gate_proj", h, i, False), ("up_proj", h, i, False),
                ("down_proj", i, h, True)]


BUILTIN = {
    "smollm2": ModelShape("smollm2-135m", 576, 1536, 30, 9, 3, 64, 49152),
    "llama2-7b": ModelShape("llama-2-7b", 4096, 11008, 32, 32, 32, 128, 32000),
    "llama3-8b": ModelShape("llama-3-8b", 4096, 14336, 32, 32, 8, 128, 128256),
}


def load_model_shape(name_or_path: str) -> ModelShape:
    """A built-in shape (smollm2, llama2-7b, llama3-8b) or the shape in a Hugging Face config.json (file or folder)."""
    key = str(name_or_path).strip().lower()
    if key in BUILTIN:
        return BUILTIN[key]
    p = Path(name_or_path)
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise QiftError(f"unknown model {name_or_path!r}; use one of {', '.join(BUILTIN)} or a path to a config.json")
    try:
        cfg = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise QiftError(f"cannot read {p} as JSON: {exc}") from None
    cfg = cfg.get("text_config", cfg)
    try:
        heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
        return ModelShape(
            name=str(cfg.get("_name_or_path") or cfg.get("model_type") or p.parent.name),
            hidden=hidden,
            intermediate=int(cfg["intermediate_size"]),
            layers=int(cfg["num_hidden_layers"]),
            heads=heads,
            kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or hidden // heads),
            vocab=int(cfg["vocab_size"]),
        )
    except KeyError as exc:
        raise QiftError(f"{p} lacks {exc.args[0]!r}; is it a LLaMA-family config.json?") from None
