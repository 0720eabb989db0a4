"""Linear-layer shapes of the models the GPU benchmarks use (random weights of these real shapes)."""

from __future__ import annotations

from dataclasses import dataclass

from qift_hw.errors import QiftError


@dataclass(frozen=True)
class ModelShape:
    """Decoder dimensions of a LLaMA-style model."""

    name: str
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    layers: int
    vocab: int
    tied: bool = False

    def linears(self) -> dict[str, tuple[int, int]]:
        """(out_features N, in_features K) of each linear in a layer, plus the LM head."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return {"q_proj": (q, self.hidden), "k_proj": (kv, self.hidden), "v_proj": (kv, self.hidden),
                "o_proj": (self.hidden, q), "gate_proj": (self.intermediate, self.hidden),
                "up_proj": (self.intermediate, self.hidden), "down_proj": (self.hidden, self.intermediate),
                "lm_head": (self.vocab, self.hidden)}

    def unique_linears(self) -> dict[tuple[int, int], list[str]]:
        """Distinct (N, K) shapes and the layer names that share each."""
        out: dict[tuple[int, int], list[str]] = {}
        for name, nk in self.linears().items():
            out.setdefault(nk, []).append(name)
        return out

    def layer_params(self) -> int:
        return sum(n * k for name, (n, k) in self.linears().items() if name != "lm_head")


MODELS = {
    "smollm2-135m": ModelShape("smollm2-135m", 576, 1536, 9, 3, 64, 30, 49152, tied=True),
    "llama2-7b": ModelShape("llama2-7b", 4096, 11008, 32, 32, 128, 32, 32000),
    "llama3-8b": ModelShape("llama3-8b", 4096, 14336, 32, 8, 128, 32, 128256),
}


def get_model_shape(name: str) -> ModelShape:
    """Look up a model's shape by name (see ``MODELS``)."""
    if name not in MODELS:
        raise QiftError(f"unknown model shape {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name]
