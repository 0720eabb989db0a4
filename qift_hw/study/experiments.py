"""Perplexity experiments: which runs make up a table, and running them on one loaded model.

A run ("point") is FP, rotated FP (optionally with the activation/KV quantizers on) or a quantized model
given by a `QuantConfig`. `run_points` evaluates each on a fresh copy of the same float model and the same
evaluation and calibration windows, and returns result rows for `qift_hw.study.report`.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from qift_hw.algo.checkpoint import save_quantized
from qift_hw.algo.run_folder import run_inputs, run_key, weights_digest
from qift_hw.algo.config import QuantConfig
from qift_hw.algo.evaluate import evaluate_ppl
from qift_hw.algo.prepare import prepare_model
from qift_hw.algo.qmodel import FLOAT_BITS
from qift_hw.algo.quantize import quantize_model
from qift_hw.algo.quantized import QuantizedModel
from qift_hw.core.errors import QiftError
from qift_hw.core.levels import TWO_BIT_SETS

DEMO_LEVELS = ("std", "mnz", "pot_mnz")
DEFAULT_MIXED = "sensitivity:15"
DEFAULT_RATIOS = (0.1, 0.15, 0.2, 0.25, 0.3, 1 / 3, 0.4, 0.5, 0.6, 0.7)


@dataclass
class Point:
    """One run of a table. kind: fp, rotated_fp or quant; config is None for fp."""

    label: str
    kind: str
    config: QuantConfig | None = None
    ratio: float | None = None


def quant_point(base: QuantConfig, **changes) -> Point:
    cfg = replace(base, **changes)
    ls = cfg.validate()
    return Point(cfg.label(), "quant", cfg, ratio=ls.ratio if ls.name.startswith("ratio:") else None)


def reference_points(base: QuantConfig, fp: bool = True, int_refs: bool = False, methods=("gptq",)) -> list[Point]:
    """FP, rotated FP (A16 and A4KV4 with float weights) and, with int_refs, W4A4KV4 and W3A4KV4."""
    pts: list[Point] = []
    if fp:
        pts.append(Point("FP", "fp"))
        pts.append(Point("rotated FP", "rotated_fp", replace(base, rotate=True, a_bits=FLOAT_BITS, kv_bits=FLOAT_BITS)))
        pts.append(Point("rotated FP A4KV4", "rotated_fp", replace(base, rotate=True, a_bits=4, kv_bits=4)))
    if int_refs:
        for bits in (4, 3):
            for m in methods:
                pts.append(quant_point(base, w2_layers="none", other_bits=bits, method=m, a_bits=4, kv_bits=4))
    return pts


def grid_points(base: QuantConfig, levels, methods, settings: list[dict]) -> list[Point]:
    """Every (setting, level set, method) combination; a setting is a dict of QuantConfig changes."""
    pts = []
    for setting in settings:
        for m in methods:
            for lv in levels:
                pts.append(quant_point(base, levels=lv, method=m, **setting))
    return pts


def preset_points(name: str, base: QuantConfig, mixed: str = DEFAULT_MIXED) -> list[Point]:
    """`demo`: FP, rotated FP, W2A4KV4 GPTQ with std/mnz/pot_mnz and one mixed point (mnz).
    `full`: the paper's grid, 7 level sets x {RTN, GPTQ} x {W2A16, W2A4KV4, mixed} plus FP, W4A4KV4, W3A4KV4."""
    a4 = {"w2_layers": "all", "a_bits": 4, "kv_bits": 4}
    if name == "demo":
        return (reference_points(base)
                + grid_points(base, DEMO_LEVELS, ["gptq"], [a4])
                + grid_points(base, ["mnz"], ["gptq"], [{**a4, "w2_layers": mixed, "other_bits": 4}]))
    if name == "full":
        settings = [{"w2_layers": "all", "a_bits": FLOAT_BITS, "kv_bits": FLOAT_BITS}, a4,
                    {**a4, "w2_layers": mixed, "other_bits": 4}]
        return (reference_points(base, int_refs=True, methods=("rtn", "gptq"))
                + grid_points(base, TWO_BIT_SETS, ["rtn", "gptq"], settings))
    raise QiftError(f"unknown table preset {name!r}; use demo or full")


def ratio_points(base: QuantConfig, ratios, methods=("gptq",)) -> list[Point]:
    """The symmetric sets {+-r, +-1} for each ratio r."""
    return grid_points(base, [f"ratio:{r:.4g}" for r in ratios], methods, [{}])


