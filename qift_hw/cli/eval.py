"""`qift-hw eval`, `qift-hw sweep-ratio`, `qift-hw quantize`: perplexity of rotated W2A4/KV4 models.

The three commands take the same quantization options (defined once below, defaults read from `QuantConfig`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from qift_hw.cli.app import app
from qift_hw.cli.exits import resumable
from qift_hw.cli.options import (CALIB_SEED_HELP, RUNS, SEQLEN_HELP, check_at_least, check_out_file,
                                 check_out_folder, device_option, parse_list, resolve_device, rotation_seed_option)
from qift_hw.core.errors import QiftError

RUN_ROOT = RUNS / "gptq"


def _qc(flag: str, field: str, help: str):
    """An option whose default is QuantConfig's `field` (None here: the dataclass fills it in)."""
    return typer.Option(None, flag, help=help, show_default=f"QuantConfig.{field}")


_model = typer.Option("smollm2", "--model", help="Model: smollm2 (embedded GGUF), a HF folder, a .gguf file or a hub id.")
_text = typer.Option("pydoc", "--text", help="Text for evaluation and calibration: pydoc (offline default), a UTF-8 "
                     "text file, wikitext2 or c4.")
_windows = typer.Option(None, "--windows", help="Evaluation windows (default: all that fit in the eval split).")
_seqlen = typer.Option(2048, "--seqlen", help=f"{SEQLEN_HELP} Evaluation window length.")
_methods = typer.Option("gptq", "--method", help="Weight quantizer(s), comma separated: gptq, rtn.")
_w2 = _qc("--w2-layers", "w2_layers", "W2 layers: all, none, first:L, last:L, a list 0,1,5, sensitivity:L.")
_other = _qc("--other-bits", "other_bits", "Precision of the non-W2 layers: 4 (int4), 3 (int3) or 16 (float).")
_cwin = _qc("--calib-windows", "calib_windows", "Calibration windows for GPTQ.")
_cseq = _qc("--calib-seqlen", "calib_seqlen", "Calibration window length in tokens.")
_cseed = _qc("--calib-seed", "calib_seed", CALIB_SEED_HELP)
_abits = _qc("--a-bits", "a_bits", "Activation bits (per-token symmetric INT); 16 = off.")
_kvbits = _qc("--kv-bits", "kv_bits", "KV-cache bits (asymmetric, per head); 16 = off.")
_aclip = _qc("--a-clip", "a_clip", "Activation clip ratio.")
_kvclip = _qc("--kv-clip", "kv_clip", "KV-cache clip ratio.")
_rotate = typer.Option(None, "--rotate/--no-rotate", help="Apply the QuaRot rotation.",
                       show_default="QuantConfig.rotate")
_scale = _qc("--scale-method", "scale_method", "Per-channel scale: mse (clip search) or maxabs.")
_actord = typer.Option(None, "--act-order/--no-act-order", help="GPTQ act-order (columns by decreasing Hessian "
                       "diagonal).", show_default="QuantConfig.act_order")
_trueseq = typer.Option(None, "--true-sequential/--one-pass", help="Calibrate each group of a layer on the outputs "
                        "of the already-quantized groups (4 passes per layer), or all groups from one pass.",
                        show_default="QuantConfig.true_sequential")
_bs = _qc("--batch-size", "batch_size", "Calibration windows per forward batch.")
_threads = typer.Option(None, "--threads", help="torch CPU threads (default: torch's choice).")
_out = typer.Option(None, "--out", help="Run folder for results.md, results.json, results.csv and plots (default: "
                    "print only).")
_runs = typer.Option(RUN_ROOT, "--run-root", help="Per-layer GPTQ checkpoints (resume) live in a subfolder per configuration.")
_fresh = typer.Option(False, "--fresh", help="Do not use or write per-layer checkpoints.")
_backend = typer.Option("torch", "--backend", help="How W2 linears (pot_mnz, mnz, std, pm12) are evaluated: torch "
                        "(fake-quant), int (PyTorch, exact integer products) or sim (the bit-accurate integer model).")
_simhad = typer.Option("unit", "--sim-hadamard", help="With --backend sim: the online Hadamard in the integer unit "
                       "(unit) or the pipeline's float transform (float, then sim equals --backend int exactly).")
_progress = typer.Option(True, "--progress/--no-progress", help="Show progress bars.")


