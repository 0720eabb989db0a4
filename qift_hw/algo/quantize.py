"""Quantize a model: QuaRot rotation, then sequential layer-by-layer GPTQ (or RTN) calibration.

Order of work (GPTQ/QuaRot's "true sequential" scheme):
1. rotate the float model and switch on the quantized forward (`prepare.prepare_model`): INT4
   per-token activations on every decoder linear input and 4-bit KV cache, as configured;
2. run the calibration windows up to the first decoder layer and keep its inputs (`capture`);
3. for each layer, quantize its linears group by group on those inputs (`layer.quantize_layer`), with Hessians
   of the inputs *as the quantized forward sees them* (after the online Hadamard and the INT4 activation
   quantizer, like QuaRot, which also calibrates with activation quantization on);
4. the layer's outputs with all its weights quantized are the next layer's calibration inputs.

With a run folder each finished layer is checkpointed (`run_folder.save_layer`); a rerun with the same folder,
inputs (model weights and calibration text, by content) and configuration loads the finished layers and continues after the last one, giving the same result bit for
bit as an uninterrupted run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from qift_hw.algo.capture import Batch, capture_layer_inputs, decoder_layers, propagate
from qift_hw.algo.config import QuantConfig
from qift_hw.algo.layer import layer_linears, quantize_layer, tick
from qift_hw.algo.mixed import parse_w2_spec, select_w2_layers
from qift_hw.algo.prepare import prepare_model
from qift_hw.algo.quantized import QuantizedLinear, QuantizedModel
from qift_hw.algo.run_folder import (discard_if_empty, layer_path, load_layer, open_run_dir, run_inputs,
                                     save_layer, weights_digest)
from qift_hw.algo.sensitivity import first_windows, sensitivity_scores
from qift_hw.core.io import folder_lock, write_json
from qift_hw.core.levels import LevelSet


def _level_sets(w2: list[int], n_layers: int, cfg: QuantConfig) -> list[LevelSet | None]:
    w2_set, other = cfg.level_set, cfg.other_level_set
    return [w2_set if i in w2 else other for i in range(n_layers)]


@torch.no_grad()
def quantize_model(
    model: nn.Module,
    tokenizer,
    config: QuantConfig,
    run_dir: str | Path | None = None,
    calib: torch.Tensor | None = None,
    model_id: str = "",
    progress: bool = True,
    inputs: dict | None = None,
) -> QuantizedModel:
    """Rotate and quantize `model` in place (see the module docstring); returns what was done.

    calib: token windows [n, seqlen] to use instead of sampling `config.calib_*` from the tokenizer's text.
    run_dir: per-layer checkpoints for resuming, locked for the run (QiftError if another process holds it) and
    removed again if the run fails before its first layer; model_id: names the model in the run folder's identity;
    inputs: `run_folder.run_inputs` of this model and text when the caller has them already.
    """
    config.validate()
    if run_dir is None:
        return _quantize(model, tokenizer, config, None, calib, progress)
    if inputs is None:
        inputs = run_inputs(weights_digest(model), model_id, config, calib)
    with folder_lock(run_dir):
        run = open_run_dir(Path(run_dir), config, inputs)
        try:
            return _quantize(model, tokenizer, config, run, calib, progress)
        except BaseException:
            discard_if_empty(run)
            raise


def _quantize(model: nn.Module, tokenizer, config: QuantConfig, run: Path | None, calib: torch.Tensor | None,
              progress: bool) -> QuantizedModel:
    t_start = time.perf_counter()
    device = torch.device(config.device)
    gptq = config.method == "gptq"
    rotation = prepare_model(model, config)
    t_rot = time.perf_counter() - t_start
    layers = decoder_layers(model)
    n_layers = len(layers)
    spec = parse_w2_spec(config.w2_layers)

    sens_path = run / "sensitivity.json" if run is not None else None
    scores = None
    if spec.needs_scores and sens_path is not None and sens_path.is_file():
        scores = json.loads(sens_path.read_text())["scores"]
    finished = False
    if run is not None and (not spec.needs_scores or scores is not None):
        level_sets = _level_sets(select_w2_layers(spec, n_layers, scores), n_layers, config)
        finished = all(layer_path(run, i).is_file() for i, ls in enumerate(level_sets) if ls is not None)
    batches: list[Batch] | None = None
    t_capture = 0.0
    if not finished and (gptq or (spec.needs_scores and scores is None)):
        if calib is None:
            from qift_hw.algo.data import get_windows

            calib = get_windows(tokenizer, config.calib_source, "calib", config.calib_seqlen,
                                config.calib_windows, config.calib_seed)
        t_cap = time.perf_counter()
        batches = capture_layer_inputs(model, calib, config.batch_size, device)
        t_capture = time.perf_counter() - t_cap

    if spec.needs_scores and scores is None:
        scores = sensitivity_scores(model, first_windows(batches, config.sensitivity_windows), config, progress)
        if sens_path is not None:
            write_json(sens_path, {"scores": scores})
    w2 = select_w2_layers(spec, n_layers, scores)
    t_sens = time.perf_counter() - t_start - t_rot - t_capture

    weights: dict[str, QuantizedLinear] = {}
    records: list[dict] = []
    timer: dict[str, float] = {}
    level_sets = _level_sets(w2, n_layers, config)
    resumed = 0
    bar = tqdm(range(n_layers), desc=f"quantize {config.label()}", disable=not progress, unit="layer")
    for i in bar:
        layer, ls = layers[i], level_sets[i]
        outs = None
        loaded = load_layer(run, i, device) if run is not None and ls is not None else None
        if loaded is not None:
            lw, lrec = loaded
            for lin in layer_linears(layer):
                lin.set_qweight(lw[lin.name].dequantized())
            resumed += 1
        elif ls is not None:
            lw, lrec, outs = quantize_layer(layer, batches if gptq else [], ls, config, i, timer)
            if run is not None:
                save_layer(run, i, lw, lrec)
        else:
            lw, lrec = {}, []
        weights.update(lw)
        records.extend(lrec)
        if outs is not None:
            batches = outs
        elif batches is not None and gptq and i + 1 < n_layers:
            t0 = time.perf_counter()
            batches = propagate(layer, batches)
            if ls is not None:
                tick(timer, "propagate_s", t0)
        errs = [r["rel_error"] for r in lrec if r.get("rel_error") is not None]
        if errs:
            bar.set_postfix(err=f"{sum(errs) / len(errs):.3f}")
    t_total = time.perf_counter() - t_start
    return QuantizedModel(
        model=model, config=config, w2_layers=w2, layer_level_sets=level_sets, weights=weights, records=records,
        rotation=rotation, sensitivity=scores,
        timings={"rotate_s": t_rot, "sensitivity_s": t_sens, "capture_s": t_capture,
                 "quantize_s": t_total - t_rot - t_sens - t_capture,
                 "total_s": t_total, **timer},
        resumed_layers=resumed,
    )
