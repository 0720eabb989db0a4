"""The accelerator architecture file: one YAML document, validated with pydantic, that every estimate reads.

It describes the PE array (size, dataflows, the PE kind that runs each weight format), the clock, the on-chip
buffers, DRAM, the Hadamard unit and quantizer, and the per-action energy table. Presets live in the top-level
folder ``sim/accelerators/`` and are found by name (``load_arch("edge")``); any field can be overridden with
dotted keys (``{"array.rows": 64, "dram.gbps": 32}``), which is what the CLI flags do. docs/accelerator.md is the
field reference. A bad file gives one QiftError naming the field and what it accepts.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from qift_hw.core import formats
from qift_hw.core.errors import QiftError
from qift_hw.core.levels import MULTIPLIER_PE, SHIFT_ADD_PES, get_level_set
from qift_hw.core.overrides import set_path

PRESETS_DIR = Path(__file__).resolve().parents[2] / "sim" / "accelerators"
"""The shipped presets (top-level ``sim/accelerators/``), one ``<name>.yaml`` each."""
DEFAULT_ARCH = "edge"

MULTIPLIER_PES = ("int4", "int8")
"""Baseline multiplier PEs, named by the widest weight they take (INT4 activations on both)."""
PE_NAMES = (*SHIFT_ADD_PES, *MULTIPLIER_PES)
PREFILL_DATAFLOWS = ("ws", "os")
DECODE_DATAFLOWS = ("ws", "os", "stream")
TIMINGS = ("v2", "v1", "scalesim")


def default_pe(level_set: str) -> str:
    """The PE kind that runs a weight format by default: its own shift-add PE, else the narrowest multiplier."""
    ls = get_level_set(level_set)
    if ls.pe in SHIFT_ADD_PES:
        return ls.pe
    if ls.pe == MULTIPLIER_PE:
        return next(p for p in MULTIPLIER_PES if ls.bits <= int(p[3:]))
    raise QiftError(f"level set {ls.name!r} has no hardware PE; use one of "
                    f"{', '.join(n for n in ('pot_mnz', 'mnz', 'std', 'pm12', 'int3', 'int4', 'int8'))}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ArrayCfg(_Strict):
    """The PE array: rows take the reduction (K) dimension in WS, columns the output channels."""

    rows: int = Field(32, ge=1, le=4096)
    cols: int = Field(32, ge=1, le=4096)


class Buffer(_Strict):
    """One on-chip SRAM buffer."""

    kib: float = Field(gt=0, description="capacity in KiB")
    word_bits: int = Field(64, ge=8, le=4096, description="bits per access of one bank port")
    banks: int = Field(1, ge=1, le=1024)
    ports: int = Field(1, ge=1, le=4, description="read/write ports per bank")
    double_buffered: bool = Field(True, description="half the capacity is filled while the other half is used")

    @property
    def bytes(self) -> float:
        return self.kib * 1024

    @property
    def tile_bytes(self) -> float:
        """Bytes one tile may use: half the buffer when double-buffered."""
        return self.bytes / 2 if self.double_buffered else self.bytes

    @property
    def bytes_per_cycle(self) -> float:
        """Peak bytes per cycle over all banks and ports."""
        return self.banks * self.ports * self.word_bits / 8


class Buffers(_Strict):
    weight: Buffer = Buffer(kib=256, word_bits=256, banks=8)
    act: Buffer = Buffer(kib=128, word_bits=128, banks=4)
    out: Buffer = Buffer(kib=128, word_bits=256, banks=4)


class Dram(_Strict):
    """Off-chip memory: bandwidth in GB/s (1e9 bytes/s), energy per bit moved, burst (smallest transfer)."""

    gbps: float = Field(16.0, gt=0)
    pj_per_bit: float = Field(20.0, ge=0)
    burst_bytes: int = Field(64, ge=1, le=1 << 20)


class HadamardUnit(_Strict):
    """Online Hadamard transform: elements accepted per cycle (0 = array rows) and the orders it supports
    (empty = any order the framework can build)."""

    lanes: int = Field(0, ge=0, le=65536)
    orders: tuple[int, ...] = ()


class Quantizer(_Strict):
    """INT4 quantizer after the Hadamard unit (max|y|, scale, round): elements per cycle (0 = Hadamard lanes)."""

    lanes: int = Field(0, ge=0, le=65536)


class EnergyTable(_Strict):
    """Energy per action in pJ. Defaults: 45 nm figures (Horowitz, ISSCC 2014) and, for the PEs, the int8 MAC
    scaled by the synthesized PE cell counts; docs/energy.md derives every number."""

    source: str = "Horowitz ISSCC 2014 (45 nm); PE ratios from the project's synthesis (docs/energy.md)"
    mac_pj: dict[str, float] = Field(default_factory=lambda: {
        "pot_mnz": 0.139, "mnz": 0.143, "std": 0.142, "pm12": 0.143, "int4": 0.168, "int8": 0.30})
    reg_pj_per_bit: float = Field(0.004, ge=0, description="one flip-flop write per bit (array pipeline registers)")
    sram_pj_per_bit: float = Field(10.0 / 64, ge=0, description="read or write per bit of an sram_ref_kib SRAM bank")
    sram_ref_kib: float = Field(8.0, gt=0)
    sram_size_exponent: float = Field(0.5, ge=0, le=1, description="energy/bit grows as (bank kib/ref)^exponent")
    had_add_pj: float = Field(0.065, ge=0, description="one butterfly or K-stage add/subtract (about 20 bits)")
    quant_pj_per_elem: float = Field(0.75, ge=0, description="INT4 quantizer per element: max|y| and eight "
                                     "threshold compares of about 25 bits")

    @field_validator("mac_pj")
    @classmethod
    def _known_pes(cls, v: dict[str, float]) -> dict[str, float]:
        bad = [k for k in v if k not in PE_NAMES]
        if bad:
            raise ValueError(f"unknown PE kind {bad[0]!r}; allowed: {', '.join(PE_NAMES)}")
        if any(x < 0 for x in v.values()):
            raise ValueError("MAC energies must be >= 0")
        return v


class Arch(_Strict):
    """A whole accelerator. ``pe`` maps weight formats (level sets) to the PE kind that runs them."""

    name: str = "custom"
    description: str = ""
    array: ArrayCfg = ArrayCfg()
    dataflow: Literal["ws", "os"] = Field("ws", description="dataflow of prefill (M > decode_max_m)")
    decode_dataflow: Literal["ws", "os", "stream"] = "stream"
    decode_max_m: int = Field(8, ge=0, le=4096, description="GEMMs with M at most this use decode_dataflow")
    timing: Literal["v2", "v1", "scalesim"] = Field("v2", description="v2 overlapped passes (default), v1 "
                                                   "back-to-back passes, scalesim: SCALE-Sim 3.0.0's compute cycles")
    clock_mhz: float = Field(1000.0, gt=0, le=1e5)
    acc_bits: int = Field(formats.ACC_BITS, ge=2, le=64)
    act_bits: int = Field(formats.ACT_BITS, ge=1, le=16)
    kv_bits: int = Field(formats.KV_BITS, ge=1, le=16)
    out_bytes: int = Field(2, ge=1, le=8, description="bytes per output element leaving the accelerator (FP16)")
    pe: dict[str, str] = Field(default_factory=dict, description="level set -> PE kind; unlisted sets use their "
                               "own shift-add PE or the narrowest multiplier")
    buffers: Buffers = Buffers()
    dram: Dram = Dram()
    hadamard: HadamardUnit = HadamardUnit()
    quantizer: Quantizer = Quantizer()
    energy: EnergyTable = EnergyTable()
    area_json: str | None = Field(None, description="rtl_area.json of `qift-hw rtl area` (PE cell counts); "
                                  "relative to the repository root or absolute")
    pnr_json: str | None = Field(None, description="rtl_pnr.json of `sw/rtl_pnr.py` (FPGA place and route: PE "
                                 "LUTs and Fmax, multipliers in LUTs); relative to the repository root or absolute")
    clock_from_pnr: bool = Field(False, description="run each format at the post-route Fmax of its PE from "
                                 "pnr_json (the slowest PE a format uses) instead of clock_mhz")

    @field_validator("pe")
    @classmethod
    def _pe_map(cls, v: dict[str, str]) -> dict[str, str]:
        for ls, kind in v.items():
            get_level_set(ls)
            if kind not in PE_NAMES:
                raise ValueError(f"PE kind {kind!r} for {ls!r} is unknown; allowed: {', '.join(PE_NAMES)}")
        return v

    @model_validator(mode="after")
    def _acc_holds_a_product(self) -> "Arch":
        formats.acc_range(self.acc_bits)
        if self.clock_from_pnr and not self.pnr_json:
            raise ValueError("clock_from_pnr needs pnr_json (the place-and-route results to read Fmax from)")
        return self

    def pe_of(self, level_set: str) -> str:
        """The PE kind this accelerator runs ``level_set`` weights on."""
        name = get_level_set(level_set).name
        return self.pe.get(name) or default_pe(name)

    @property
    def bytes_per_cycle(self) -> float:
        """DRAM bytes per clock cycle."""
        return self.dram.gbps * 1e9 / (self.clock_mhz * 1e6)

    @property
    def had_lanes(self) -> int:
        return self.hadamard.lanes or self.array.rows

    @property
    def quant_lanes(self) -> int:
        return self.quantizer.lanes or self.had_lanes

    def digest(self) -> str:
        """SHA-256 of the resolved architecture (every field, defaults included): the cache key of a point."""
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def list_presets() -> list[str]:
    """Names of the shipped presets."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def _field_error(exc: ValidationError, where: str) -> QiftError:
    err = exc.errors()[0]
    loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return QiftError(f"{where}: unknown field {loc}; see docs/accelerator.md for the fields an architecture "
                         "file takes")
    got = err.get("input")
    if not isinstance(got, (dict, list)):
        msg = f"{msg} (got {got!r})"
    return QiftError(f"{where}: field {loc}: {msg}")