QUANT_OPTIONS = ("w2_layers", "other_bits", "calib_windows", "calib_seqlen", "calib_seed", "a_bits", "kv_bits",
                 "a_clip", "kv_clip", "rotate", "rotation_seed", "scale_method", "act_order", "true_sequential",
                 "batch_size")
"""The QuantConfig fields that `eval`, `sweep-ratio` and `quantize` all take as options (plus --text, --device)."""


def quant_config(text: str, device: Optional[str], options: dict, **fixed):
    """The QuantConfig of a command's options (its parameters, e.g. ``locals()``): the `QUANT_OPTIONS` given on the
    command line and ``fixed``, QuantConfig's defaults for the rest; calibration text and resolved device."""
    from qift_hw.algo.config import QuantConfig

    given = {k: options[k] for k in QUANT_OPTIONS if options.get(k) is not None}
    return QuantConfig(calib_source=text, device=resolve_device(device), **given,
                       **{k: v for k, v in fixed.items() if v is not None})


def _model_id(spec: str) -> str:
    p = Path(spec).expanduser()
    if p.exists():
        st = p.stat()
        return f"{p.resolve()}:{st.st_size}:{int(st.st_mtime)}"
    return spec


def _check_inputs(text: str, split: str, threads: Optional[int], seqlen: Optional[int] = None,
                  windows: Optional[int] = None, out: Optional[Path] = None) -> None:
    """The checks that need no model, run before the model load (which takes a minute or two): numbers, the text
    source (local ones are read, hub ones come later) and the output folder."""
    from qift_hw.algo.data import HUB_SOURCES, load_text
    from qift_hw.study.report import RESULT_FILES, claim_results_folder

    check_at_least("--seqlen", seqlen, 2)
    check_at_least("--windows", windows, 1)
    check_at_least("--threads", threads, 1)
    if text not in HUB_SOURCES:
        load_text(text, split)
    if out is not None:
        check_out_folder(out, RESULT_FILES)
        claim_results_folder(out)


def _check_model(model, seqlens: dict[str, int], configs) -> None:
    """The checks that need the model's config: window lengths within its context (`max_position_embeddings`)
    and the W2 layer selection of every config within its layer count."""
    from qift_hw.algo.mixed import parse_w2_spec, select_w2_layers

    config = getattr(model, "config", None)
    context = getattr(config, "max_position_embeddings", None)
    for flag, n in [*seqlens.items(), *(("--calib-seqlen", cfg.calib_seqlen) for cfg in configs)]:
        if context and n > context:
            raise QiftError(f"{flag} {n} is beyond the model's context of {context} tokens; use {context} or less")
    n_layers = getattr(config, "num_hidden_layers", None)
    if n_layers is None:
        return
    for cfg in configs:
        spec = parse_w2_spec(cfg.w2_layers)
        select_w2_layers(spec, n_layers, [0.0] * n_layers if spec.needs_scores else None)


def _setup(model: str, text: str, seqlen: int, windows: Optional[int], threads: Optional[int], configs):
    import torch

    from qift_hw.algo.data import get_windows
    from qift_hw.algo.models import load_model

    if threads:
        torch.set_num_threads(threads)
    base, tok = load_model(model, device="cpu")
    _check_model(base, {"--seqlen": seqlen}, configs)
    ev = get_windows(tok, text, "eval", seqlen, windows)
    return base, tok, ev


def _meta(title: str, model: str, text: str, ev, seqlen: int, cfg, **extra) -> dict:
    from qift_hw.core.provenance import command_line

    return {"title": title, "command": command_line(), "model": model, "text": text,
            "eval_windows": int(ev.shape[0]), "seqlen": seqlen, "calib": f"{cfg.calib_windows} x {cfg.calib_seqlen}",
            "device": cfg.device, **extra}


def _finish(rows: list[dict], meta: dict, out: Optional[Path]) -> None:
    from qift_hw.study.report import markdown_rows, pivot_table, write_report

    if out is not None:
        md = write_report(rows, out, meta)
        print(f"report: {md}")
    table = markdown_rows(rows)
    grid = pivot_table(rows)
    print(table + ("\n" + grid if grid else ""))


def _partial_writer(out: Optional[Path], meta: dict, rows: list[dict]):
    from qift_hw.study.report import write_partial

    def on_row(row):
        rows.append(row)
        if out is not None:
            write_partial(rows, out, meta)
    return on_row


