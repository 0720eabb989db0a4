"""Glue between the PyTorch pipeline and the bit-accurate model: run every W2 linear of a model in `qift_hw.sim`.

It sits in `bridge`, the layer allowed to import both the quantization algorithms (qmodel, quantized models) and
`qift_hw.sim`; the algorithm modules never import the simulator. `install_sim_backend` replaces the
forward of each QLinear whose weights are 2-bit hardware codes by the integer model (`sim.linear.SimLinear`):
online Hadamard (Hadamard unit), INT4 quantizer, sign/shift/add accumulation, FP32 dequantization.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Any, Iterator

SIM_ATTR = "_qift_sim"
BACKENDS = ("torch", "int", "sim")
"""Evaluation backends of the W2 linears: torch = fake-quant (dequantized FP32 product, the pipeline's default),
int = PyTorch with exact integer products (`quantized.set_integer_products`), sim = the bit-accurate Numba model."""


def eval_backend(name: str, hadamard: str = "unit", acc_bits: int | None = None, overflow: str = "saturate"):
    """A `run_points` backend hook for ``name`` (None for the default torch path)."""
    from qift_hw.core import formats
    from qift_hw.core.errors import QiftError

    if name not in BACKENDS:
        raise QiftError(f"unknown backend {name!r}; use one of {', '.join(BACKENDS)}")
    from qift_hw.sim.linear import HADAMARD_MODES

    if hadamard not in HADAMARD_MODES:
        raise QiftError(f"unknown Hadamard mode {hadamard!r}; use one of {', '.join(HADAMARD_MODES)}")
    if name == "torch":
        return None
    acc_bits = acc_bits or formats.ACC_BITS

    def hook(model: Any, weights: dict) -> dict:
        from qift_hw.algo.quantized import set_integer_products

        if name == "int":
            layers = set_integer_products(model, weights)
            return {"name": "int", "layers": len(layers)}
        layers = install_sim_backend(model, weights, hadamard=hadamard, acc_bits=acc_bits, overflow=overflow)
        return {"name": "sim", "hadamard": hadamard, "acc_bits": acc_bits, "layers": len(layers)}

    return hook


def install_sim_backend(model: Any, weights: dict, hadamard: str = "unit", acc_bits: int | None = None,
                        overflow: str = "saturate") -> list[str]:
    """Route the W2 QLinears of ``model`` (names in ``weights``, a pipeline QuantizedModel.weights dict) through
    the integer model. Other layers (INT4/INT3 mixed-precision layers, lm_head) keep the fake-quant path.
    Returns the names of the layers now simulated. ``remove_sim_backend`` undoes it.

    The prepared weights stay with the codes tensor (`_prepared`): installing the same weights again is free.
    """
    from qift_hw.core import formats
    from qift_hw.core.errors import QiftError
    from qift_hw.algo.qmodel import iter_qlinears

    done = []
    for name, q in iter_qlinears(model):
        ql = weights.get(name)
        if ql is None or ql.level_set.name not in formats.HW_LEVEL_SETS:
            continue
        if q.a_bits != formats.ACT_BITS:
            raise QiftError(f"{name}: the integer model needs INT{formats.ACT_BITS} activations, the layer has "
                            f"a_bits={q.a_bits}; quantize with --a-bits {formats.ACT_BITS}")
        sim = _prepared(ql, q, hadamard, acc_bits or formats.ACC_BITS, overflow)
        setattr(q, SIM_ATTR, sim)
        q.forward = _sim_forward(q, sim)
        done.append(name)
    return done


@functools.cache
def _prepared_cache() -> Any:
    """codes tensor -> (settings, tensors, SimLinear): the prepared weights of codes that are still alive."""
    from torch.utils.weak import WeakTensorKeyDictionary

    return WeakTensorKeyDictionary()


def _prepared(ql: Any, q: Any, hadamard: str, acc_bits: int, overflow: str) -> Any:
    """The SimLinear of a quantized linear with its layer's settings, built once per codes tensor and settings
    (tensors by identity and version counter)."""
    from qift_hw.sim.linear import SimLinear

    tensors = [t for t in (ql.params.scale, q.bias) if t is not None]  # never the codes: they are the weak key
    settings = (ql.level_set.name, q.online_hadamard, q.a_bits, q.a_clip, acc_bits, overflow, hadamard,
                ql.codes._version, tuple(id(t) for t in tensors), tuple(t._version for t in tensors))
    cache = _prepared_cache()
    hit = cache.get(ql.codes)
    if hit is not None and hit[0] == settings:
        return hit[2]
    sim = SimLinear.from_codes(ql.codes.cpu(), ql.params.scale.cpu(), ql.level_set, online_hadamard=q.online_hadamard,
                               bias=None if q.bias is None else q.bias.detach().cpu(), a_bits=q.a_bits,
                               a_clip=q.a_clip, acc_bits=acc_bits, overflow=overflow, hadamard=hadamard)
    cache[ql.codes] = (settings, tensors, sim)  # holding the tensors keeps their ids unique
    return sim


def unit_quantize(x: Any, bits: int, clip: float) -> tuple[Any, Any]:
    """`sim.hadamard_unit.hadamard_quantize`, with the unit's integers H_n m computed by
    `core.hadamard.hadamard_transform` on the int64 mantissas instead of a scalar loop.

    Every step of the unit is exact integer arithmetic, so any exact evaluation of H_n m gives the same integers,
    hence the same INT4 codes and scales. The output is checked against the unit's width (formats.had_out_bits).
    """
    import torch

    from qift_hw.core import formats
    from qift_hw.core.hadamard import hadamard_transform, split_order

    mant, exp = formats.had_input_fixed(x)
    y = hadamard_transform(mant.to(torch.int64), normalize=False)
    bits_out = formats.had_out_bits(*split_order(x.shape[-1]))
    if y.numel() and int(y.abs().max()) >= 2 ** (bits_out - 1):
        raise AssertionError(f"Hadamard unit output outside its {bits_out}-bit range; the bit-growth rule is broken")
    return formats.had_output_quant(y, exp, x.shape[-1], bits, clip)


def _front_end(sim: Any, xf: Any) -> tuple[Any, Any]:
    """INT4 codes and scales of the FP32 input [T, K], as `SimLinear.quantize_input` makes them."""
    if sim.online_hadamard and sim.hadamard == "unit":
        return unit_quantize(xf, sim.a_bits, sim.a_clip)
    return sim.quantize_input(xf)


def _sim_forward(q: Any, sim: Any):
    """The QLinear forward through the integer model (`SimLinear.__call__`'s steps), with the INT4 front end done
    once per group of linears that read the same input (the QLinear's `shared_input`)."""
    import torch

    from qift_hw.core import formats

    key = ("sim", sim.online_hadamard, sim.hadamard, sim.a_bits, sim.a_clip)

    def forward(x):
        if q.capture is not None:
            q.capture(q.transform_input(x).reshape(-1, x.shape[-1]))
        shared = q.shared_input
        codes = None if shared is None else shared.get(x, key)
        if codes is None:
            codes = _front_end(sim, x.detach().reshape(-1, x.shape[-1]).to("cpu", formats.SCALE_DTYPE))
            if shared is not None:
                shared.put(x, key, codes)
        acts, s_a = codes
        acc = torch.from_numpy(sim.accumulate(acts))
        y = formats.dequantize_acc(acc, s_a, sim.w_scale, sim.weights.level_set, sim.bias)
        return y.reshape(*x.shape[:-1], -1).to(device=x.device, dtype=x.dtype)

    return forward


def remove_sim_backend(model: Any) -> int:
    """Give every simulated QLinear its PyTorch forward back; returns how many were restored."""
    from qift_hw.algo.qmodel import iter_qlinears

    n = 0
    for _, q in iter_qlinears(model):
        if hasattr(q, SIM_ATTR):
            delattr(q, SIM_ATTR)
            del q.forward
            n += 1
    return n


def compare_linears(model: Any, weights: dict, input_ids: Any, hadamard: str = "float") -> list[dict]:
    """Check every W2 linear of a quantized model against the pipeline on the inputs it sees for ``input_ids``.

    Per layer: the integer model's accumulators against an independent torch int64 product of the pipeline's
    INT4 activations (formats.quantize_act after hadamard_transform) and the level set's integer weights
    (levels / unit), and the dequantized outputs against the fake-quant forward, as a fraction of the FP32 bound
    (K + 4) * 2^-24 * s_a * s_w' * sum_k |q_k||w_k| (+ 2^-23 * (|y| + |bias|) with a bias). ``hadamard="unit"``
    also reports how many INT4 codes the Hadamard unit moves relative to the float transform.
    """
    import torch

    from qift_hw.core import formats
    from qift_hw.core.hadamard import hadamard_transform
    from qift_hw.core.levels import get_level_set
    from qift_hw.algo.qmodel import iter_qlinears
    from qift_hw.sim.linear import SimLinear

    u = 2.0**-24
    inputs: dict = {}
    hooks = [q.register_forward_pre_hook(lambda m, a, n=name: inputs.__setitem__(n, a[0].reshape(-1, m.in_features)))
             for name, q in iter_qlinears(model)]
    try:
        with torch.no_grad():
            model(input_ids=input_ids, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    rows = []
    with torch.no_grad():
        for name, lin in iter_qlinears(model):
            ql = weights.get(name)
            if ql is None or ql.level_set.name not in formats.HW_LEVEL_SETS:
                continue
            x = inputs[name].float()
            ls = get_level_set(ql.level_set)
            xin = hadamard_transform(x, normalize=True) if lin.online_hadamard else x
            q, s_a = formats.quantize_act(xin, lin.a_bits, lin.a_clip)
            w_int = torch.round(ls.decode(ql.codes.cpu()) / formats.weight_unit(ls)).long()
            acc_ref = q.long() @ w_int.T
            bias = None if lin.bias is None else lin.bias.detach().float().cpu()
            sim = SimLinear.from_codes(ql.codes.cpu(), ql.params.scale.cpu(), ls,
                                       online_hadamard=lin.online_hadamard, bias=bias, a_bits=lin.a_bits,
                                       a_clip=lin.a_clip, hadamard="float")
            acc = torch.from_numpy(sim.accumulate(q))
            y_sim = sim(x)
            y_fq = lin(x).float()
            sw = formats.weight_scale_eff(ql.params.scale.cpu(), ls)
            bound = (x.shape[-1] + 4) * u * s_a * sw * (q.abs().double() @ w_int.abs().T.double()).float()
            if bias is not None:
                bound = bound + 2 * u * (y_fq.abs() + bias.abs())
            row = {"layer": name, "level_set": ls.name, "tokens": int(x.shape[0]), "K": int(x.shape[1]),
                   "N": int(w_int.shape[0]), "online_hadamard": bool(lin.online_hadamard),
                   "acc_exact": bool(torch.equal(acc, acc_ref)), "max_abs_acc": int(acc_ref.abs().max()),
                   "max_abs_diff": float((y_sim - y_fq).abs().max()),
                   "max_diff_over_bound": float(((y_sim - y_fq).abs() / (bound + 1e-30)).max()),
                   "max_abs_out": float(y_fq.abs().max())}
            if hadamard == "unit" and lin.online_hadamard:
                sim.hadamard = "unit"
                q_u, s_u = sim.quantize_input(x)
                row["unit_codes_moved"] = float((q_u != q).float().mean())
                row["unit_scale_rel_diff"] = float(((s_u - s_a).abs() / s_a).max())
            rows.append(row)
    return rows


@contextmanager
def float64_linears(model: Any) -> Iterator[None]:
    """Within the block, every QLinear computes its fake-quant product in float64 (then back to the input dtype):
    a control for how much FP32 rounding alone moves a quantized model's outputs."""
    import torch
    from torch.nn import functional as F

    from qift_hw.algo.qmodel import iter_qlinears

    def make(q):
        def forward(x):
            xq = q.transform_input(x)
            b = None if q.bias is None else q.bias.double()
            return F.linear(xq.double(), q.effective_weight().double(), b).to(x.dtype)

        return forward

    qls = [q for _, q in iter_qlinears(model)]
    for q in qls:
        q.forward = make(q)
    try:
        with torch.no_grad():
            yield
    finally:
        for q in qls:
            del q.forward
