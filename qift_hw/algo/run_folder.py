"""Run folders: the resumable state of one quantization run.

A run folder holds `config.json` (what the run depends on: `run_identity`) and one `layer_NNN.safetensors` per
finished decoder layer (its quantized linears, stored as `checkpoint.linear_tensors`, and per-linear records),
written atomically; a rerun with the same folder and identity loads the finished layers instead of redoing them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from qift_hw.algo.checkpoint import FORMAT, _write, linear_tensors, read_linears, read_metadata
from qift_hw.algo.config import QuantConfig
from qift_hw.algo.quantized import QuantizedLinear
from qift_hw.core.errors import QiftError
from qift_hw.core.io import write_json


def run_identity(cfg: QuantConfig, model_id: str) -> dict:
    """What a run folder's results depend on: the model, the checkpoint format and the config's identity."""
    return {"model": model_id, "checkpoint_format": FORMAT, **cfg.identity()}


def run_key(cfg: QuantConfig, model_id: str = "") -> str:
    """Short stable hash of `run_identity`, for run-folder names."""
    text = json.dumps(run_identity(cfg, model_id), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def open_run_dir(run_dir: Path, cfg: QuantConfig, model_id: str) -> Path:
    """Create `run_dir` for this run, or check that the run it holds is this one (QiftError otherwise)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = run_dir / "config.json"
    ident = json.loads(json.dumps(run_identity(cfg, model_id)))
    if not cfg_path.is_file():
        write_json(cfg_path, ident)
        return run_dir
    old = json.loads(cfg_path.read_text())
    if old.get("checkpoint_format") != FORMAT:
        raise QiftError(f"run folder {run_dir} was written in an older layer-checkpoint format "
                        f"({old.get('checkpoint_format', 'before ' + FORMAT)}); delete it or use another --run-dir")
    if old != ident:
        diff = sorted(k for k in set(old) | set(ident) if old.get(k) != ident.get(k))
        raise QiftError(f"run folder {run_dir} holds a run with a different configuration ({', '.join(diff)}); "
                        "use another --run-dir or delete it")
    return run_dir


def layer_path(run_dir: Path, index: int) -> Path:
    return Path(run_dir) / f"layer_{index:03d}.safetensors"


def save_layer(run_dir: Path, index: int, weights: dict[str, QuantizedLinear], records: list[dict]) -> Path:
    """Checkpoint one finished decoder layer (its quantized linears and their records) into a run folder."""
    tensors, linears = linear_tensors(weights)
    return _write(layer_path(run_dir, index), tensors, {"linears": linears, "records": records})


def load_layer(run_dir: Path, index: int, device: str | torch.device = "cpu"
               ) -> tuple[dict[str, QuantizedLinear], list[dict]] | None:
    """A finished layer's quantized linears and records from a run folder (None if it was not checkpointed)."""
    path = layer_path(run_dir, index)
    if not path.is_file():
        return None
    try:
        meta = read_metadata(path)
        return read_linears(path, meta["linears"], device), meta["records"]
    except Exception as exc:
        raise QiftError(f"run checkpoint {path} is unreadable ({exc}); delete it to redo that layer") from exc
