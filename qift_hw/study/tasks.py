"""Task accuracy through lm-evaluation-harness (lm-eval): float, quantized or checkpointed models in lm-eval's
`HFLM`, on named tasks when their data is reachable and on a local task that needs no network.

The local task `qift_lastword` follows LAMBADA's protocol (Paperno et al., 2016, "The LAMBADA dataset"; lm-eval's
`lambada_openai` task): each passage is scored on its last word given the rest of it, and an example counts as
correct when every token of the word is the model's greedy choice (lm-eval's `acc` of a `loglikelihood` task,
whose standard error lm-eval reports as `acc_stderr`). Passages are the paragraphs (blank-line separated) of a
text's evaluation split (`algo.data`: the pydoc topics by default, so it runs offline) with at least `MIN_WORDS`
words whose last word is a plain word, optionally followed by . ! or ?; whitespace runs become single spaces and
the final punctuation is dropped, so the context is the passage's words but the last, the target that word.
The task is written as lm-eval task YAML beside a JSONL file of the examples (`build_local_task`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from qift_hw.core.errors import QiftError
from qift_hw.core.io import write_text

LOCAL_TASK = "qift_lastword"
MIN_WORDS = 15
LAST_WORD = re.compile(r"^[A-Za-z]+[.!?]?$")
PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
BOOTSTRAP_ITERS = 1000
"""Bootstrap draws for the stderr of the word perplexity (acc's stderr is closed-form)."""


@dataclass(frozen=True)
class LocalTask:
    """A local task on disk: `folder` is lm-eval's include path (the YAML and the JSONL inside it)."""

    folder: Path
    name: str
    examples: int
    text: str
    text_digest: str
    data_digest: str


@dataclass(frozen=True)
class TaskResult:
    """One task's outcome: accuracy, its standard error and the number of examples scored."""

    task: str
    acc: float
    acc_stderr: float
    examples: int
    word_perplexity: float | None = None


def lastword_examples(text: str, min_words: int = MIN_WORDS) -> list[dict[str, str]]:
    """The last-word examples of a text (see the module docstring): dicts with `context` and `target`."""
    if min_words < 2:
        raise QiftError(f"min_words must be at least 2 (a context word and the target), got {min_words}")
    out = []
    for para in PARAGRAPH_BREAK.split(text):
        words = para.split()
        if len(words) >= min_words and LAST_WORD.match(words[-1]):
            out.append({"context": " ".join(words[:-1]), "target": words[-1].rstrip(".!?")})
    return out


def task_config(name: str, data_file: Path, cache_dir: Path, meta: Mapping[str, Any]) -> dict:
    """lm-eval task YAML (as a dict) of a last-word task over a JSONL file, LAMBADA's metrics."""
    return {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}, "cache_dir": str(cache_dir)},
        "output_type": "loglikelihood",
        "test_split": "test",
        "doc_to_text": "{{context}}",
        "doc_to_target": "{{' ' + target}}",
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
        ],
        "metadata": {"version": 1.0, **meta},
    }


def build_local_task(folder: str | os.PathLike, text: str = "pydoc", min_words: int = MIN_WORDS) -> LocalTask:
    """Write the local task of a text source into ``folder/qift_lastword-<data digest>/`` (JSONL and YAML, each
    atomically); the same text gives the same files."""
    import yaml

    from qift_hw.algo.data import load_text, text_digest

    examples = lastword_examples(load_text(text, "eval"), min_words)
    if not examples:
        raise QiftError(f"the eval part of text {text!r} has no paragraph of {min_words}+ words ending in a plain "
                        "word; pass a longer prose text or a smaller minimum")
    data = "".join(json.dumps(e, ensure_ascii=False, sort_keys=True) + "\n" for e in examples)
    data_digest = hashlib.sha256(data.encode()).hexdigest()
    sub = Path(folder).resolve() / f"{LOCAL_TASK}-{data_digest[:16]}"
    data_file = sub / f"{LOCAL_TASK}.jsonl"
    digest = text_digest(text)
    meta = {"text": text, "text_digest": digest, "data_sha256": data_digest, "min_words": min_words,
            "examples": len(examples)}
    write_text(data_file, data)
    write_text(sub / f"{LOCAL_TASK}.yaml",
               yaml.safe_dump(task_config(LOCAL_TASK, data_file, sub / "hf_datasets", meta), sort_keys=False))
    return LocalTask(sub, LOCAL_TASK, len(examples), text, digest, "sha256:" + data_digest)


