"""Weight level sets, per-output-channel scales, quantization and 2-bit code packing.

A level set lists the values a weight may take in units of its row's scale. Every 2-bit set uses one code
convention, the one the hardware decodes: bit 1 is the sign (1 = negative) and bit 0 selects the larger
magnitude. For the symmetric sets {-o, -i, +i, +o} that gives 0 -> +i, 1 -> +o, 2 -> -i, 3 -> -o. The integer
grids (``std`` = {-2, -1, 0, +1}, ``int3``, ``int4``, ``int8``) use two's complement codes, whose top bit is
again the sign. ``asym`` stores the unsigned index 0..3 and a per-row zero point.

A set the accelerator computes with also carries its hardware view: ``unit`` (level = unit * integer weight; the
unit is folded into the weight scale, so the datapath sees only integers) and ``pe``, the processing element that
multiplies its integer weight by an activation (one of ``PE_KINDS``). Every hardware table (the code -> integer
weight table, product ranges, the model's and the RTL's PE variants) is derived from these two fields.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import NamedTuple

import numpy as np
import torch
from scipy.special import ndtr, ndtri

from qift_hw.core.errors import QiftError

KINDS = ("symmetric", "integer", "asym")

SHIFT_ADD_PES = ("pot_mnz", "mnz", "pm12", "std")
"""Multiplier-free PE variants, each named for the 2-bit set it decodes with sign, shift and add only."""
MULTIPLIER_PE = "multiplier"
"""The baseline PE: a two's complement multiplier, for the integer grids int3/int4/int8."""
PE_KINDS = (*SHIFT_ADD_PES, MULTIPLIER_PE)