@app.command("eval")
def eval_cmd(
    model: str = _model, text: str = _text, levels: str = typer.Option(
        "mnz", "--levels", help="2-bit level set(s), comma separated: std, asym, pm12, mnz, pot_mnz, lloyd, nf2, ratio:R."),
    method: str = _methods, w2_layers: Optional[str] = _w2, other_bits: Optional[int] = _other,
    windows: Optional[int] = _windows, seqlen: int = _seqlen,
    calib_windows: Optional[int] = _cwin, calib_seqlen: Optional[int] = _cseq, calib_seed: Optional[int] = _cseed,
    a_bits: Optional[int] = _abits, kv_bits: Optional[int] = _kvbits, a_clip: Optional[float] = _aclip,
    kv_clip: Optional[float] = _kvclip, rotate: Optional[bool] = _rotate,
    rotation_seed: Optional[int] = rotation_seed_option,
    scale_method: Optional[str] = _scale, act_order: Optional[bool] = _actord,
    true_sequential: Optional[bool] = _trueseq, batch_size: Optional[int] = _bs,
    device: Optional[str] = device_option,
    fp: bool = typer.Option(False, "--fp", help="Also run FP, rotated FP and rotated FP with A4KV4 (float weights)."),
    int_refs: bool = typer.Option(False, "--int-refs", help="Also run W4A4KV4 and W3A4KV4 (int4/int3 weights)."),
    table: Optional[str] = typer.Option(None, "--table", help="Preset instead of --levels/--method: demo or full "
                                        "(7 level sets x {rtn,gptq} x {W2A16, W2A4KV4, mixed} + FP, W4A4KV4, W3A4KV4)."),
    mixed: str = typer.Option("sensitivity:15", "--mixed", help="W2 layer spec of the presets' mixed point."),
    no_quant: bool = typer.Option(False, "--no-quant", help="Only the references (with --fp/--int-refs)."),
    threads: Optional[int] = _threads, out: Optional[Path] = _out, run_root: Path = _runs, fresh: bool = _fresh,
    export: Optional[Path] = typer.Option(None, "--export", help="Save the quantized model (one quantized run only) "
                                          "as a safetensors checkpoint."),
    backend: str = _backend, sim_hadamard: str = _simhad, progress: bool = _progress,
    stream: bool = typer.Option(False, "--stream", help="Layer by layer from a HF folder's memory-mapped shards "
                                "(models larger than memory): one --levels and --method, W2 layers given (not "
                                "sensitivity:L), torch backend; --export names a folder of qift-1 shards."),
) -> None:
    """Perplexity of FP / rotated / quantized models on non-overlapping windows; prints a Markdown table."""
    from qift_hw.bridge.sim_backend import eval_backend
    from qift_hw.study.experiments import grid_points, preset_points, reference_points, run_points

    base = quant_config(text, device, locals())
    base.validate()
    if stream:
        _eval_stream(model, text, levels, method, base, windows, seqlen, threads, out, export, progress)
        return
    hook = eval_backend(backend, sim_hadamard)
    if table is not None:
        points = preset_points(table, base, mixed)
    else:
        points = reference_points(base, fp=fp, int_refs=int_refs, methods=parse_list(method))
        if not no_quant:
            points += grid_points(base, parse_list(levels), parse_list(method), [{}])
    if not points:
        raise QiftError("nothing to run; drop --no-quant or add --fp / --int-refs")
    if export is not None and sum(p.kind == "quant" for p in points) != 1:
        raise QiftError("--export needs exactly one quantized run (one level set and one method)")
    _check_inputs(text, "eval", threads, seqlen, windows, out)
    if export is not None:
        check_out_file(export, "--export")
    configs = [p.config for p in points if p.kind == "quant"]
    base_model, tok, ev = _setup(model, text, seqlen, windows, threads, configs)
    meta = _meta("qift-hw eval", model, text, ev, seqlen, base, backend=backend)
    rows: list[dict] = []
    with resumable(None if fresh or not configs else run_root):
        run_points(points, base_model, tok, ev, device=base.device, run_root=None if fresh else run_root,
                   model_id=_model_id(model), progress=progress, on_row=_partial_writer(out, meta, rows),
                   export=export, backend=hook)
    _finish(rows, meta, out)


