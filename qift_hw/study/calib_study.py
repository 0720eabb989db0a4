"""Why a 2-bit level set degrades with few calibration tokens: per-linear GPTQ diagnostics at growing calibration.

For a few linears of the rotated, activation-quantized model, the calibration inputs are captured once and their
Hessians H_n = (2/N) X^T X snapshotted after the first n windows (nested prefixes of one seeded sample). GPTQ then
quantizes the float weight against each H_n, and each result is measured on held-out inputs (the evaluation split)
and diagnosed: the spectrum of H_n, the damping it needed, where the codes land, and how far GPTQ's error feedback
moved the weights before rounding (recovered exactly from the final codes, see `feedback_weights`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from qift_hw.algo.capture import capturing, decoder_layers, until_stopped
from qift_hw.algo.gptq import GPTQResult, HessianAccumulator, gptq_quantize, relative_output_error, rtn_quantize
from qift_hw.core.errors import QiftError
from qift_hw.core.levels import LevelSet, get_level_set


def hessian_spectrum(H: torch.Tensor, damp: float = 0.01, rel_tol: float = 1e-6) -> dict:
    """Eigenvalue summary of a symmetric H: extremes, condition number of H and of H + damp*mean(diag H)*I (GPTQ's
    damping), and how many eigenvalues lie below rel_tol * lambda_max (numerically zero directions)."""
    if H.dim() != 2 or H.shape[0] != H.shape[1]:
        raise QiftError(f"Hessian must be square, got shape {tuple(H.shape)}")
    ev = torch.linalg.eigvalsh(H.to(torch.float64))
    lmax, lmin = float(ev[-1]), float(ev[0])
    shift = damp * float(torch.diagonal(H).double().mean())
    tiny = 1e-300
    return {
        "k": H.shape[0],
        "lambda_max": lmax,
        "lambda_min": lmin,
        "cond": lmax / max(lmin, tiny) if lmin > 0 else math.inf,
        "cond_damped": (lmax + shift) / max(lmin + shift, tiny),
        "damp_shift": shift,
        "n_near_zero": int((ev < rel_tol * lmax).sum()),
        "n_below_damp": int((ev < shift).sum()),
        "quantiles": {q: float(torch.quantile(ev, q)) for q in (0.01, 0.1, 0.5, 0.9)},
    }


def layer_output_error(W: torch.Tensor, Wq: torch.Tensor, X: torch.Tensor) -> float:
    """||X W^T - X Wq^T||_F / ||X W^T||_F for inputs X [tokens, K] (a linear's relative output error)."""
    X64 = X.to(torch.float64)
    ref = X64 @ W.to(torch.float64).T
    return float(torch.linalg.norm(ref - X64 @ Wq.to(torch.float64).T) / torch.linalg.norm(ref))


def feedback_weights(W: torch.Tensor, deq: torch.Tensor, H: torch.Tensor, damp_used: float) -> torch.Tensor:
    """The weights GPTQ (no act-order) rounded, column by column, after its error feedback.

    With U the upper Cholesky factor of (H + damp I)^-1 and D = diag(U), GPTQ rounds column i of
    W' = W - E U_strict, with E = (W' - Q) D^-1, so E U = W - Q and W' = Q + (W - Q) U^-1 D: the pre-rounding
    weights follow from the final dequantized Q in one triangular solve (float64; GPTQ itself runs in float32).
    """
    H = H.to(torch.float64).clone()
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1.0
    eye = torch.eye(H.shape[0], dtype=torch.float64)
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H + damp_used * eye)), upper=True)
    Q = deq.to(torch.float64)
    R = W.to(torch.float64) - Q
    R[:, dead] = 0.0
    E = torch.linalg.solve_triangular(U, R, upper=True, left=False)
    return Q + E * torch.diagonal(U)


def level_occupancy(deq: torch.Tensor, scale: torch.Tensor, level_set: LevelSet) -> list[float]:
    """Fraction of weights on each level of a symmetric or integer set (levels in increasing order)."""
    levels = torch.as_tensor(level_set.levels, dtype=torch.float64)
    idx = torch.argmin((deq.double() / scale.double() - levels[:, None, None]).abs(), dim=0)
    return [float((idx == i).double().mean()) for i in range(len(levels))]


def clip_stats(Wp: torch.Tensor, scale: torch.Tensor, level_set: LevelSet) -> dict:
    """How many pre-rounding weights lie beyond the outermost levels, and the share of the squared rounding error
    they carry (the part error feedback cannot undo by rounding the other way); rounding_rel_err: ||W' - Q|| / ||W'||."""
    lv = level_set.levels
    u = Wp.double() / scale.double()
    lo, hi = float(lv[0]), float(lv[-1])
    q = torch.as_tensor(lv, dtype=torch.float64)[torch.argmin((u[None] - torch.as_tensor(lv)[:, None, None]).abs(),
                                                              dim=0)]
    err2 = (u - q) ** 2
    above, below = u > hi, u < lo
    total = float(err2.sum())
    return {"above_top": float(above.double().mean()), "below_bottom": float(below.double().mean()),
            "clip_err_share": float(err2[above | below].sum()) / total if total > 0 else 0.0,
            "rounding_rel_err": math.sqrt(total / float((u ** 2).sum()))}


@dataclass
class Captured:
    """One linear's float weight, its calibration Hessians by window count, and held-out inputs."""

    name: str
    weight: torch.Tensor
    hessians: dict[int, torch.Tensor]
    held_out: torch.Tensor


