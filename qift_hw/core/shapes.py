"""Layer shapes of LLaMA-family decoders: one registry of built-in names, or a Hugging Face config.json (no weights
loaded). The cycle model, the estimate and the GPU benchmarks all read shapes from here."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from qift_hw.core.errors import QiftError


@dataclass(frozen=True)
class ModelShape:
    """Decoder dimensions of a LLaMA-style model (tied: the LM head shares the embedding)."""

    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool = False

    def linears(self) -> list[tuple[str, int, int, bool]]:
        """(name, K = in_features, N = out_features, online Hadamard on the input) of one decoder layer."""
        h, i, q, kv = self.hidden, self.intermediate, self.heads * self.head_dim, self.kv_heads * self.head_dim
        return [("q_proj", h, q, False), ("k_proj", h, kv, False), ("v_proj", h, kv, False),
                ("o_proj", q, h, False), ("gate_proj", h, i, False), ("up_proj", h, i, False),
                ("down_proj", i, h, True)]

    def weight_shapes(self) -> dict[str, tuple[int, int]]:
        """(out_features N, in_features K) of each linear in a layer, plus the LM head."""
        out = {name: (n, k) for name, k, n, _ in self.linears()}
        out["lm_head"] = (self.vocab, self.hidden)
        return out

    def unique_linears(self) -> dict[tuple[int, int], list[str]]:
        """Distinct (N, K) weight shapes and the layer names that share each."""
        out: dict[tuple[int, int], list[str]] = {}
        for name, nk in self.weight_shapes().items():
            out.setdefault(nk, []).append(name)
        return out

    def layer_params(self) -> int:
        """Weights of one decoder layer's linears."""
        return sum(n * k for _, k, n, _ in self.linears())


MODELS = {
    "smollm2": ModelShape("smollm2-135m", 576, 1536, 30, 9, 3, 64, 49152, tied=True),
    "llama2-7b": ModelShape("llama2-7b", 4096, 11008, 32, 32, 32, 128, 32000),
    "llama3-8b": ModelShape("llama3-8b", 4096, 14336, 32, 32, 8, 128, 128256),
}
"""Built-in shapes by name (the names `--model` takes); each shape's own name is accepted too."""


def load_model_shape(name_or_path: str | Path) -> ModelShape:
    """A built-in shape (see ``MODELS``) or the shape in a Hugging Face config.json (file or folder)."""
    key = str(name_or_path).strip().lower()
    for k, shape in MODELS.items():
        if key in (k, shape.name):
            return shape
    p = Path(name_or_path)
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise QiftError(f"unknown model {name_or_path!r}; use one of {', '.join(MODELS)} or a path to a config.json")
    try:
        cfg = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
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
            tied=bool(cfg.get("tie_word_embeddings", False)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise QiftError(f"{p} lacks a usable {exc.args[0]!r}; is it a LLaMA-family config.json?") from None