def _lm_eval():
    try:
        import lm_eval
    except ImportError:
        raise QiftError("task accuracy needs lm-eval; install it with `pip install -e .[tasks]` "
                        "(or `pip install lm-eval`)") from None
    return lm_eval


def _offline_unless_reachable() -> None:
    """Put the Hugging Face clients offline when the hub does not answer, so a missing dataset fails at once
    instead of after the clients' retries."""
    from qift_hw.algo.models import hub_reachable

    if hub_reachable():
        return
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    import sys

    if "datasets" in sys.modules:
        sys.modules["datasets"].config.HF_HUB_OFFLINE = True
        sys.modules["datasets"].config.HF_DATASETS_OFFLINE = True


def _quiet_lm_eval() -> None:
    import logging

    for name in ("lm-eval", "lm_eval"):
        logging.getLogger(name).setLevel(logging.ERROR)


def task_manager(names: Sequence[str], local: LocalTask | None, include_paths: Sequence[str | os.PathLike] = (),
                 include_defaults: bool | None = None):
    """lm-eval's TaskManager with the local task's folder included, after checking that every task is known and its
    data loads; QiftError (one line) for an unknown task or one whose dataset is unreachable. ``include_paths``:
    more task folders; ``include_defaults``: index lm-eval's own tasks (default: unless only the local task is
    asked for, which saves indexing thousands of YAML files)."""
    _lm_eval()
    _quiet_lm_eval()
    _offline_unless_reachable()
    from lm_eval.tasks import TaskManager

    if LOCAL_TASK in names and local is None:
        raise QiftError(f"task {LOCAL_TASK} needs its files; build them with build_local_task first")
    paths = [str(p) for p in ([local.folder] if local is not None else []) + list(include_paths)]
    if include_defaults is None:
        include_defaults = any(n != LOCAL_TASK for n in names)
    tm = TaskManager(include_path=paths or None, include_defaults=include_defaults)
    for name in names:
        if name not in tm.all_tasks:
            raise QiftError(f"unknown task {name!r}; use {LOCAL_TASK} (local, offline) or an lm-eval task name "
                            "(`lm-eval ls tasks` lists them)")
        try:
            tm.load_task_or_group([name])
        except Exception as exc:
            from qift_hw.algo.models import short_message

            if name == LOCAL_TASK:
                raise QiftError(f"the local task {name} in {local.folder} does not load ({short_message(exc)}); "
                                "delete that folder and run again") from None
            raise QiftError(f"task {name} needs its dataset from the Hugging Face hub, which is not reachable "
                            f"({short_message(exc)}); use the local task {LOCAL_TASK}, or run where the hub (or "
                            "a local copy of the dataset) is reachable") from None
    return tm


def _result(name: str, res: Mapping[str, Any], n: int) -> TaskResult:
    acc = res.get("acc,none")
    if acc is None:
        raise QiftError(f"task {name} reports no accuracy (metrics {sorted(res)}); choose a task with an acc metric")
    stderr = res.get("acc_stderr,none")
    ppl = res.get("perplexity,none")
    return TaskResult(name, float(acc), float(stderr) if isinstance(stderr, (int, float)) else math.nan, n,
                      float(ppl) if isinstance(ppl, (int, float)) else None)