def _row(point: Point, ppl: float, seconds: float, qm=None) -> dict:
    cfg = point.config
    row = {
        "label": point.label, "kind": point.kind, "ppl": ppl, "seconds": seconds,
        "levels": cfg.weights_name() if point.kind == "quant" else None,
        "method": cfg.method if point.kind == "quant" else None,
        "weights": cfg.weights_label() if point.kind == "quant" else "W16",
        "a_bits": cfg.a_bits if cfg else FLOAT_BITS, "kv_bits": cfg.kv_bits if cfg else FLOAT_BITS,
        "rotated": bool(cfg and cfg.rotate), "ratio": point.ratio,
        "config": cfg.to_dict() if cfg else None,
    }
    if qm is not None:
        errs = qm.layer_errors()
        measured = [e for e in errs if e is not None]
        row.update({
            "w2_layers": qm.w2_layers, "layer_level_sets": qm.layer_level_set_names(), "layer_rel_error": errs,
            "mean_rel_error": sum(measured) / len(measured) if measured else None,
            "sensitivity": qm.sensitivity, "timings": qm.timings, "resumed_layers": qm.resumed_layers,
            "linears": [{k: r[k] for k in ("layer", "name", "level_set", "rel_error", "damp")} for r in qm.records],
        })
    return row


def run_dir_for(root: str | Path | None, cfg: QuantConfig, inputs: dict) -> Path | None:
    """The run folder of one quantized run under `root` (named by `run_key`: inputs by content and config)."""
    return None if root is None else Path(root) / run_key(cfg, inputs)


def point_model(kind: str, config: QuantConfig | None, base_model: nn.Module, tokenizer, device: str = "cpu",
                run_root: str | Path | None = None, model_id: str = "", progress: bool = True,
                calib: torch.Tensor | None = None, weights: str | None = None) -> tuple[nn.Module, QuantizedModel | None]:
    """A point's model on `device`: a deep copy of the float `base_model`, as is (fp), rotated (rotated_fp) or
    quantized (quant, with per-layer checkpoints under `run_root`), and its QuantizedModel (None unless quant).
    ``weights``: `weights_digest` of `base_model` when the caller has it (computed here otherwise)."""
    model = copy.deepcopy(base_model).to(device)
    qm = None
    if kind == "rotated_fp":
        prepare_model(model, config)
    elif kind == "quant":
        cfg = replace(config, device=str(device))
        inputs = None
        if run_root is not None:
            inputs = run_inputs(weights or weights_digest(base_model), model_id, cfg, calib)
        qm = quantize_model(model, tokenizer, cfg, run_dir=run_dir_for(run_root, cfg, inputs), calib=calib,
                            model_id=model_id, progress=progress, inputs=inputs)
    elif kind != "fp":
        raise QiftError(f"unknown model kind {kind!r}; use fp, rotated_fp or quant")
    return model, qm


def run_points(
    points: list[Point],
    base_model: nn.Module,
    tokenizer,
    eval_windows: torch.Tensor,
    calib: torch.Tensor | None = None,
    device: str = "cpu",
    run_root: str | Path | None = None,
    model_id: str = "",
    progress: bool = True,
    on_row=None,
    export: str | Path | None = None,
    backend=None,
) -> list[dict]:
    """Evaluate every point on a deep copy of `base_model` (float, un-rotated, on CPU); returns result rows.

    on_row(row) is called after each run (e.g. to write partial results); export: save the (single) quantized
    model of the last quantized point there; backend(model, weights): called on each quantized model with its
    QuantizedModel.weights before the evaluation (e.g. to route its linears through the integer model); the dict
    it returns is stored in the row under "backend".
    """
    rows = []
    weights = weights_digest(base_model) if run_root is not None else None
    for k, point in enumerate(points):
        t0 = time.perf_counter()
        model, qm = point_model(point.kind, point.config, base_model, tokenizer, device, run_root, model_id,
                                progress, calib, weights)
        if qm is not None and export is not None:
            save_quantized(export, qm, model_id=model_id)
        info = backend(model, qm.weights) if backend is not None and qm is not None else None
        t1 = time.perf_counter()
        ppl = evaluate_ppl(model, eval_windows, device=device, progress=progress)
        row = _row(point, ppl, time.perf_counter() - t0, qm)
        row["eval_seconds"] = time.perf_counter() - t1
        if info is not None:
            row["backend"] = info
        rows.append(row)
        print(f"[{k + 1}/{len(points)}] {point.label}: ppl {ppl:.3f} ({row['seconds']:.0f} s)", flush=True)
        if on_row is not None:
            on_row(row)
        del model, qm
    return rows
