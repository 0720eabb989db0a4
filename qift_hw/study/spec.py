"""Run specs: one YAML file names the model, text, calibration, quantization points, seeds and evaluation of an
accuracy experiment; `expand` turns it into the grid points that `qift_hw.study.points.run_point` runs.

A spec is validated by pydantic models (unknown fields refused) and every level set and W2 layer map is checked
before anything runs; a failure is one QiftError naming the field (``points.2.levels``) and what it takes.
``points`` is a list of groups; each list field of a group is an axis and the group's points are the cartesian
product of its axes (outer to inner in `AXES` order, level set fastest), each run once per calibration seed (of
``calibration.seeds``) and rotation seed (``rotation_seeds``). FP points run once, rotated FP once per rotation
seed, RTN points with a fixed W2 map once per rotation seed (they read no calibration). docs/pipeline.md ("Run
specs, seeds and grids") is the reference.
"""

from __future__ import annotations

import hashlib
import importlib
import itertools
import json
import os
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Sequence

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from qift_hw.algo.config import QuantConfig
from qift_hw.algo.mixed import parse_w2_spec
from qift_hw.algo.qmodel import FLOAT_BITS
from qift_hw.core.errors import QiftError
from qift_hw.core.levels import get_level_set
from qift_hw.core.overrides import apply_overrides, parse_overrides
from qift_hw.study.explore import read_yaml
from qift_hw.study.points import TASK_FUNCTION, TASK_RUNNER

DEFAULT_CACHE = "runs/cache/run"
"""One cache for every spec, so that specs sharing points (demo and full) compute them once."""
DEFAULT_RUN_ROOT = "runs/gptq"
"""Per-layer GPTQ checkpoints (a point interrupted mid-quantization resumes at its last finished layer)."""
BACKENDS = ("torch", "int", "sim")
_Q = QuantConfig()


def _as_list(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _level_name(name: str) -> str:
    try:
        ls = get_level_set(name)
    except QiftError as exc:
        raise ValueError(str(exc)) from None
    if ls.bits != 2:
        raise ValueError(f"{name!r} is a {ls.bits}-bit set; W2 layers need a 2-bit level set")
    return name


def _w2_map(spec: str) -> str:
    try:
        parse_w2_spec(spec)
    except QiftError as exc:
        raise ValueError(str(exc)) from None
    return spec


def _many(item: Any) -> Any:
    return Annotated[list[item], BeforeValidator(_as_list), Field(min_length=1)]


Bits = Literal[2, 3, 4, 5, 6, 7, 8, 16]


class Calibration(BaseModel):
    """Calibration windows (GPTQ and the sensitivity pass): count, length and the sampling seeds."""

    model_config = ConfigDict(extra="forbid")

    windows: int = Field(_Q.calib_windows, ge=1)
    seqlen: int = Field(_Q.calib_seqlen, ge=2)
    seeds: _many(int) = [_Q.calib_seed]
    batch_size: int = Field(_Q.batch_size, ge=1)
    true_sequential: bool = _Q.true_sequential


class Evaluation(BaseModel):
    """Perplexity on non-overlapping windows of the text's eval split; ``tasks``: lm-eval task names."""

    model_config = ConfigDict(extra="forbid")

    windows: int | None = Field(None, ge=1)
    seqlen: int = Field(2048, ge=2)
    tasks: list[str] = []


class PointGroup(BaseModel):
    """A group of points: the cartesian product of its list fields (each also takes one value)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["quant", "fp", "rotated_fp"] = "quant"
    label: str | None = None
    levels: _many(Annotated[str, AfterValidator(_level_name)]) = [_Q.levels]
    methods: _many(Literal["gptq", "rtn"]) = [_Q.method]
    w2_layers: _many(Annotated[str, AfterValidator(_w2_map)]) = [_Q.w2_layers]
    other_bits: _many(Literal[3, 4, 8, 16]) = [_Q.other_bits]
    a_bits: _many(Bits) = [_Q.a_bits]
    kv_bits: _many(Bits) = [_Q.kv_bits]
    a_clip: _many(Annotated[float, Field(gt=0, le=1)]) = [_Q.a_clip]
    kv_clip: _many(Annotated[float, Field(gt=0, le=1)]) = [_Q.kv_clip]
    scale_method: _many(Literal["mse", "maxabs"]) = [_Q.scale_method]
    act_order: _many(bool) = [_Q.act_order]
    calib_windows: _many(Annotated[int, Field(ge=1)]) | None = None
    rotate: bool = _Q.rotate
    rotation_seeds: _many(int) = [_Q.rotation_seed]


class RunSpec(BaseModel):
    """A whole experiment."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    description: str = ""
    model: str = "smollm2"
    text: str = "pydoc"
    calibration: Calibration = Calibration()
    evaluation: Evaluation = Evaluation()
    points: Annotated[list[PointGroup], Field(min_length=1)]
    backend: Literal["torch", "int", "sim"] = "torch"
    sim_hadamard: Literal["unit", "float"] = "unit"
    device: Annotated[str, Field(pattern=r"^(cpu|cuda(:\d+)?|mps|auto)$")] = "cpu"
    threads: int | None = Field(None, ge=1)
    cache: str | None = DEFAULT_CACHE
    run_root: str | None = DEFAULT_RUN_ROOT


AXES = ("w2_layers", "other_bits", "a_bits", "kv_bits", "a_clip", "kv_clip", "scale_method", "act_order",
        "calib_windows", "methods", "levels")
"""A group's axes from outer to inner; the seeds vary fastest (calibration seed, then rotation seed)."""
GROUP_FIELD = {"methods": "method", "calib_windows": "calib_windows"}
"""Group axis -> QuantConfig field where the names differ (the rest share the name)."""


def _error(exc: ValidationError, where: str) -> QiftError:
    err = exc.errors()[0]
    loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "too_short":
        return QiftError(f"{where}: field {loc} is an empty list; give at least one value")
    if err["type"] == "extra_forbidden":
        return QiftError(f"{where}: unknown field {loc}; see docs/pipeline.md (Run specs) for the fields")
    got = err.get("input")
    shown = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
    return QiftError(f"{where}: field {loc}: {msg}{shown}")


def parse_spec(data: Any, source: str = "spec", overrides: Sequence[str] = ()) -> RunSpec:
    """A validated spec from a parsed YAML mapping and ``--set`` overrides."""
    if not isinstance(data, dict):
        raise QiftError(f"{source} must be a mapping of fields, got {type(data).__name__}")
    try:
        spec = RunSpec.model_validate(apply_overrides(data, parse_overrides(overrides)))
    except ValidationError as exc:
        raise _error(exc, source) from None
    check_tasks(spec, source)
    return spec


def load_spec(path: str | os.PathLike, overrides: Sequence[str] = ()) -> RunSpec:
    """A spec file with ``--set`` overrides applied."""
    return parse_spec(read_yaml(path, "spec file"), f"spec file {path}", overrides)


def check_tasks(spec: RunSpec, source: str = "spec") -> None:
    """QiftError when the spec asks for lm-eval tasks and no task runner is importable."""
    if not spec.evaluation.tasks:
        return
    try:
        runner = importlib.import_module(TASK_RUNNER)
    except ImportError:
        runner = None
    if not hasattr(runner, TASK_FUNCTION):
        raise QiftError(f"{source}: field evaluation.tasks {spec.evaluation.tasks} needs the task runner "
                        f"{TASK_RUNNER}.{TASK_FUNCTION} (lm-eval), which this installation lacks; leave "
                        "evaluation.tasks empty")


def resolved_yaml(spec: RunSpec) -> str:
    """The spec with every default filled in, as YAML (saved beside the results)."""
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)