FORWARD_ORDER = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def pick_linears(model: nn.Module, layers: Sequence[int], kinds: Sequence[str]) -> list[nn.Module]:
    """QLinears `kinds` (e.g. q_proj, down_proj) of decoder `layers`, in forward order (as `capturing` needs)."""
    unknown = [k for k in kinds if k not in FORWARD_ORDER]
    if unknown:
        raise QiftError(f"unknown linear {unknown[0]!r}; use {', '.join(FORWARD_ORDER)}")
    kinds = sorted(set(kinds), key=FORWARD_ORDER.index)
    out = []
    dl = decoder_layers(model)
    for i in sorted(layers):
        if not 0 <= i < len(dl):
            raise QiftError(f"layer {i} does not exist; the model has layers 0..{len(dl) - 1}")
        for kind in kinds:
            mods = dict(dl[i].named_modules())
            lin = mods.get(f"self_attn.{kind}", mods.get(f"mlp.{kind}"))
            if lin is None:
                raise QiftError(f"no linear {kind!r} in layer {i}; is this a LLaMA-family model?")
            out.append(lin)
    return out


@torch.no_grad()
def capture_study_inputs(model: nn.Module, linears: list[nn.Module], calib: torch.Tensor, held_out: torch.Tensor,
                         sizes: Sequence[int]) -> list[Captured]:
    """Run the calibration windows one at a time up to the last linear; snapshot each linear's Hessian after the
    first n windows for n in `sizes`; keep the held-out windows' inputs as they are."""
    sizes = sorted(set(sizes))
    if sizes[0] < 1 or sizes[-1] > calib.shape[0]:
        raise QiftError(f"calibration sizes must lie in 1..{calib.shape[0]} windows, got {sizes}")
    accs = [HessianAccumulator(lin.in_features) for lin in linears]
    snaps: list[dict[int, torch.Tensor]] = [{} for _ in linears]
    with capturing(linears, [a.add for a in accs]):
        for j in range(sizes[-1]):
            until_stopped(model, calib[j : j + 1], use_cache=False)
            if j + 1 in sizes:
                for a, s in zip(accs, snaps):
                    s[j + 1] = a.hessian.clone()
    held: list[list[torch.Tensor]] = [[] for _ in linears]
    with capturing(linears, [h.append for h in held]):
        for w in held_out:
            until_stopped(model, w[None], use_cache=False)
    return [Captured(lin.name, lin.weight.detach().float().clone(), s, torch.cat(h).float())
            for lin, s, h in zip(linears, snaps, held)]


def run_gptq(W: torch.Tensor, H: torch.Tensor, level_set: LevelSet, damp: float, act_order: bool
             ) -> tuple[GPTQResult, int]:
    """GPTQ of W on H, and how many times it had to raise the damping (its RuntimeWarnings)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        res = gptq_quantize(W, H, level_set, damp=damp, act_order=act_order)
    return res, sum(1 for w in caught if "not positive definite" in str(w.message))


def diagnose(c: Captured, n: int, level_set: LevelSet, damp: float = 0.01, act_order: bool = False) -> dict:
    """One GPTQ point: held-out and calibration output error, damping path, code occupancy, feedback clipping."""
    H = c.hessians[n]
    res, retries = run_gptq(c.weight, H, level_set, damp, act_order)
    calib_err = relative_output_error(c.weight, res.deq, H)
    row = {"linear": c.name, "windows": n, "levels": level_set.name, "damp": damp, "act_order": act_order,
           "held_out_err": layer_output_error(c.weight, res.deq, c.held_out), "calib_err": calib_err,
           "damp_retries": retries, "damp_used_rel": res.damp_used / float(torch.diagonal(H).double().mean()),
           "occupancy": level_occupancy(res.deq, res.params.scale, level_set)}
    if not act_order and level_set.kind != "asym":
        Wp = feedback_weights(c.weight, res.deq, H, res.damp_used)
        row["feedback_shift"] = float(torch.linalg.norm(Wp - c.weight) / torch.linalg.norm(c.weight))
        row.update(clip_stats(Wp, res.params.scale, level_set))
    return row


def rtn_row(c: Captured, level_set: LevelSet) -> dict:
    """The round-to-nearest reference of one linear (no calibration): held-out error and code occupancy."""
    res = rtn_quantize(c.weight, level_set)
    row = {"linear": c.name, "levels": level_set.name,
           "held_out_err": layer_output_error(c.weight, res.deq, c.held_out),
           "occupancy": level_occupancy(res.deq, res.params.scale, level_set)}
    if level_set.kind != "asym":
        row.update(clip_stats(c.weight, res.params.scale, level_set))
    return row


def study(captured: list[Captured], level_sets: Sequence[str], damp: float = 0.01,
          remedy_windows: int | None = None, remedies: Sequence[dict] = (), progress=None) -> dict:
    """Spectra per linear and window count, GPTQ diagnostics per level set, RTN references, and at
    `remedy_windows` the variants in `remedies` (dicts of damp / act_order)."""
    sets = [get_level_set(s) for s in level_sets]
    spectra, gptq_rows, rtn_rows, remedy_rows = [], [], [], []
    step = progress or (lambda *_: None)
    for c in captured:
        for n, H in sorted(c.hessians.items()):
            spectra.append({"linear": c.name, "windows": n, **hessian_spectrum(H, damp)})
            for ls in sets:
                gptq_rows.append(diagnose(c, n, ls, damp))
                step(c.name, n, ls.name)
        for ls in sets:
            rtn_rows.append(rtn_row(c, ls))
            if remedy_windows is not None:
                for r in remedies:
                    remedy_rows.append(diagnose(c, remedy_windows, ls, r.get("damp", damp),
                                                r.get("act_order", False)))
                    step(c.name, remedy_windows, f"{ls.name} {r}")
    return {"spectra": spectra, "gptq": gptq_rows, "rtn": rtn_rows, "remedies": remedy_rows}