def _eval_stream(model: str, text: str, levels: str, method: str, base, windows: Optional[int], seqlen: int,
                 threads: Optional[int], out: Optional[Path], export: Optional[Path], progress: bool) -> None:
    """`eval --stream`: one quantized point through `algo.streaming` (the model is never loaded whole)."""
    import dataclasses

    import torch

    from qift_hw.algo.data import get_windows
    from qift_hw.algo.streaming import stream_run

    if len(parse_list(levels)) != 1 or len(parse_list(method)) != 1:
        raise QiftError("--stream runs one point; give one --levels and one --method")
    if not Path(model).is_dir():
        raise QiftError(f"--stream needs a local Hugging Face checkpoint folder, got --model {model}")
    cfg = dataclasses.replace(base, levels=levels, method=method)
    cfg.validate()
    _check_inputs(text, "eval", threads, seqlen, windows, out)
    if threads:
        torch.set_num_threads(threads)
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(model)
    except (OSError, ValueError) as exc:
        raise QiftError(f"--stream: no tokenizer in {model} ({str(exc).splitlines()[0][:200]})") from exc
    ev = get_windows(tok, text, "eval", seqlen, windows)
    calib = (get_windows(tok, cfg.calib_source, "calib", cfg.calib_seqlen, cfg.calib_windows, cfg.calib_seed)
             if cfg.method == "gptq" else None)
    t0 = time.perf_counter()
    res = stream_run(model, cfg, calib=calib, eval_windows=ev, out=export, model_id=model, progress=progress)
    errs = [r["rel_error"] for r in res.records if r.get("rel_error") is not None]
    row = {"label": f"{cfg.label()} (stream)", "kind": "quant", "ppl": res.ppl, "seconds": time.perf_counter() - t0,
           "levels": cfg.weights_name(), "method": cfg.method, "weights": cfg.weights_label(), "a_bits": cfg.a_bits,
           "kv_bits": cfg.kv_bits, "rotated": cfg.rotate, "ratio": None, "config": cfg.to_dict(),
           "w2_layers": res.w2_layers, "mean_rel_error": sum(errs) / len(errs) if errs else None,
           "timings": res.timings}
    _finish([row], _meta("qift-hw eval --stream", model, text, ev, seqlen, cfg), out)
    if export is not None:
        print(f"wrote {export} (qift-1 shards)")


@app.command("sweep-ratio")
def sweep_ratio_cmd(
    model: str = _model, text: str = _text,
    ratios: str = typer.Option("0.1,0.15,0.2,0.25,0.3,0.3333,0.4,0.5,0.6,0.7", "--ratios",
                               help="Inner/outer ratios r of the symmetric sets {+-r, +-1}, comma separated."),
    method: str = _methods, w2_layers: Optional[str] = _w2, other_bits: Optional[int] = _other,
    windows: Optional[int] = _windows, seqlen: int = _seqlen,
    calib_windows: Optional[int] = _cwin, calib_seqlen: Optional[int] = _cseq, calib_seed: Optional[int] = _cseed,
    a_bits: Optional[int] = _abits, kv_bits: Optional[int] = _kvbits, a_clip: Optional[float] = _aclip,
    kv_clip: Optional[float] = _kvclip, rotate: Optional[bool] = _rotate,
    rotation_seed: Optional[int] = rotation_seed_option,
    scale_method: Optional[str] = _scale, act_order: Optional[bool] = _actord,
    true_sequential: Optional[bool] = _trueseq, batch_size: Optional[int] = _bs,
    device: Optional[str] = device_option,
    threads: Optional[int] = _threads, out: Optional[Path] = _out, run_root: Path = _runs, fresh: bool = _fresh,
    progress: bool = _progress,
) -> None:
    """Perplexity against the inner/outer ratio of the level set {+-r, +-1} (W2A4KV4 by default)."""
    from qift_hw.study.experiments import ratio_points, run_points

    try:
        rs = [float(r) for r in parse_list(ratios)]
    except ValueError:
        raise QiftError(f"--ratios {ratios!r}: give numbers in (0, 1) separated by commas") from None
    base = quant_config(text, device, locals())
    base.validate()
    points = ratio_points(base, rs, parse_list(method))
    _check_inputs(text, "eval", threads, seqlen, windows, out)
    base_model, tok, ev = _setup(model, text, seqlen, windows, threads, [p.config for p in points])
    meta = _meta("qift-hw sweep-ratio", model, text, ev, seqlen, base)
    rows: list[dict] = []
    with resumable(None if fresh else run_root):
        run_points(points, base_model, tok, ev, device=base.device, run_root=None if fresh else run_root,
                   model_id=_model_id(model), progress=progress, on_row=_partial_writer(out, meta, rows))
    _finish(rows, meta, out)