def resolve_arch_path(name_or_path: str | Path) -> Path:
    """A preset name (``sim/accelerators/<name>.yaml``) or a path to a YAML file."""
    text = str(name_or_path)
    p = Path(text)
    if p.suffix in (".yaml", ".yml") or p.is_file():
        if not p.is_file():
            raise QiftError(f"architecture file {p} does not exist; give a preset ({', '.join(list_presets())}) "
                            "or a YAML path")
        return p
    preset = PRESETS_DIR / f"{text}.yaml"
    if not preset.is_file():
        raise QiftError(f"unknown accelerator preset {text!r}; use one of {', '.join(list_presets())} or a YAML path")
    return preset


def read_arch_data(name_or_path: str | Path) -> dict:
    """The raw mapping of an architecture file (QiftError on unreadable or malformed YAML)."""
    path = resolve_arch_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise QiftError(f"cannot read architecture file {path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise QiftError(f"architecture file {path} is not valid YAML{at}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise QiftError(f"architecture file {path} must be a mapping of fields, got {type(data).__name__}")
    data.setdefault("name", path.stem)
    return data


def arch_from_data(data: Mapping[str, Any], overrides: Mapping[str, Any] | None = None,
                   where: str = "architecture") -> Arch:
    """Validate a mapping (plus dotted-key overrides) into an Arch."""
    data = json.loads(json.dumps(dict(data)))
    for key, value in (overrides or {}).items():
        if value is not None:
            set_path(data, key, value, "override")
    try:
        return Arch.model_validate(data)
    except ValidationError as exc:
        raise _field_error(exc, where) from None
    except QiftError as exc:
        raise QiftError(f"{where}: {exc}") from None


def load_arch(name_or_path: str | Path | Arch | None = None, overrides: Mapping[str, Any] | None = None) -> Arch:
    """An Arch from a preset name or YAML path (default ``DEFAULT_ARCH``), with dotted-key overrides applied."""
    if isinstance(name_or_path, Arch):
        if not overrides:
            return name_or_path
        return arch_from_data(name_or_path.model_dump(mode="json"), overrides, name_or_path.name)
    src = DEFAULT_ARCH if name_or_path is None else name_or_path
    return arch_from_data(read_arch_data(src), overrides, str(resolve_arch_path(src)))
