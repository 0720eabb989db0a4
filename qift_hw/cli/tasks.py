"""`qift-hw tasks`: task accuracy (lm-eval) of FP, quantized or checkpointed models, with `eval`'s options."""

from __future__ import annotations

import inspect
import time
from pathlib import Path
from typing import Optional

import typer

from qift_hw.cli import eval as ev
from qift_hw.cli.app import app
from qift_hw.cli.exits import resumable
from qift_hw.cli.options import check_at_least, out_option, parse_list, resolve_device, run_folder
from qift_hw.core.errors import QiftError

RESULT_COLUMNS = ("label", "kind", "weights", "method", "a_bits", "kv_bits", "backend", "task", "acc", "acc_stderr",
                  "examples", "word_perplexity", "seconds")


def _eval_option(name: str):
    """The option `qift-hw eval` defines for its parameter ``name`` (one definition for both commands)."""
    return inspect.signature(ev.eval_cmd).parameters[name].default


def _specs(base, checkpoint: Optional[Path], fp: bool, int_refs: bool, no_quant: bool, levels: str, method: str):
    from qift_hw.study.experiments import Point, grid_points, reference_points
    from qift_hw.study.tasks import ModelSpec

    if checkpoint is not None:
        return [ModelSpec(checkpoint.name, "checkpoint", checkpoint=checkpoint)]
    points = ([Point("FP", "fp")] if fp else []) + reference_points(base, fp=False, int_refs=int_refs,
                                                                    methods=parse_list(method))
    if not no_quant:
        points += grid_points(base, parse_list(levels), parse_list(method), [{}])
    if not points:
        raise QiftError("nothing to run; drop --no-quant or add --fp / --int-refs")
    return [ModelSpec(p.label, p.kind, p.config) for p in points]


def _row(spec, info: dict, result, seconds: float, backend: str) -> dict:
    cfg = spec.config
    quant = spec.kind in ("quant", "checkpoint")
    return {"label": spec.label, "kind": spec.kind,
            "weights": cfg.weights_label() if spec.kind == "quant" else ("W16" if not quant else None),
            "method": cfg.method if spec.kind == "quant" else None,
            "a_bits": cfg.a_bits if cfg else (None if quant else 16), "kv_bits": cfg.kv_bits if cfg else (None if quant else 16),
            "backend": backend if quant else "torch", "task": result.task, "acc": result.acc,
            "acc_stderr": result.acc_stderr, "examples": result.examples, "word_perplexity": result.word_perplexity,
            "seconds": seconds, "w2_layers": info.get("w2_layers"), "backend_info": info.get("backend"),
            "config": cfg.to_dict() if cfg else None}


def _write(out: Path, rows: list[dict], meta: dict) -> None:
    from qift_hw.core.io import write_json
    from qift_hw.core.provenance import provenance, write_csv

    write_json(out / "results.json", {"provenance": provenance(), "meta": meta, "rows": rows})
    write_csv(out / "results.csv", rows, RESULT_COLUMNS)


