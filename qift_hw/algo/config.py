"""The quantization recipe: `QuantConfig` holds everything that determines a quantized model.

The 2-bit level set is resolved here, once, from its name (`QuantConfig.level_set`); the driver passes the
`LevelSet` object on to GPTQ, RTN and the scale fit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from qift_hw.algo.mixed import parse_w2_spec
from qift_hw.algo.qmodel import FLOAT_BITS, check_act_quant
from qift_hw.core.errors import QiftError
from qift_hw.core.formats import ACT_CLIP, KV_CLIP
from qift_hw.core.levels import LevelSet, get_level_set

METHODS = ("gptq", "rtn")
SCALE_METHODS = ("mse", "maxabs")
OTHER_BITS = (3, 4, 8, FLOAT_BITS)
COMPUTE_DTYPES = ("float32", "float64")
HOST_FIELDS = ("device", "batch_size")
"""Fields that say where and in what batches a run computes; left out of the configuration's identity. The batch
size can still move GPTQ codes (the calibration forwards round differently per batch shape), so run folders key on
both separately (`algo.run_folder`)."""
RENAMED_FIELDS = {"seed": "calib_seed"}
"""Old key -> field, so that results written before a rename still load."""


@dataclass
class QuantConfig:
    """Everything that determines a quantized model (and the run folder's identity).

    levels: the 2-bit level set for W2 layers; other_bits: 4 (int4), 3 (int3), 8 (int8) or 16 (float) for the
    others; w2_layers: see `qift_hw.algo.mixed`; method: gptq or rtn; scale_method: mse (clip search) or maxabs;
    a_bits / kv_bits: 4 or 16 (off), clipped at a_clip / kv_clip; rotate: QuaRot rotation with `rotation_seed`;
    calibration: `calib_windows` windows of `calib_seqlen` tokens from `calib_source`, sampled with
    `calib_seed`; sensitivity_windows: windows used by the `sensitivity:L` pass.
    """

    levels: str = "mnz"
    method: str = "gptq"
    scale_method: str = "mse"
    w2_layers: str = "all"
    other_bits: int = 4
    a_bits: int = 4
    kv_bits: int = 4
    a_clip: float = ACT_CLIP
    kv_clip: float = KV_CLIP
    rotate: bool = True
    rotation_seed: int = 0
    calib_source: str = "pydoc"
    calib_windows: int = 128
    calib_seqlen: int = 512
    calib_seed: int = 0
    blocksize: int = 128
    act_order: bool = False
    damp: float = 0.01
    true_sequential: bool = True
    sensitivity_windows: int = 32
    batch_size: int = 8
    hessian_dtype: str = "float32"
    gptq_dtype: str = "float32"
    device: str = "cpu"

    @property
    def level_set(self) -> LevelSet:
        """The W2 layers' level set (QiftError for an unknown name or one that is not 2-bit)."""
        ls = get_level_set(self.levels)
        if ls.bits != 2:
            raise QiftError(f"--levels {self.levels!r} is a {ls.bits}-bit set; W2 layers need a 2-bit level set")
        return ls

    @property
    def other_level_set(self) -> LevelSet | None:
        """The level set of the layers that are not W2 (None: they keep float weights)."""
        return None if self.other_bits == FLOAT_BITS else get_level_set(f"int{self.other_bits}")

    def validate(self) -> LevelSet:
        """Raise QiftError for values that cannot work; returns the resolved W2 level set."""
        ls = self.level_set
        if self.method not in METHODS:
            raise QiftError(f"unknown method {self.method!r}; use {' or '.join(METHODS)}")
        if self.scale_method not in SCALE_METHODS:
            raise QiftError(f"unknown scale method {self.scale_method!r}; use {' or '.join(SCALE_METHODS)}")
        if self.other_bits not in OTHER_BITS:
            raise QiftError(f"--other-bits must be 4, 3, 8 or {FLOAT_BITS} (float), got {self.other_bits}")
        parse_w2_spec(self.w2_layers)
        check_act_quant(self.a_bits, self.kv_bits, self.a_clip, self.kv_clip)
        for what, v in (("calibration windows", self.calib_windows), ("calibration seqlen", self.calib_seqlen),
                        ("batch size", self.batch_size), ("blocksize", self.blocksize),
                        ("sensitivity windows", self.sensitivity_windows)):
            if v < 1:
                raise QiftError(f"{what} must be >= 1, got {v}")
        if self.damp < 0:
            raise QiftError(f"damping must be >= 0, got {self.damp}")
        for what, v in (("hessian", self.hessian_dtype), ("gptq", self.gptq_dtype)):
            if v not in COMPUTE_DTYPES:
                raise QiftError(f"{what} dtype must be {' or '.join(COMPUTE_DTYPES)}, got {v}")
        return ls

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> QuantConfig:
        """Build from `to_dict` output; also reads results written before a field was renamed."""
        d = {**{new: d[old] for old, new in RENAMED_FIELDS.items() if old in d}, **d}
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def identity(self) -> dict:
        """The fields that change the quantized weights (not the device or the batch size)."""
        d = self.to_dict()
        for k in HOST_FIELDS:
            d.pop(k)
        return d

    def weights_name(self) -> str:
        """The main weight format: the W2 level set's name as given, or int{other_bits} when no layer is W2."""
        return self.levels if parse_w2_spec(self.w2_layers).kind != "none" else f"int{self.other_bits}"

    def weights_label(self) -> str:
        """The weight precision, e.g. 'W2', 'W4' or 'W2[first:8]/W4'."""
        spec = parse_w2_spec(self.w2_layers)
        if spec.kind == "all":
            return "W2"
        if spec.kind == "none":
            return f"W{self.other_bits}"
        return f"W2[{spec}]/W{self.other_bits}"

    def label(self) -> str:
        """Short human label, e.g. 'mnz gptq W2A4KV4' or 'mnz gptq W2[first:8]/W4A4KV4'."""
        a = f"A{self.a_bits}" if self.a_bits != FLOAT_BITS else "A16"
        kv = f"KV{self.kv_bits}" if self.kv_bits != FLOAT_BITS else ""
        return f"{self.weights_name()} {self.method} {self.weights_label()}{a}{kv}"