@dataclass(frozen=True)
class LevelSet:
    """A named, fixed set of quantization levels (in units of the per-channel scale) and its code map."""

    name: str
    levels: np.ndarray = field(repr=False)
    bits: int
    kind: str
    code_of_level: np.ndarray = field(repr=False)
    description: str = ""
    unit: float | None = None
    pe: str | None = None

    def __post_init__(self) -> None:
        if self.pe is not None and (self.pe not in PE_KINDS or self.unit is None):
            raise QiftError(f"level set {self.name!r}: PE kind {self.pe!r} needs a unit and one of "
                            f"{', '.join(PE_KINDS)}")
        if self.unit is not None:
            w = self.level_of_code / self.unit
            if not np.all(w == np.round(w)):
                raise QiftError(f"level set {self.name!r}: every code's level must be an integer times "
                                f"unit={self.unit}")

    @property
    def int_weights(self) -> np.ndarray:
        """Integer weight of each code (index = code), level / unit: e.g. pot_mnz [1, 4, -1, -4], mnz [1, 3, -1, -3]."""
        if self.unit is None:
            choices = ", ".join(name for name, ls in LEVEL_SETS.items() if ls.unit is not None)
            raise QiftError(f"level set {self.name!r} has no integer weights (its levels are not integers times one "
                            f"unit); use one of {choices}")
        return np.round(self.level_of_code / self.unit).astype(np.int64)

    @property
    def ratio(self) -> float | None:
        """Inner/outer magnitude ratio of a 4-level symmetric set (None for other sets)."""
        if self.kind != "symmetric" or len(self.levels) != 4:
            return None
        return float(self.levels[2] / self.levels[3])

    @property
    def shift_friendly(self) -> bool:
        """True when every magnitude, relative to the smallest non-zero one, is a power of two (sign-and-shift)."""
        mags = np.unique(np.abs(self.levels[self.levels != 0]))
        if self.kind == "asym":
            return False
        rel = mags / mags.min()
        return bool(np.all(np.isclose(rel, 2.0 ** np.round(np.log2(rel)))))

    @property
    def level_of_code(self) -> np.ndarray:
        """Level value for each code 0 .. 2^bits-1 (NaN for unused codes)."""
        out = np.full(2**self.bits, np.nan)
        out[self.code_of_level] = self.levels
        return out

    @property
    def index_of_code(self) -> np.ndarray:
        """Position in ``levels`` for each code (-1 for unused codes)."""
        out = np.full(2**self.bits, -1, dtype=np.int64)
        out[self.code_of_level] = np.arange(len(self.levels))
        return out

    def decode(self, codes: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Map codes to levels (in scale units); for ``asym`` this is the unsigned index, before the zero point."""
        table = torch.as_tensor(self.level_of_code, dtype=torch.float64)
        codes_t = torch.as_tensor(codes).long()
        return table.to(codes_t.device)[codes_t]


def _integer_set(name: str, bits: int, description: str, pe: str) -> LevelSet:
    """The two's complement grid [-2^(bits-1), 2^(bits-1) - 1]; its levels are its integer weights (unit 1)."""
    lv = np.arange(-(2 ** (bits - 1)), 2 ** (bits - 1), dtype=np.float64)
    codes = (lv.astype(np.int64) & (2**bits - 1)).astype(np.uint8)
    return LevelSet(name, lv, bits, "integer", codes, description, unit=1.0, pe=pe)


def _symmetric_set(name: str, inner: float, outer: float, description: str, unit: float | None = None,
                   pe: str | None = None) -> LevelSet:
    if not 0 < inner < outer:
        raise QiftError(f"level set {name!r}: need 0 < inner < outer, got inner={inner}, outer={outer}")
    lv = np.array([-outer, -inner, inner, outer], dtype=np.float64)
    codes = np.array([3, 2, 0, 1], dtype=np.uint8)
    return LevelSet(name, lv, 2, "symmetric", codes, description, unit, pe)


def _gauss_cell_mse(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """E[(x - c)^2; a < x < b] for x ~ N(0, 1), closed form (a, b may be infinite)."""
    a, b = np.clip(a, -40.0, 40.0), np.clip(b, -40.0, 40.0)  # the density is 0 to double precision out there
    pa, pb = np.exp(-0.5 * a**2) / math.sqrt(2 * math.pi), np.exp(-0.5 * b**2) / math.sqrt(2 * math.pi)
    return (1 + c**2) * (ndtr(b) - ndtr(a)) - (b * pb - a * pa) + 2 * c * (pb - pa)


def gaussian_mse_at_scale(levels: np.ndarray, scale: float) -> float:
    """MSE of nearest-level quantization of N(0,1) onto ``scale * levels`` (exact, by cells)."""
    c = np.sort(np.asarray(levels, dtype=np.float64)) * scale
    mid = (c[1:] + c[:-1]) / 2
    a = np.concatenate([[-np.inf], mid])
    b = np.concatenate([mid, [np.inf]])
    return float(_gauss_cell_mse(a, b, c).sum())


def gaussian_mse(ls: LevelSet | np.ndarray) -> tuple[float, float]:
    """(MSE, best scale) of quantizing N(0,1) to the level set at its MSE-optimal scale."""
    from scipy.optimize import minimize_scalar

    levels = _gaussian_levels(ls)
    span = float(np.max(np.abs(levels)))
    grid = np.linspace(0.05, 6.0, 240) / span
    errs = [gaussian_mse_at_scale(levels, s) for s in grid]
    i = int(np.argmin(errs))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    res = minimize_scalar(lambda s: gaussian_mse_at_scale(levels, s), bounds=(lo, hi), method="bounded",
                          options={"xatol": 1e-10})
    return float(res.fun), float(res.x)


def _gaussian_levels(ls: LevelSet | np.ndarray) -> np.ndarray:
    if isinstance(ls, LevelSet):
        if ls.kind == "asym":  # uniform grid with the optimal (centred) zero point for a symmetric source
            return ls.levels - (len(ls.levels) - 1) / 2
        return ls.levels
    return np.asarray(ls, dtype=np.float64)


@lru_cache(maxsize=None)
def lloyd_max_gaussian(n_levels: int = 4, iters: int = 2000) -> np.ndarray:
    """Lloyd-Max levels for N(0,1): alternate midpoint thresholds and cell centroids until fixed."""
    c = np.linspace(-1.5, 1.5, n_levels)
    for _ in range(iters):
        t = np.concatenate([[-np.inf], (c[1:] + c[:-1]) / 2, [np.inf]])
        pa = np.exp(-0.5 * t[:-1] ** 2) / math.sqrt(2 * math.pi)
        pb = np.exp(-0.5 * t[1:] ** 2) / math.sqrt(2 * math.pi)
        new = (pa - pb) / (ndtr(t[1:]) - ndtr(t[:-1]))
        if np.max(np.abs(new - c)) < 1e-13:
            c = new
            break
        c = new
    return c


NF2_OFFSET = 0.99591
"""Top quantile of the NormalFloat construction for the symmetric 2-bit NF2 set (gives +-0.2526, +-1)."""


def normal_float_levels(offset: float = NF2_OFFSET) -> np.ndarray:
    """Symmetric NF2: N(0,1) quantiles at probabilities evenly spaced from 0.5 to ``offset``, max-normalised."""
    q = ndtri(np.linspace(0.5, offset, 3)[1:])
    pos = q / q[-1]
    return np.array([-pos[1], -pos[0], pos[0], pos[1]])


def _build_registry() -> dict[str, LevelSet]:
    lloyd = lloyd_max_gaussian(4)
    nf2 = normal_float_levels()
    sets = [
        _integer_set("std", 2, "standard W2 integer grid {-2,-1,0,+1}", "std"),
        LevelSet("asym", np.arange(4, dtype=np.float64), 2, "asym", np.arange(4, dtype=np.uint8),
                 "4 uniform levels between per-channel min and max, with a zero point"),
        _symmetric_set("pm12", 1.0, 2.0, "{+-1, +-2}, ratio 0.5", unit=1.0, pe="pm12"),
        _symmetric_set("mnz", 0.5, 1.5, "MNZ {+-0.5, +-1.5} (= {+-1, +-3} at half scale)", unit=0.5, pe="mnz"),
        _symmetric_set("pot_mnz", 1.0, 4.0, "power-of-two MNZ {+-1, +-4}: sign and shift", unit=1.0, pe="pot_mnz"),
        _symmetric_set("lloyd", float(lloyd[2]), float(lloyd[3]), "Lloyd-Max for a Gaussian (computed)"),
        _symmetric_set("nf2", float(nf2[2]), float(nf2[3]), "NormalFloat 2-bit, symmetric form"),
        _integer_set("int3", 3, "3-bit integer grid [-4, 3]", MULTIPLIER_PE),
        _integer_set("int4", 4, "4-bit integer grid [-8, 7]", MULTIPLIER_PE),
        _integer_set("int8", 8, "8-bit integer grid [-128, 127]", MULTIPLIER_PE),
    ]
    return {s.name: s for s in sets}


LEVEL_SETS: dict[str, LevelSet] = _build_registry()
TWO_BIT_SETS = tuple(name for name, ls in LEVEL_SETS.items() if ls.bits == 2)
"""The named 2-bit sets, in registry order: std, asym, pm12, mnz, pot_mnz, lloyd, nf2."""


def ratio_level_set(ratio: float) -> LevelSet:
    """The symmetric set {+-ratio, +-1} used for inner/outer ratio sweeps."""
    if not 0 < ratio < 1:
        raise QiftError(f"inner/outer ratio must be in (0, 1), got {ratio}")
    return _symmetric_set(f"ratio:{ratio:g}", float(ratio), 1.0, f"symmetric {{+-{ratio:g}, +-1}}")


def get_level_set(name: str | LevelSet) -> LevelSet:
    """Look up a level set by name (see ``LEVEL_SETS``) or ``ratio:R`` for the symmetric set {+-R, +-1}."""
    if isinstance(name, LevelSet):
        return name
    if not isinstance(name, str):
        raise QiftError(f"level set must be a name string, got {type(name).__name__}")
    key = name.strip().lower()
    if key in LEVEL_SETS:
        return LEVEL_SETS[key]
    m = re.fullmatch(r"ratio:([0-9]*\.?[0-9]+)", key)
    if m:
        return ratio_level_set(float(m.group(1)))
    raise QiftError(f"unknown level set {name!r}; choose one of {', '.join(LEVEL_SETS)} or ratio:R with 0<R<1")


class QParams(NamedTuple):
    """Per-output-channel quantization parameters: scale [N,1] and, for ``asym`` only, an integer zero [N,1]."""

    scale: torch.Tensor
    zero: torch.Tensor | None = None


def _check_weight(W: torch.Tensor) -> torch.Tensor:
    if not isinstance(W, torch.Tensor):
        raise QiftError(f"weights must be a torch.Tensor, got {type(W).__name__}")
    if W.dim() != 2:
        raise QiftError(f"weights must be 2-D [out_features, in_features], got shape {tuple(W.shape)}")
    if not W.is_floating_point():
        raise QiftError(f"weights must be a floating-point tensor, got dtype {W.dtype}")
    if W.numel() == 0:
        raise QiftError("weights are empty")
    if not torch.isfinite(W).all():
        raise QiftError("weights contain NaN or Inf; check the checkpoint")
    return W


def _minmax_scale(W: torch.Tensor, ls: LevelSet) -> torch.Tensor:
    """Smallest per-row scale at which no weight is clipped."""
    lo, hi = float(ls.levels.min()), float(ls.levels.max())
    wmax = W.amax(dim=1, keepdim=True).clamp(min=0)
    wmin = W.amin(dim=1, keepdim=True).clamp(max=0)
    s = torch.maximum(wmax / hi, wmin / lo)
    return torch.where(s > 0, s, torch.ones_like(s))


def _asym_params(W: torch.Tensor, ls: LevelSet, clip: torch.Tensor | float = 1.0) -> QParams:
    """Per-row scale and zero point that put the (clipped) row range [min, 0] u [0, max] on the set's index grid."""
    top = len(ls.levels) - 1
    wmax = W.amax(dim=1, keepdim=True).clamp(min=0) * clip
    wmin = W.amin(dim=1, keepdim=True).clamp(max=0) * clip
    s = (wmax - wmin) / top
    s = torch.where(s > 0, s, torch.ones_like(s))
    zero = torch.round(-wmin / s).clamp(0, top)
    return QParams(s, zero)


FIT_MARGIN = 1e-4
"""Candidate margin of the fast MSE scale search, relative to the row's sum of w^2 (far above float32 rounding)."""


def _grid_errors_f64(Wf: torch.Tensor, levels: torch.Tensor, mids: torch.Tensor, scales: torch.Tensor
                     ) -> torch.Tensor:
    """sum_k (s * level(w_k / s) - w_k)^2 of every row at every scale [N, G], in float64 from sorted prefix sums.

    Bucket j of a row holds the sorted weights between s * mids[j-1] and s * mids[j]; its count and sums of w and
    w^2 give the error without touching every weight again: sum_j n_j (s l_j)^2 - 2 s l_j S1_j + S2_j.
    """
    v = torch.sort(Wf.to(torch.float64), dim=1).values
    zero = torch.zeros(v.shape[0], 1, dtype=torch.float64, device=v.device)
    p1 = torch.cat([zero, v.cumsum(1)], 1)
    p2 = torch.cat([zero, (v * v).cumsum(1)], 1)
    s = scales.to(torch.float64)
    n, g = s.shape
    bounds = (s[:, :, None] * mids.to(torch.float64)).reshape(n, -1)
    cut = torch.searchsorted(v, bounds, right=True).view(n, g, -1)
    k = v.shape[1]
    cut = torch.cat([torch.zeros_like(cut[..., :1]), cut, torch.full_like(cut[..., :1], k)], dim=2)
    lv = levels.to(torch.float64)
    err = p2[:, -1:].expand(n, g).clone()
    for j in range(len(lv)):
        lo, hi = cut[..., j].reshape(n, g), cut[..., j + 1].reshape(n, g)
        cnt = (hi - lo).to(torch.float64)
        s1 = p1.gather(1, hi) - p1.gather(1, lo)
        sl = s * lv[j]
        err += cnt * sl * sl - 2 * sl * s1
    return err


def _fit_mse_fast(Wf: torch.Tensor, levels: torch.Tensor, mids: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The scale per row [N, 1] the float32 grid search picks (first smallest error), from far fewer float32 errors.

    Float64 errors of every (row, scale) pair pick the candidates within FIT_MARGIN * sum(w^2) of the row's
    best; only those get the float32 error of the plain search (the same operations on the same values), and the
    earliest smallest one wins, as in the plain loop. Far from the best, float32 rounding cannot reorder errors.
    """
    e64 = _grid_errors_f64(Wf, levels, mids, scales)
    s2 = Wf.to(torch.float64).square().sum(1, keepdim=True)
    cand = e64 <= e64.min(dim=1, keepdim=True).values + FIT_MARGIN * s2
    rows, cols = cand.nonzero(as_tuple=True)
    e32 = torch.full(scales.shape, float("inf"), dtype=Wf.dtype, device=Wf.device)
    for c0 in range(0, rows.numel(), 4096):
        r, c = rows[c0 : c0 + 4096], cols[c0 : c0 + 4096]
        w = Wf[r]
        sc = scales[r, c].unsqueeze(1)
        deq = levels[torch.bucketize(w / sc, mids)] * sc
        e32[r, c] = (deq - w).square().sum(dim=1)
    pick = torch.argmin(e32, dim=1, keepdim=True)
    return scales.gather(1, pick)


def fit_params(W: torch.Tensor, level_set: str | LevelSet, method: str = "mse", grid: int = 100,
               min_clip: float = 0.2, norm: float = 2.0) -> QParams:
    """Fit per-output-channel scales: ``maxabs`` (no clipping) or ``mse`` (best of ``grid`` clip ratios per row).

    The MSE search keeps, for every row, the clip ratio with the smallest sum |w - q|^norm (the first one on a
    tie), with errors computed in W's float dtype. For norm 2 and a non-``asym`` set the same choice is found by
    ``_fit_mse_fast``; otherwise each clip ratio quantizes the whole matrix at once.
    """
    ls = get_level_set(level_set)
    W = _check_weight(W)
    if method not in ("mse", "maxabs"):
        raise QiftError(f"unknown scale method {method!r}; use 'mse' or 'maxabs'")
    Wf = W.detach().to(torch.float64 if W.dtype == torch.float64 else torch.float32)
    base = _asym_params(Wf, ls) if ls.kind == "asym" else QParams(_minmax_scale(Wf, ls))
    if method == "maxabs":
        return base
    levels = torch.as_tensor(ls.levels, dtype=Wf.dtype, device=Wf.device)
    mids = (levels[1:] + levels[:-1]) / 2
    clips = torch.linspace(1.0, min_clip, grid).tolist()
    if ls.kind != "asym" and norm == 2:
        scales = torch.cat([base.scale * c for c in clips], dim=1)
        return QParams(_fit_mse_fast(Wf, levels, mids, scales))
    best_err = torch.full((W.shape[0], 1), float("inf"), device=W.device)
    best = base
    for c in clips:
        if ls.kind == "asym":
            p = _asym_params(Wf, ls, c)
            deq = (torch.clamp(torch.round(Wf / p.scale) + p.zero, 0, len(ls.levels) - 1) - p.zero) * p.scale
        else:
            p = QParams(base.scale * c)
            deq = levels[torch.bucketize(Wf / p.scale, mids)] * p.scale
        err = (deq - Wf).abs().pow(norm).sum(dim=1, keepdim=True) if norm != 2 else \
            (deq - Wf).square().sum(dim=1, keepdim=True)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        scale = torch.where(better, p.scale, best.scale)
        zero = None if p.zero is None else torch.where(better, p.zero, best.zero)
        best = QParams(scale, zero)
    return best


def _as_params(params: QParams | torch.Tensor | float, W: torch.Tensor) -> QParams:
    if isinstance(params, QParams):
        return params
    scale = torch.as_tensor(params, dtype=W.dtype, device=W.device)
    if scale.dim() == 0:
        scale = scale.expand(W.shape[0], 1)
    elif scale.dim() == 1:
        scale = scale[:, None]
    if scale.shape != (W.shape[0], 1):
        raise QiftError(f"scale must have one value per output row ({W.shape[0]}), got shape {tuple(scale.shape)}")
    return QParams(scale)


def quantize(W: torch.Tensor, level_set: str | LevelSet, params: QParams | torch.Tensor | float
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Round each weight to its row's nearest level: returns (codes uint8 [N,K], dequantized tensor [N,K])."""
    ls = get_level_set(level_set)
    W = _check_weight(W)
    p = _as_params(params, W)
    if torch.any(p.scale <= 0):
        raise QiftError("scales must be positive")
    if ls.kind == "asym":
        if p.zero is None:
            raise QiftError("the 'asym' level set needs a zero point: use fit_params(W, 'asym')")
        q = torch.clamp(torch.round(W / p.scale) + p.zero, 0, len(ls.levels) - 1)
        return q.to(torch.uint8), ((q - p.zero) * p.scale).to(W.dtype)
    levels = torch.as_tensor(ls.levels, dtype=W.dtype, device=W.device)
    mids = (levels[1:] + levels[:-1]) / 2
    idx = torch.bucketize((W / p.scale).contiguous(), mids)
    codes = torch.as_tensor(ls.code_of_level, device=W.device)[idx]
    return codes, (levels[idx] * p.scale).to(W.dtype)


def dequantize(codes: torch.Tensor, level_set: str | LevelSet, params: QParams | torch.Tensor) -> torch.Tensor:
    """Inverse of the code map: levels times the per-row scale (minus the zero point for ``asym``)."""
    ls = get_level_set(level_set)
    if not isinstance(params, QParams):
        params = QParams(torch.as_tensor(params).reshape(-1, 1))
    lv = ls.decode(codes.to(params.scale.device)).to(params.scale.dtype)
    if ls.kind == "asym":
        return (lv - params.zero) * params.scale
    return lv * params.scale


def pack_codes(codes: torch.Tensor | np.ndarray, bits: int = 2) -> torch.Tensor:
    """Pack codes along the last dim, 8/bits per byte; code j of a group sits in bits j*bits .. j*bits+bits-1."""
    if bits not in (1, 2, 4, 8):
        raise QiftError(f"can pack 1, 2, 4 or 8-bit codes, not {bits}")
    c = torch.as_tensor(codes)
    if c.dtype != torch.uint8:
        raise QiftError(f"codes must be uint8, got {c.dtype}")
    if c.numel() and int(c.max()) >= 2**bits:
        raise QiftError(f"a code does not fit in {bits} bits")
    per = 8 // bits
    K = c.shape[-1]
    pad = (-K) % per
    if pad:
        c = torch.nn.functional.pad(c, (0, pad))
    c = c.reshape(*c.shape[:-1], (K + pad) // per, per).to(torch.int32)
    shifts = torch.arange(per, device=c.device, dtype=torch.int32) * bits
    return (c << shifts).sum(dim=-1).to(torch.uint8)


def unpack_codes(packed: torch.Tensor, K: int, bits: int = 2) -> torch.Tensor:
    """Inverse of ``pack_codes``: the first ``K`` codes of each row, uint8."""
    per = 8 // bits
    p = torch.as_tensor(packed)
    if p.dtype != torch.uint8:
        raise QiftError(f"packed codes must be uint8, got {p.dtype}")
    if p.shape[-1] * per < K:
        raise QiftError(f"packed rows hold {p.shape[-1] * per} codes, fewer than K={K}")
    shifts = torch.arange(per, device=p.device, dtype=torch.int32) * bits
    c = (p.to(torch.int32)[..., None] >> shifts) & (2**bits - 1)
    return c.reshape(*p.shape[:-1], p.shape[-1] * per)[..., :K].to(torch.uint8)


def relative_mse(W: torch.Tensor, level_set: str | LevelSet, method: str = "mse") -> float:
    """sum (W - Q(W))^2 / sum W^2 with per-channel scales: the tensor analogue of the Gaussian MSE."""
    ls = get_level_set(level_set)
    W = _check_weight(W).to(torch.float32)
    _, deq = quantize(W, ls, fit_params(W, ls, method))
    return float(((W - deq) ** 2).sum() / (W**2).sum())


def ratio_sweep(ratios: np.ndarray | None = None, W: torch.Tensor | None = None) -> dict:
    """MSE at the best scale versus inner/outer ratio for N(0,1) or, if ``W`` is given, for that weight tensor."""
    r = np.round(np.linspace(0.05, 0.7, 66), 4) if ratios is None else np.asarray(ratios, dtype=np.float64)
    if W is None:
        mse = [gaussian_mse(np.array([-1.0, -x, x, 1.0]))[0] for x in r]
    else:
        mse = [relative_mse(W, ratio_level_set(float(x))) for x in r]
    i = int(np.argmin(mse))
    return {"ratios": r.tolist(), "mse": mse, "best_ratio": float(r[i]), "best_mse": float(mse[i])}


def level_table() -> list[dict]:
    """One row per named level set: levels, ratio, shift-friendliness and Gaussian MSE at the best scale."""
    rows = []
    for ls in LEVEL_SETS.values():
        mse, s = gaussian_mse(ls)
        rows.append({"name": ls.name, "bits": ls.bits, "kind": ls.kind,
                     "levels": [round(float(x), 4) for x in ls.levels] if len(ls.levels) <= 4
                     else f"{ls.levels[0]:g} .. {ls.levels[-1]:g}",
                     "ratio": ls.ratio, "shift_friendly": ls.shift_friendly,
                     "gaussian_mse": mse, "best_scale": s, "description": ls.description})
    return rows
