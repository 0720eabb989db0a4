"""Run folders: the resumable state of one quantization run.

A run folder holds `config.json` (what the run depends on: `run_identity`) and one `layer_NNN.safetensors` per
finished decoder layer (its quantized linears, stored as `checkpoint.linear_tensors`, and per-linear records),
written atomically; a rerun with the same folder and identity loads the finished layers instead of redoing them.

The identity names the inputs by content (`run_inputs`): a digest of the float model's weights, of the
calibration text (or the calibration token windows given), the code version and the quantization config. A model
or text changed in place under the same path therefore gets another folder (`run_key`), and a folder given
explicitly that holds another run is refused, so finished layers of one run are never mixed into another.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch
from torch import nn

from qift_hw.algo.checkpoint import FORMAT, _write, content_digest, linear_tensors, read_linears, read_metadata
from qift_hw.algo.config import QuantConfig
from qift_hw.algo.data import text_digest
from qift_hw.algo.quantized import QuantizedLinear
from qift_hw.core.errors import QiftError
from qift_hw.core.io import LOCK_NAME, write_json

CONFIG_NAME = "config.json"


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of a model's state dict (names, dtypes, shapes and bytes of every tensor, in name order): the
    checkpoints' `content_digest` with no metadata."""
    return content_digest(model.state_dict(), {})


def code_version() -> str:
    """The package version and the layer-checkpoint format: a run folder is only resumed by the code that wrote it."""
    from qift_hw import __version__

    return f"qift_hw {__version__}, {FORMAT}"


def run_inputs(weights: str, model_id: str, cfg: QuantConfig, calib: torch.Tensor | None = None) -> dict:
    """What a run computes from, by content: the float model (`weights_digest` before rotation) and the
    calibration text, or the calibration windows when they are given instead of the text."""
    if calib is not None:
        text = "windows-sha256:" + hashlib.sha256(calib.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
    else:
        text = text_digest(cfg.calib_source)
    return {"model": model_id, "weights": weights, "text": text, "code": code_version()}


def run_identity(cfg: QuantConfig, inputs: dict) -> dict:
    """What a run folder's results depend on: the inputs' contents, the checkpoint format, the config's identity
    and the numerics: the batch size (each batch's X^T X is one product, so batching changes the Hessian's last
    bits, and GPTQ can turn those into other codes) and the device type."""
    numerics = {"batch_size": cfg.batch_size, "device": torch.device(cfg.device).type}
    return json.loads(json.dumps({**inputs, "checkpoint_format": FORMAT, **cfg.identity(), "numerics": numerics}))


def run_key(cfg: QuantConfig, inputs: dict) -> str:
    """Short stable hash of `run_identity`, for run-folder names."""
    text = json.dumps(run_identity(cfg, inputs), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def open_run_dir(run_dir: Path, cfg: QuantConfig, inputs: dict) -> Path:
    """Create `run_dir` for this run, or check that the run it holds is this one (QiftError otherwise)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise QiftError(f"run folder {run_dir} is a file; pass a folder path as --run-root")
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = run_dir / CONFIG_NAME
    ident = run_identity(cfg, inputs)
    if not cfg_path.is_file():
        write_json(cfg_path, ident)
        return run_dir
    try:
        old = json.loads(cfg_path.read_text())
        if not isinstance(old, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as exc:
        raise QiftError(f"run folder {run_dir} has an unreadable {CONFIG_NAME} ({exc}); delete the folder") from None
    if old.get("checkpoint_format") != FORMAT:
        raise QiftError(f"run folder {run_dir} was written in an older layer-checkpoint format "
                        f"({old.get('checkpoint_format', 'before ' + FORMAT)}); delete it or use another --run-dir")
    if old != ident:
        diff = sorted(k for k in set(old) | set(ident) if old.get(k) != ident.get(k))
        raise QiftError(f"run folder {run_dir} holds a run with a different configuration or inputs "
                        f"({', '.join(diff)}); use another --run-dir or delete it")
    return run_dir


def discard_if_empty(run_dir: Path) -> bool:
    """Remove a run folder that holds no finished layer (only its config and lock); True if it was removed."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or any(p.name not in (CONFIG_NAME, LOCK_NAME) for p in run_dir.iterdir()):
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    return True


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
