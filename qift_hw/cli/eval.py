"""`qift-hw eval`, `qift-hw sweep-ratio`, `qift-hw quantize`: perplexity of rotated W2A4/KV4 models."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from qift_hw.cli.app import app
from qift_hw.core.errors import QiftError

RUN_ROOT = Path("runs/gptq")

_model = typer.Option("smollm2", "--model", help="Model: smollm2 (embedded GGUF), a HF folder, a .gguf file or a hub id.")
_text = typer.Option("pydoc", "--text", help="Text: pydoc (offline default), a UTF-8 text file, wikitext2 or c4.")
_windows = typer.Option(None, "--windows", help="Evaluation windows (default: all that fit in the eval split).")
_seqlen = typer.Option(2048, "--seqlen", help="Evaluation window length in tokens.")
_cwin = typer.Option(128, "--calib-windows", help="Calibration windows for GPTQ.")
_cseq = typer.Option(512, "--calib-seqlen", help="Calibration window length in tokens.")
_method = typer.Option("gptq", "--method", help="Weight quantizer(s), comma separated: gptq, rtn.")
_w2 = typer.Option("all", "--w2-layers", help="W2 layers: all, none, first:L, last:L, a list 0,1,5, sensitivity:L.")
_other = typer.Option(4, "--other-bits", help="Precision of the non-W2 layers: 4 (int4), 3 (int3) or 16 (float).")
_abits = typer.Option(4, "--a-bits", help="Activation bits (per-token symmetric INT); 16 = off.")
_kvbits = typer.Option(4, "--kv-bits", help="KV-cache bits (asymmetric, per head); 16 = off.")
_aclip = typer.Option(0.9, "--a-clip", help="Activation clip ratio.")
_kvclip = typer.Option(0.95, "--kv-clip", help="KV-cache clip ratio.")
_norot = typer.Option(False, "--no-rotate", help="Skip the QuaRot rotation.")
_rseed = typer.Option(0, "--rotation-seed", help="Seed of the random Hadamard rotation.")
_seed = typer.Option(0, "--seed", help="Seed of the calibration window sampling.")
_scale = typer.Option("mse", "--scale-method", help="Per-channel scale: mse (clip search) or maxabs.")
_actord = typer.Option(False, "--act-order", help="GPTQ act-order (columns by decreasing Hessian diagonal).")
_trueseq = typer.Option(True, "--true-sequential/--one-pass", help="Calibrate each group of a layer on the outputs "
                        "of the already-quantized groups (4 passes per layer), or all groups from one pass.")
_device = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available).")
_bs = typer.Option(8, "--batch-size", help="Calibration windows per forward batch.")
_threads = typer.Option(None, "--threads", help="torch CPU threads (default: torch's choice).")
_json = typer.Option(None, "--json", help="Write the result rows as JSON to this file.")
_out = typer.Option(None, "--out", help="Write results.md, results.json and plots into this folder.")
_runs = typer.Option(RUN_ROOT, "--run-root", help="Per-layer GPTQ checkpoints (resume) live in a subfolder per configuration.")
_fresh = typer.Option(False, "--fresh", help="Do not use or write per-layer checkpoints.")
_backend = typer.Option("torch", "--backend", help="How W2 linears (pot_mnz, mnz, std, pm12) are evaluated: torch "
                        "(fake-quant), int (PyTorch, exact integer products) or sim (the bit-accurate integer model).")
_simhad = typer.Option("unit", "--sim-hadamard", help="With --backend sim: the online Hadamard in the integer unit "
                       "(unit) or the pipeline's float transform (float, then sim equals --backend int exactly).")
_progress = typer.Option(True, "--progress/--no-progress", help="Show progress bars.")


def _device_of(device: Optional[str]) -> str:
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise QiftError(f"unknown device {device!r}; use cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise QiftError("CUDA is not available on this machine; use --device cpu")
    return device


def _split(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise QiftError(f"empty list {text!r}")
    return items


def _model_id(spec: str) -> str:
    p = Path(spec).expanduser()
    if p.exists():
        st = p.stat()
        return f"{p.resolve()}:{st.st_size}:{int(st.st_mtime)}"
    return spec


def _setup(model: str, text: str, seqlen: int, windows: Optional[int], threads: Optional[int]):
    import torch

    from qift_hw.algo.data import get_windows
    from qift_hw.algo.models import load_model

    if threads:
        torch.set_num_threads(threads)
    base, tok = load_model(model, device="cpu")
    ev = get_windows(tok, text, "eval", seqlen, windows)
    return base, tok, ev


def _base_config(**kw):
    from qift_hw.algo.config import QuantConfig

    cfg = QuantConfig(**kw)
    return cfg


def _finish(rows: list[dict], meta: dict, json_out: Optional[Path], out: Optional[Path]) -> None:
    from qift_hw.core.io import write_json
    from qift_hw.study.report import markdown_rows, pivot_table, write_report

    if json_out is not None:
        write_json(json_out, {"meta": meta, "rows": rows})
    if out is not None:
        md = write_report(rows, out, meta)
        print(f"report: {md}")
    table = markdown_rows(rows)
    grid = pivot_table(rows)
    print(table + ("\n" + grid if grid else ""))


def _partial_writer(out: Optional[Path], meta: dict, rows: list[dict]):
    from qift_hw.core.io import write_json

    def on_row(row):
        rows.append(row)
        if out is not None:
            write_json(out / "results.partial.json", {"meta": meta, "rows": rows})
    return on_row


@app.command("eval")
def eval_cmd(
    model: str = _model, text: str = _text, levels: str = typer.Option(
        "mnz", "--levels", help="2-bit level set(s), comma separated: std, asym, pm12, mnz, pot_mnz, lloyd, nf2, ratio:R."),
    method: str = _method, w2_layers: str = _w2, other_bits: int = _other,
    windows: Optional[int] = _windows, seqlen: int = _seqlen,
    calib_windows: int = _cwin, calib_seqlen: int = _cseq, a_bits: int = _abits, kv_bits: int = _kvbits,
    a_clip: float = _aclip, kv_clip: float = _kvclip, no_rotate: bool = _norot, rotation_seed: int = _rseed,
    seed: int = _seed, scale_method: str = _scale, act_order: bool = _actord, true_sequential: bool = _trueseq,
    fp: bool = typer.Option(False, "--fp", help="Also run FP, rotated FP and rotated FP with A4KV4 (float weights)."),
    int_refs: bool = typer.Option(False, "--int-refs", help="Also run W4A4KV4 and W3A4KV4 (int4/int3 weights)."),
    table: Optional[str] = typer.Option(None, "--table", help="Preset instead of --levels/--method: demo or full "
                                        "(7 level sets x {rtn,gptq} x {W2A16, W2A4KV4, mixed} + FP, W4A4KV4, W3A4KV4)."),
    mixed: str = typer.Option("sensitivity:15", "--mixed", help="W2 layer spec of the presets' mixed point."),
    no_quant: bool = typer.Option(False, "--no-quant", help="Only the references (with --fp/--int-refs)."),
    device: Optional[str] = _device, batch_size: int = _bs, threads: Optional[int] = _threads,
    json_out: Optional[Path] = _json, out: Optional[Path] = _out, run_root: Path = _runs, fresh: bool = _fresh,
    export: Optional[Path] = typer.Option(None, "--export", help="Save the quantized model (one quantized run only) "
                                          "as a safetensors checkpoint."),
    backend: str = _backend, sim_hadamard: str = _simhad, progress: bool = _progress,
) -> None:
    """Perplexity of FP / rotated / quantized models on non-overlapping windows; prints a Markdown table."""
    from qift_hw.study.experiments import grid_points, preset_points, reference_points, run_points

    from qift_hw.bridge.sim_backend import eval_backend

    dev = _device_of(device)
    hook = eval_backend(backend, sim_hadamard)
    base = _base_config(a_bits=a_bits, kv_bits=kv_bits, a_clip=a_clip, kv_clip=kv_clip, rotate=not no_rotate,
                        rotation_seed=rotation_seed, calib_source=text, calib_windows=calib_windows,
                        calib_seqlen=calib_seqlen, calib_seed=seed, scale_method=scale_method, act_order=act_order,
                        true_sequential=true_sequential, w2_layers=w2_layers, other_bits=other_bits,
                        batch_size=batch_size, device=dev)
    if table is not None:
        points = preset_points(table, base, mixed)
    else:
        points = reference_points(base, fp=fp, int_refs=int_refs, methods=_split(method))
        if not no_quant:
            points += grid_points(base, _split(levels), _split(method), [{}])
    if not points:
        raise QiftError("nothing to run; drop --no-quant or add --fp / --int-refs")
    if export is not None and sum(p.kind == "quant" for p in points) != 1:
        raise QiftError("--export needs exactly one quantized run (one level set and one method)")
    base_model, tok, ev = _setup(model, text, seqlen, windows, threads)
    meta = {"title": "qift-hw eval", "command": "qift-hw " + shlex.join(sys.argv[1:]), "model": model, "text": text,
            "eval_windows": int(ev.shape[0]), "seqlen": seqlen, "calib": f"{calib_windows} x {calib_seqlen}",
            "device": dev, "backend": backend}
    rows: list[dict] = []
    run_points(points, base_model, tok, ev, device=dev, run_root=None if fresh else run_root,
               model_id=_model_id(model), progress=progress, on_row=_partial_writer(out, meta, rows), export=export,
               backend=hook)
    _finish(rows, meta, json_out, out)


@app.command("sweep-ratio")
def sweep_ratio_cmd(
    model: str = _model, text: str = _text,
    ratios: str = typer.Option("0.1,0.15,0.2,0.25,0.3,0.3333,0.4,0.5,0.6,0.7", "--ratios",
                               help="Inner/outer ratios r of the symmetric sets {+-r, +-1}, comma separated."),
    method: str = _method, w2_layers: str = _w2, other_bits: int = _other,
    windows: Optional[int] = _windows, seqlen: int = _seqlen, calib_windows: int = _cwin, calib_seqlen: int = _cseq,
    a_bits: int = _abits, kv_bits: int = _kvbits, no_rotate: bool = _norot, scale_method: str = _scale,
    device: Optional[str] = _device, batch_size: int = _bs, threads: Optional[int] = _threads,
    json_out: Optional[Path] = _json, out: Optional[Path] = _out, run_root: Path = _runs, fresh: bool = _fresh,
    progress: bool = _progress,
) -> None:
    """Perplexity against the inner/outer ratio of the level set {+-r, +-1} (W2A4KV4 by default)."""
    from qift_hw.study.experiments import ratio_points, run_points

    try:
        rs = [float(r) for r in _split(ratios)]
    except ValueError:
        raise QiftError(f"--ratios {ratios!r}: give numbers in (0, 1) separated by commas") from None
    dev = _device_of(device)
    base = _base_config(a_bits=a_bits, kv_bits=kv_bits, rotate=not no_rotate, calib_source=text,
                        calib_windows=calib_windows, calib_seqlen=calib_seqlen, scale_method=scale_method,
                        w2_layers=w2_layers, other_bits=other_bits, batch_size=batch_size, device=dev)
    points = ratio_points(base, rs, _split(method))
    base_model, tok, ev = _setup(model, text, seqlen, windows, threads)
    meta = {"title": "qift-hw sweep-ratio", "command": "qift-hw " + shlex.join(sys.argv[1:]), "model": model,
            "text": text, "eval_windows": int(ev.shape[0]), "seqlen": seqlen,
            "calib": f"{calib_windows} x {calib_seqlen}", "device": dev}
    rows: list[dict] = []
    run_points(points, base_model, tok, ev, device=dev, run_root=None if fresh else run_root,
               model_id=_model_id(model), progress=progress, on_row=_partial_writer(out, meta, rows))
    _finish(rows, meta, json_out, out)


@app.command("quantize")
def quantize_cmd(
    output: Path = typer.Argument(..., help="Checkpoint file to write (.safetensors)."),
    model: str = _model, text: str = _text,
    levels: str = typer.Option("mnz", "--levels", help="2-bit level set of the W2 layers."),
    method: str = typer.Option("gptq", "--method", help="gptq or rtn."), w2_layers: str = _w2,
    other_bits: int = _other, calib_windows: int = _cwin, calib_seqlen: int = _cseq, a_bits: int = _abits,
    kv_bits: int = _kvbits, no_rotate: bool = _norot, rotation_seed: int = _rseed, seed: int = _seed,
    scale_method: str = _scale, act_order: bool = _actord, true_sequential: bool = _trueseq,
    device: Optional[str] = _device, batch_size: int = _bs,
    threads: Optional[int] = _threads, run_root: Path = _runs, fresh: bool = _fresh, progress: bool = _progress,
) -> None:
    """Quantize a model and save it as a safetensors checkpoint (packed codes, scales, level set, rotation seed)."""
    import torch

    from qift_hw.algo.checkpoint import save_quantized
    from qift_hw.study.experiments import run_dir_for
    from qift_hw.algo.models import load_model
    from qift_hw.algo.quantize import quantize_model

    if threads:
        torch.set_num_threads(threads)
    dev = _device_of(device)
    cfg = _base_config(levels=levels, method=method, w2_layers=w2_layers, other_bits=other_bits,
                       calib_windows=calib_windows, calib_seqlen=calib_seqlen, a_bits=a_bits, kv_bits=kv_bits,
                       rotate=not no_rotate, rotation_seed=rotation_seed, calib_source=text, calib_seed=seed,
                       scale_method=scale_method, act_order=act_order, true_sequential=true_sequential,
                       batch_size=batch_size, device=dev)
    cfg.validate()
    m, tok = load_model(model, device=dev)
    mid = _model_id(model)
    qm = quantize_model(m, tok, cfg, run_dir=None if fresh else run_dir_for(run_root, cfg, mid), model_id=mid,
                        progress=progress)
    save_quantized(output, qm, model_id=model)
    print(f"wrote {output} ({cfg.label()}, W2 layers {qm.w2_layers})")


@app.command("eval-checkpoint")
def eval_checkpoint_cmd(
    checkpoint: Path = typer.Argument(..., help="A checkpoint written by `qift-hw quantize` or `eval --export`."),
    model: Optional[str] = typer.Option(None, "--model", help="Where the tokenizer comes from (default: the model "
                                        "recorded in the checkpoint)."),
    text: str = _text, windows: Optional[int] = _windows, seqlen: int = _seqlen, device: Optional[str] = _device,
    threads: Optional[int] = _threads, backend: str = _backend, sim_hadamard: str = _simhad,
    progress: bool = _progress,
) -> None:
    """Perplexity of a saved quantized checkpoint."""
    import torch

    from qift_hw.algo.data import get_windows
    from qift_hw.algo.evaluate import evaluate_ppl
    from qift_hw.bridge.sim_backend import eval_backend
    from qift_hw.algo.checkpoint import load_quantized, quantized_weights, read_metadata
    from qift_hw.algo.models import load_model

    if threads:
        torch.set_num_threads(threads)
    dev = _device_of(device)
    hook = eval_backend(backend, sim_hadamard)
    meta = read_metadata(checkpoint)
    _, tok = load_model(model or meta.get("model_id") or None, device="cpu")
    qmodel, meta = load_quantized(checkpoint, device=dev)
    ev = get_windows(tok, text, "eval", seqlen, windows)
    info = hook(qmodel, quantized_weights(checkpoint)) if hook is not None else {"name": "torch"}
    t0 = time.perf_counter()
    ppl = evaluate_ppl(qmodel, ev, device=dev, progress=progress)
    print(f"{checkpoint}: ppl {ppl:.6f} on {ev.shape[0]} x {seqlen} tokens of {text}, backend {info}, "
          f"evaluation {time.perf_counter() - t0:.1f} s")