def _table(rows: list[dict]) -> str:
    lines = ["| point | task | acc | ± stderr | examples | word ppl |", "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        ppl = f"{r['word_perplexity']:.1f}" if r["word_perplexity"] is not None else ""
        lines.append(f"| {r['label']} | {r['task']} | {r['acc']:.4f} | {r['acc_stderr']:.4f} | {r['examples']} | "
                     f"{ppl} |")
    return "\n".join(lines)


@app.command("tasks")
def tasks_cmd(
    tasks: str = typer.Option("qift_lastword", "--tasks", help="Tasks, comma separated: qift_lastword (last word of "
                              "each passage of --text's eval split, offline) or lm-eval task names (their data must "
                              "be reachable)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Examples per task (default: all)."),
    task_batch: int = typer.Option(8, "--task-batch", help="Examples per lm-eval forward batch."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Evaluate a checkpoint written by `qift-hw "
                                              "quantize` or `eval --export` instead of quantizing."),
    model: str = _eval_option("model"), text: str = _eval_option("text"), levels: str = _eval_option("levels"),
    method: str = _eval_option("method"), w2_layers: Optional[str] = ev._w2, other_bits: Optional[int] = ev._other,
    calib_windows: Optional[int] = ev._cwin, calib_seqlen: Optional[int] = ev._cseq,
    calib_seed: Optional[int] = ev._cseed, a_bits: Optional[int] = ev._abits, kv_bits: Optional[int] = ev._kvbits,
    a_clip: Optional[float] = ev._aclip, kv_clip: Optional[float] = ev._kvclip, rotate: Optional[bool] = ev._rotate,
    rotation_seed: Optional[int] = _eval_option("rotation_seed"), scale_method: Optional[str] = ev._scale,
    act_order: Optional[bool] = ev._actord, true_sequential: Optional[bool] = ev._trueseq,
    batch_size: Optional[int] = ev._bs, device: Optional[str] = _eval_option("device"),
    fp: bool = typer.Option(False, "--fp", help="Also evaluate the float model."), int_refs: bool = _eval_option("int_refs"), no_quant: bool = _eval_option("no_quant"),
    threads: Optional[int] = ev._threads, out: Optional[Path] = out_option("task results (results.json, results.csv)"),
    run_root: Path = ev._runs, fresh: bool = ev._fresh, backend: str = ev._backend, sim_hadamard: str = ev._simhad,
    progress: bool = ev._progress,
) -> None:
    """Task accuracy (lm-eval's acc with its stderr) of FP, quantized or checkpointed models; offline on the local
    last-word task."""
    import torch

    from qift_hw.algo.models import load_model
    from qift_hw.bridge.sim_backend import eval_backend
    from qift_hw.core.provenance import command_line
    from qift_hw.study.tasks import LOCAL_TASK, build_local_task, evaluate_tasks, prepared_model, task_manager

    names = parse_list(tasks)
    check_at_least("--limit", limit, 1)
    check_at_least("--task-batch", task_batch, 1)
    base = ev.quant_config(text, device, locals())
    base.validate()
    hook = eval_backend(backend, sim_hadamard)
    specs = _specs(base, checkpoint, fp, int_refs, no_quant, levels, method)
    if checkpoint is not None and not checkpoint.is_file():
        raise QiftError(f"--checkpoint {checkpoint} is not a file; pass a checkpoint written by `qift-hw quantize`")
    out = run_folder(out, "tasks", tasks=tasks, limit=limit, checkpoint=checkpoint)
    ev._check_inputs(text, "eval", threads, out=out)
    local = build_local_task(out / "task", text) if LOCAL_TASK in names else None
    tm = task_manager(names, local)
    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    if checkpoint is not None:
        from qift_hw.algo.checkpoint import read_metadata

        _, tok = load_model(model if model != _eval_option("model").default else
                            read_metadata(checkpoint).get("model_id") or None, device="cpu")
        float_model = None
    else:
        float_model, tok = load_model(model, device="cpu")
        ev._check_model(float_model, {}, [s.config for s in specs if s.kind == "quant"])
    meta = {"title": "qift-hw tasks", "command": command_line(), "model": model, "text": text, "tasks": names,
            "limit": limit, "backend": backend, "device": dev, "checkpoint": str(checkpoint) if checkpoint else None,
            "calib": f"{base.calib_windows} x {base.calib_seqlen}",
            "local_task": None if local is None else {"folder": str(local.folder), "examples": local.examples,
                                                       "text_digest": local.text_digest,
                                                       "data_digest": local.data_digest}}
    rows: list[dict] = []
    root = None if fresh else run_root
    with resumable(root if any(s.kind == "quant" for s in specs) else None):
        for k, spec in enumerate(specs):
            t0 = time.perf_counter()
            qmodel, info = prepared_model(spec, float_model, tok, device=dev, run_root=root, model_id=ev._model_id(model),
                                          backend=hook, progress=progress)
            results = evaluate_tasks(qmodel, tok, names, tm, limit=limit, batch_size=task_batch)
            seconds = time.perf_counter() - t0
            rows += [_row(spec, info, r, seconds, backend) for r in results]
            _write(out, rows, meta)
            accs = ", ".join(f"{r.task} {r.acc:.4f} ± {r.acc_stderr:.4f} (n={r.examples})" for r in results)
            print(f"[{k + 1}/{len(specs)}] {spec.label}: {accs} ({seconds:.0f} s)", flush=True)
            del qmodel
    print(f"results: {out / 'results.json'}")
    print(_table(rows))