@app.command("quantize")
def quantize_cmd(
    output: Path = typer.Argument(..., help="Checkpoint file to write (.safetensors)."),
    model: str = _model, text: str = _text,
    levels: Optional[str] = _qc("--levels", "levels", "2-bit level set of the W2 layers."),
    method: Optional[str] = _qc("--method", "method", "Weight quantizer: gptq or rtn."),
    w2_layers: Optional[str] = _w2, other_bits: Optional[int] = _other,
    calib_windows: Optional[int] = _cwin, calib_seqlen: Optional[int] = _cseq, calib_seed: Optional[int] = _cseed,
    a_bits: Optional[int] = _abits, kv_bits: Optional[int] = _kvbits, a_clip: Optional[float] = _aclip,
    kv_clip: Optional[float] = _kvclip, rotate: Optional[bool] = _rotate,
    rotation_seed: Optional[int] = rotation_seed_option,
    scale_method: Optional[str] = _scale, act_order: Optional[bool] = _actord,
    true_sequential: Optional[bool] = _trueseq, batch_size: Optional[int] = _bs,
    device: Optional[str] = device_option,
    threads: Optional[int] = _threads, run_root: Path = _runs, fresh: bool = _fresh, progress: bool = _progress,
) -> None:
    """Quantize a model and save it as a safetensors checkpoint (packed codes, scales, level set, rotation seed)."""
    import torch

    from qift_hw.algo.checkpoint import save_quantized
    from qift_hw.algo.models import load_model
    from qift_hw.algo.quantize import quantize_model
    from qift_hw.algo.run_folder import run_inputs, weights_digest
    from qift_hw.study.experiments import run_dir_for

    cfg = quant_config(text, device, locals(), levels=levels, method=method)
    cfg.validate()
    _check_inputs(text, "calib", threads)
    check_out_file(output, "OUTPUT")
    if threads:
        torch.set_num_threads(threads)
    m, tok = load_model(model, device=cfg.device)
    _check_model(m, {}, [cfg])
    mid = _model_id(model)
    inputs = None if fresh else run_inputs(weights_digest(m), mid, cfg)
    run_dir = None if fresh else run_dir_for(run_root, cfg, inputs)
    with resumable(run_dir):
        qm = quantize_model(m, tok, cfg, run_dir=run_dir, model_id=mid, progress=progress, inputs=inputs)
        save_quantized(output, qm, model_id=model)
    print(f"wrote {output} ({cfg.label()}, W2 layers {qm.w2_layers})")


@app.command("eval-checkpoint")
def eval_checkpoint_cmd(
    checkpoint: Path = typer.Argument(..., help="A checkpoint written by `qift-hw quantize` or `eval --export`, "
                                     "or the folder `eval --stream --export` writes."),
    model: Optional[str] = typer.Option(None, "--model", help="Where the tokenizer comes from (default: the model "
                                        "recorded in the checkpoint)."),
    text: str = _text, windows: Optional[int] = _windows, seqlen: int = _seqlen, device: Optional[str] = device_option,
    threads: Optional[int] = _threads, backend: str = _backend, sim_hadamard: str = _simhad,
    progress: bool = _progress,
) -> None:
    """Perplexity of a saved quantized checkpoint."""
    import torch

    from qift_hw.algo.checkpoint import read_quantized
    from qift_hw.algo.data import get_windows
    from qift_hw.algo.evaluate import evaluate_ppl
    from qift_hw.algo.models import load_model
    from qift_hw.bridge.sim_backend import eval_backend

    _check_inputs(text, "eval", threads, seqlen, windows)
    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    hook = eval_backend(backend, sim_hadamard)
    qmodel, meta, weights = read_quantized(checkpoint, device=dev)
    recorded = meta.get("model_id") or None
    if model is None and recorded is not None and Path(recorded).is_absolute() and not Path(recorded).exists():
        raise QiftError(f"{checkpoint} takes its tokenizer from {recorded}, which no longer exists; pass --model "
                        "with a folder or hub id that has the same tokenizer")
    _, tok = load_model(model or recorded, device="cpu")
    _check_model(qmodel, {"--seqlen": seqlen}, [])
    ev = get_windows(tok, text, "eval", seqlen, windows)
    info = hook(qmodel, weights) if hook is not None else {"name": "torch"}
    t0 = time.perf_counter()
    ppl = evaluate_ppl(qmodel, ev, device=dev, progress=progress)
    print(f"{checkpoint}: ppl {ppl:.6f} on {ev.shape[0]} x {seqlen} tokens of {text}, backend {info}, "
          f"evaluation {time.perf_counter() - t0:.1f} s")