def base_config(spec: RunSpec) -> QuantConfig:
    """The QuantConfig every point starts from: QuantConfig's defaults and the spec's text and calibration."""
    c = spec.calibration
    return QuantConfig(calib_source=text_source(spec.text), calib_windows=c.windows, calib_seqlen=c.seqlen,
                       calib_seed=c.seeds[0], batch_size=c.batch_size, true_sequential=c.true_sequential,
                       device="cpu" if spec.device == "auto" else spec.device)


def text_source(text: str) -> str:
    """A text file as an absolute path (workers may run elsewhere); a named source as is."""
    p = Path(text).expanduser()
    return str(p.resolve()) if p.is_file() else text


def _rotated_label(a_bits: int, kv_bits: int) -> str:
    if a_bits == FLOAT_BITS and kv_bits == FLOAT_BITS:
        return "rotated FP"
    return f"rotated FP A{a_bits}" + (f"KV{kv_bits}" if kv_bits != FLOAT_BITS else "")


def group_configs(group: PointGroup, base: QuantConfig, seeds: Sequence[int]) -> list[tuple[str, QuantConfig | None]]:
    """(label, config) of every point of a group, seeds innermost (config None for FP)."""
    if group.kind == "fp":
        return [(group.label or "FP", None)]
    axes = [getattr(group, a) if getattr(group, a) is not None else [base.calib_windows] for a in AXES]
    out = []
    if group.kind == "rotated_fp":
        for a, kv, rs in itertools.product(group.a_bits, group.kv_bits, group.rotation_seeds):
            cfg = replace(base, rotate=True, a_bits=a, kv_bits=kv, rotation_seed=rs)
            out.append((group.label or _rotated_label(a, kv), cfg))
        return out
    for values in itertools.product(*axes):
        fields = {GROUP_FIELD.get(a, a): v for a, v in zip(AXES, values)}
        calib_seeds = seeds if uses_calibration(fields) else [_Q.calib_seed]  # unused: one run, one cache key
        for cs, rs in itertools.product(calib_seeds, group.rotation_seeds):
            cfg = replace(base, **fields, calib_seed=cs, rotation_seed=rs, rotate=group.rotate)
            try:
                cfg.validate()
            except QiftError as exc:
                raise QiftError(f"points: {exc}") from None
            out.append((group.label or cfg.label(), cfg))
    return out


