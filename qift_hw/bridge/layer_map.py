"""Per-layer weight formats from the pipeline's outputs, for the accelerator estimate.

A layer map is ``{module name: level set}`` over every decoder linear of a model: the W2/W4/W3 choice of a mixed
run. It comes from a quantized checkpoint (`qift-hw eval --export`, `qift-hw quantize`: the metadata entry
``linears``, read without the tensors) or from a results JSON of the pipeline (one row's ``linears`` list). The
map is checked against the model the estimate runs: a map of another model is one error saying so.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from qift_hw.core.errors import QiftError
from qift_hw.core.shapes import ModelShape, load_model_shape
from qift_hw.sim.workload import parse_format_map


@dataclass(frozen=True)
class LayerMap:
    """A per-linear format map and where it came from. ``shape``: the model the file was made from, when the file
    says (a checkpoint's Hugging Face config; a results file's built-in model name)."""

    source: str
    kind: str
    formats: dict[str, str]
    label: str
    digest: str
    shape: ModelShape | None = None
    row: str | None = None
    linear_shapes: dict[str, tuple[int, int]] | None = None

    def counts(self) -> dict[str, int]:
        """Linears per level set (lm_head excluded)."""
        out: dict[str, int] = {}
        for name, ls in self.formats.items():
            if not name.endswith("lm_head"):
                out[ls] = out.get(ls, 0) + 1
        return dict(sorted(out.items()))


def _label(formats_: dict[str, str]) -> str:
    names = sorted({ls for n, ls in formats_.items() if not n.endswith("lm_head")})
    return "map:" + "+".join(names)


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _shape_of_config(hf_config: dict) -> ModelShape:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps(hf_config))
        return load_model_shape(tmp)


def _from_checkpoint(path: Path) -> LayerMap:
    from qift_hw.algo.checkpoint import read_metadata

    meta = read_metadata(path)
    linears = meta.get("linears")
    if not linears:
        raise QiftError(f"checkpoint {path} lists no quantized linears; pass a model exported by "
                        "`qift-hw eval --export` or `qift-hw quantize`")
    formats_ = {name: info["level_set"] for name, info in linears.items()}
    shapes = {name: (info["shape"][0], info["shape"][1]) for name, info in linears.items()}
    cfg = meta.get("hf_config")
    shape = _shape_of_config(cfg) if isinstance(cfg, dict) else None
    return LayerMap(str(path), "checkpoint", formats_, _label(formats_), _digest(path), shape, None, shapes)


def _pick_row(path: Path, rows: list[dict], row: str | None) -> dict:
    quant = [r for r in rows if isinstance(r, dict) and r.get("linears")]
    if not quant:
        raise QiftError(f"results file {path} has no row with a per-linear level-set list ('linears'); give the "
                        "results.json of a quantized `qift-hw eval` run")
    labels = [str(r.get("label")) for r in quant]
    if row is not None:
        hits = [r for r in quant if r.get("label") == row]
        if not hits:
            more = f" (and {len(labels) - 8} more)" if len(labels) > 8 else ""
            raise QiftError(f"results file {path} has no quantized row labelled {row!r}; its rows: "
                            f"{'; '.join(labels[:8])}{more}")
        return hits[-1]
    if len(quant) == 1:
        return quant[0]
    mixed = [r for r in quant if len({x.get("level_set") for x in r["linears"]}) > 1]
    if len(mixed) == 1:
        return mixed[0]
    shown = [str(r.get("label")) for r in mixed] or labels[:4]
    raise QiftError(f"results file {path} has {len(quant)} quantized rows; pick one with --layer-map-row LABEL "
                    f"({'mixed rows' if mixed else 'e.g.'}: {'; '.join(shown)})")


def _from_results(path: Path, row: str | None) -> LayerMap:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise QiftError(f"cannot read layer map {path} as a results JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise QiftError(f"{path} is not a results JSON of the pipeline (no 'rows' list); give results.json of "
                        "`qift-hw eval` or a .safetensors checkpoint")
    picked = _pick_row(path, data["rows"], row)
    try:
        formats_ = {str(x["name"]): str(x["level_set"]) for x in picked["linears"]}
    except (KeyError, TypeError):
        raise QiftError(f"results file {path}: row {picked.get('label')!r} has a malformed 'linears' list (each "
                        "entry needs name and level_set)") from None
    shape = None
    model = (data.get("meta") or {}).get("model")
    if isinstance(model, str):
        try:
            shape = load_model_shape(model) if "/" not in model else None
        except QiftError:
            shape = None
    return LayerMap(str(path), "results", formats_, _label(formats_), _digest(path), shape, str(picked.get("label")))


def read_layer_map(path: str | Path, row: str | None = None) -> LayerMap:
    """The layer map of a quantized checkpoint (``.safetensors``) or a pipeline results JSON (``row``: the label
    of the row to take; default the only quantized row, else the only mixed one)."""
    p = Path(path)
    if not p.is_file():
        raise QiftError(f"layer map {p} does not exist; give a .safetensors checkpoint or a results.json of the "
                        "pipeline")
    if p.suffix == ".safetensors":
        return _from_checkpoint(p)
    return _from_results(p, row)


def _dims(shape: ModelShape) -> str:
    return f"{shape.layers} layers, hidden {shape.hidden}, intermediate {shape.intermediate}"


def check_layer_map(lmap: LayerMap, shape: ModelShape) -> dict[str, str]:
    """The map's formats, checked to belong to ``shape`` (every linear once, the weight shapes of this model);
    one QiftError naming both models otherwise."""
    other = lmap.shape
    if other is not None and (other.layers, other.hidden, other.intermediate, other.heads, other.kv_heads) != (
            shape.layers, shape.hidden, shape.intermediate, shape.heads, shape.kv_heads):
        raise QiftError(f"layer map {lmap.source} is of another model ({other.name}: {_dims(other)}) than "
                        f"--model {shape.name} ({_dims(shape)}); pass the --model it was made from")
    if lmap.linear_shapes:
        want = shape.weight_shapes()
        for name, nk in lmap.linear_shapes.items():
            short = name.rsplit(".", 1)[-1]
            if short in want and short != "lm_head" and tuple(want[short]) != tuple(nk):
                raise QiftError(f"layer map {lmap.source} is of another model: {name} is {nk[0]}x{nk[1]}, "
                                f"{shape.name}'s {short} is {want[short][0]}x{want[short][1]}; pass the --model it "
                                "was made from")
    try:
        parse_format_map(lmap.formats, shape)
    except QiftError as exc:
        raise QiftError(f"layer map {lmap.source}: {exc}") from None
    return {k: v for k, v in lmap.formats.items() if not k.endswith("lm_head")}