def evaluate_tasks(model, tokenizer, names: Sequence[str], tm, limit: int | None = None, batch_size: int = 8,
                   bootstrap_iters: int = BOOTSTRAP_ITERS) -> list[TaskResult]:
    """Accuracy of `model` (a transformers causal LM, float or quantized) on the tasks ``names`` through lm-eval's
    HFLM and simple_evaluate, one result per task (a group's member tasks each); ``tm`` from `task_manager`;
    ``limit``: the first N examples of each task."""
    lm_eval = _lm_eval()
    from lm_eval.models.huggingface import HFLM

    _quiet_lm_eval()
    if limit is not None and limit < 1:
        raise QiftError(f"--limit must be at least 1, got {limit}")
    if getattr(tokenizer, "bos_token_id", None) is None and getattr(tokenizer, "eos_token_id", None) is None:
        raise QiftError("the tokenizer has neither a BOS nor an EOS token, which lm-eval puts before each context; "
                        "use a model folder whose tokenizer defines one")
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    out = lm_eval.simple_evaluate(model=lm, tasks=list(names), task_manager=tm, limit=limit, log_samples=False,
                                  bootstrap_iters=bootstrap_iters)
    counts = out.get("n-samples", {})
    return [_result(task, res, int(counts[task].get("effective", counts[task].get("original", 0))))
            for task, res in out["results"].items() if task in counts]


@dataclass
class ModelSpec:
    """What to evaluate: ``kind`` fp, rotated_fp or quant (with its QuantConfig), or checkpoint (with its path)."""

    label: str
    kind: str
    config: Any = None
    checkpoint: Path | None = None


def prepared_model(spec: ModelSpec, base, tokenizer, device: str = "cpu", run_root: Path | None = None,
                   model_id: str = "", backend: Callable | None = None, progress: bool = True
                   ) -> tuple[Any, dict]:
    """The model a spec names, ready for evaluation, and facts about it (W2 layers, backend): a deep copy of the
    float ``base`` (rotated, or quantized with per-layer checkpoints under ``run_root``, as `eval` does), or the
    checkpoint's model. ``backend(model, weights)``: `bridge.sim_backend.eval_backend`'s hook, on quantized models."""
    from qift_hw.algo.checkpoint import read_quantized

    info: dict[str, Any] = {}
    if spec.kind == "checkpoint":
        model, meta, weights = read_quantized(spec.checkpoint, device=device)
        info["w2_layers"] = meta.get("w2_layers")
    elif spec.kind in ("fp", "rotated_fp", "quant"):
        from qift_hw.study.experiments import point_model

        model, qm = point_model(spec.kind, spec.config, base, tokenizer, device, run_root, model_id, progress)
        weights = None
        if qm is not None:
            weights = qm.weights
            info["w2_layers"] = qm.w2_layers
    else:
        raise QiftError(f"unknown model kind {spec.kind!r}; use fp, rotated_fp, quant or checkpoint")
    if backend is not None and weights is not None:
        info["backend"] = backend(model, weights)
    model.eval()
    return model, info


POINT_TASK_FOLDER = Path("runs") / "tasks" / "local"
"""Where `evaluate_point_tasks` writes the local task unless the point names a ``task_folder``."""


def evaluate_point_tasks(point: Mapping[str, Any], base, tokenizer) -> dict[str, float]:
    """Accuracy of each of a run-spec point's ``tasks`` (`study.spec` points; the local task on the point's text),
    task name -> accuracy; the point's model is built from the float ``base`` as `prepared_model` does. Optional
    point keys: ``task_limit`` (examples per task), ``task_folder`` (where the local task is written)."""
    from qift_hw.algo.config import QuantConfig
    from qift_hw.bridge.sim_backend import eval_backend

    names = list(point["tasks"])
    folder = Path(point.get("task_folder") or POINT_TASK_FOLDER)
    local = build_local_task(folder, point["text"]) if LOCAL_TASK in names else None
    tm = task_manager(names, local)
    cfg = QuantConfig.from_dict(point["config"]) if point.get("config") else None
    hook = eval_backend(point["backend"], point.get("sim_hadamard", "unit")) if point["kind"] == "quant" else None
    model, _ = prepared_model(ModelSpec(point["label"], point["kind"], cfg), base, tokenizer,
                              device=point.get("device", "cpu"), run_root=point.get("run_root"),
                              model_id=point["model"], backend=hook, progress=False)
    return {r.task: r.acc for r in evaluate_tasks(model, tokenizer, names, tm, limit=point.get("task_limit"))}