def uses_calibration(fields: Mapping[str, Any]) -> bool:
    """Whether a quantized point reads calibration windows: GPTQ, or a W2 map chosen by sensitivity (RTN with a
    fixed map does not, so it runs once, not once per calibration seed)."""
    return fields["method"] == "gptq" or parse_w2_spec(fields["w2_layers"]).needs_scores


def point_id(kind: str, label: str, config: Mapping[str, Any] | None) -> str:
    """What a point is apart from its seeds (the rows of one point id are its seed repeats)."""
    ident = None if config is None else {k: v for k, v in config.items()
                                         if k not in ("calib_seed", "rotation_seed", "device", "batch_size")}
    text = json.dumps({"kind": kind, "label": label, "config": ident}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def expand(spec: RunSpec) -> list[dict]:
    """The grid points of a spec, in spec order: one JSON-able dict per point x seed (`run_point`'s input)."""
    from qift_hw.algo.models import model_source

    base = base_config(spec)
    text = text_source(spec.text)
    points = []
    for g, group in enumerate(spec.points):
        for label, cfg in group_configs(group, base, spec.calibration.seeds):
            conf = cfg.to_dict() if cfg is not None else None
            ratio = None
            if cfg is not None and group.kind == "quant":
                ls = cfg.level_set
                ratio = ls.ratio if ls.name.startswith("ratio:") else None
            points.append({
                "group": g, "kind": group.kind, "label": label, "point_id": point_id(group.kind, label, conf),
                "config": conf, "ratio": ratio,
                "calib_seed": cfg.calib_seed if group.kind == "quant" and uses_calibration(conf) else None,
                "rotation_seed": cfg.rotation_seed if cfg is not None and cfg.rotate else None,
                "model": model_source(spec.model), "text": text,
                "eval_windows": spec.evaluation.windows, "eval_seqlen": spec.evaluation.seqlen,
                "tasks": list(spec.evaluation.tasks), "backend": spec.backend, "sim_hadamard": spec.sim_hadamard,
                "device": base.device, "threads": spec.threads,
                "run_root": str(Path(spec.run_root).resolve()) if spec.run_root else None,
            })
    return points


HOST_KEYS = ("threads", "run_root", "group")
"""Point keys that do not change its results (left out of the cache identity)."""


@lru_cache(maxsize=None)
def _source_digest(model: str, text: str) -> tuple[str, str]:
    from qift_hw.algo.data import HUB_SOURCES, text_digest

    p = Path(model).expanduser()
    if p.exists():
        files = sorted(f for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())
        h = hashlib.sha256()
        for f in files:
            st = f.stat()
            h.update(f"{f.relative_to(p) if f != p else f.name}:{st.st_size}:{st.st_mtime_ns}\0".encode())
        model_key = f"files-sha256:{h.hexdigest()[:32]}"
    else:
        model_key = f"name:{model}"
    text_key = text_digest(text) if text in HUB_SOURCES or Path(text).expanduser().exists() or text == "pydoc" \
        else f"name:{text}"
    return model_key, text_key


def identity(point: Mapping[str, Any]) -> dict:
    """A point's cache identity: the point without host settings, plus the model files (names, sizes, times) and
    the text's content digest, so a model or text changed in place is recomputed."""
    model_key, text_key = _source_digest(point["model"], point["text"])
    return {**{k: v for k, v in point.items() if k not in HOST_KEYS}, "model_files": model_key, "text_digest": text_key}


def describe(point: Mapping[str, Any]) -> str:
    """A point in one short line (for progress and failure messages)."""
    cfg = point.get("config") or {}
    seeds = [f"calib seed {point['calib_seed']}"] if point.get("calib_seed") is not None else []
    seeds += [f"rotation seed {point['rotation_seed']}"] if point.get("rotation_seed") is not None else []
    calib = f", calib {cfg['calib_windows']}x{cfg['calib_seqlen']}" if point.get("kind") == "quant" else ""
    return f"{point['label']}{calib}" + (f" ({', '.join(seeds)})" if seeds else "")


def check_sources(spec: RunSpec) -> None:
    """QiftError, before any worker starts, when the model names a local path that does not exist (the rule of
    `qift_hw.algo.models.load_model`: a path starts with . / ~, has two slashes or ends in .gguf) or a local
    text cannot be read."""
    from qift_hw.algo.data import HUB_SOURCES, load_text

    model = spec.model
    local = model.startswith((".", "/", "~")) or model.count("/") > 1 or model.lower().endswith(".gguf")
    if local and not Path(model).expanduser().exists():
        raise QiftError(f"model {model!r}: no such file or folder; give a HF folder, a .gguf file, a hub id or "
                        "smollm2")
    if spec.text not in HUB_SOURCES:
        load_text(spec.text, "eval")
