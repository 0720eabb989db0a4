"""The work of one run-spec point on a Dask worker: load (once per worker process) the model and the evaluation
windows, quantize as the point says and measure perplexity; one result row.

`run_point` is a top-level function of a resolved point dict (`qift_hw.study.spec.expand`), so Dask pickles it by
name. The float model, tokenizer and windows are kept in module-level caches, so the points a worker runs one
after another load the model once; each point works on a deep copy (`experiments.run_points`).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import threading
from typing import Any, Mapping

from qift_hw.core.errors import QiftError

_MODELS: dict[str, tuple[Any, Any]] = {}
_WINDOWS: dict[tuple, Any] = {}
_LOCK = threading.Lock()
"""Worker threads of one process load a model once, not once each."""
TASK_RUNNER = "qift_hw.study.tasks"
TASK_FUNCTION = "evaluate_point_tasks"
"""What evaluates ``evaluation.tasks`` (lm-eval): ``TASK_RUNNER.TASK_FUNCTION(point, model, tokenizer)`` with the
float model -> a dict of task name -> accuracy; a spec with tasks needs it."""
LOADS: list[str] = []
"""Models this process loaded (tests count them: one load per worker and model)."""


def cached_model(model: str):
    """The float model (CPU) and tokenizer, loaded once per process."""
    with _LOCK:
        if model not in _MODELS:
            from qift_hw.algo.models import load_model

            _MODELS[model] = load_model(model, device="cpu")
            LOADS.append(model)
        return _MODELS[model]


def eval_windows(model: str, text: str, seqlen: int, windows: int | None):
    """The evaluation windows of a model's tokenizer on a text, computed once per process."""
    key = (model, text, seqlen, windows)
    _, tok = cached_model(model)
    with _LOCK:
        if key not in _WINDOWS:
            from qift_hw.algo.data import get_windows

            _WINDOWS[key] = get_windows(tok, text, "eval", seqlen, windows)
        return _WINDOWS[key]


def _check_context(base, point: Mapping[str, Any]) -> None:
    from qift_hw.algo.mixed import parse_w2_spec, select_w2_layers

    config = getattr(base, "config", None)
    context = getattr(config, "max_position_embeddings", None)
    cfg = point.get("config") or {}
    for what, n in (("evaluation.seqlen", point["eval_seqlen"]), ("calibration.seqlen", cfg.get("calib_seqlen"))):
        if context and n and n > context:
            raise QiftError(f"{what} {n} is beyond the model's context of {context} tokens; use {context} or less")
    layers = getattr(config, "num_hidden_layers", None)
    if point["kind"] == "quant" and layers is not None:
        spec = parse_w2_spec(cfg["w2_layers"])
        select_w2_layers(spec, layers, [0.0] * layers if spec.needs_scores else None)


def run_point(point: Mapping[str, Any]) -> list[dict]:
    """Perplexity (and lm-eval tasks, when asked) of one point: a list with one row (`experiments.run_points`'
    row plus the evaluation size)."""
    import torch

    from qift_hw.algo.config import QuantConfig
    from qift_hw.bridge.sim_backend import eval_backend
    from qift_hw.study.experiments import Point, run_points

    if point.get("threads"):
        torch.set_num_threads(int(point["threads"]))
    base, tok = cached_model(point["model"])
    _check_context(base, point)
    ev = eval_windows(point["model"], point["text"], point["eval_seqlen"], point["eval_windows"])
    cfg = QuantConfig.from_dict(point["config"]) if point.get("config") else None
    pt = Point(point["label"], point["kind"], cfg, ratio=point.get("ratio"))
    hook = eval_backend(point["backend"], point["sim_hadamard"]) if point["kind"] == "quant" else None
    with contextlib.redirect_stdout(io.StringIO()):
        (row,) = run_points([pt], base, tok, ev, device=point["device"], run_root=point.get("run_root"),
                            model_id=point["model"], progress=False, backend=hook)
    row.update({"eval_windows": int(ev.shape[0]), "eval_seqlen": int(ev.shape[1])})
    if point.get("tasks"):
        tasks = importlib.import_module(TASK_RUNNER)
        row["tasks"] = getattr(tasks, TASK_FUNCTION)(point, base, tok)
    return [row]
