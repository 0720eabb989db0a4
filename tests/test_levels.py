"""Level sets and scales, checked against closed forms, Monte Carlo and brute force."""

import numpy as np
import pytest
import torch

from qift_hw.core.errors import QiftError
from qift_hw.core.levels import (LEVEL_SETS, MULTIPLIER_PE, PE_KINDS, TWO_BIT_SETS, LevelSet, QParams, dequantize,
                                 fit_params, gaussian_mse, gaussian_mse_at_scale, get_level_set, pack_codes, quantize,
                                 ratio_sweep, unpack_codes)

REFERENCE_MSE = {"lloyd": 0.1175, "mnz": 0.1188, "nf2": 0.1202, "pot_mnz": 0.1205, "std": 0.1494, "pm12": 0.1581}


def test_lloyd_levels_match_reference():
    lv = get_level_set("lloyd").levels
    np.testing.assert_allclose(lv, [-1.5104, -0.4528, 0.4528, 1.5104], atol=1e-3)


def test_lloyd_is_a_fixed_point():
    # Lloyd-Max optimality: each level is the centroid of its cell, checked by Monte Carlo.
    lv = get_level_set("lloyd").levels
    x = np.random.default_rng(0).standard_normal(4_000_000)
    idx = np.searchsorted((lv[1:] + lv[:-1]) / 2, x)
    cent = np.array([x[idx == i].mean() for i in range(4)])
    np.testing.assert_allclose(cent, lv, atol=5e-3)


@pytest.mark.parametrize("name", list(REFERENCE_MSE))
def test_gaussian_mse_matches_reference(name):
    assert gaussian_mse(get_level_set(name))[0] == pytest.approx(REFERENCE_MSE[name], abs=1e-3)


def test_gaussian_mse_ordering():
    m = {n: gaussian_mse(get_level_set(n))[0] for n in REFERENCE_MSE}
    assert m["lloyd"] < m["mnz"] < m["nf2"] < m["pot_mnz"] < m["std"] < m["pm12"]


def test_closed_form_mse_equals_monte_carlo():
    x = np.random.default_rng(1).standard_normal(2_000_000)
    lv, s = get_level_set("std").levels, 0.9
    q = s * lv[np.argmin(np.abs(x[:, None] - s * lv[None, :]), axis=1)]
    assert gaussian_mse_at_scale(lv, s) == pytest.approx(np.mean((x - q) ** 2), rel=5e-3)


def test_ratio_sweep_optimum_in_paper_range():
    sw = ratio_sweep()
    assert 0.25 <= sw["best_ratio"] <= 0.33
    assert sw["best_mse"] == pytest.approx(REFERENCE_MSE["lloyd"], abs=1e-3)


def test_ratio_sweep_on_a_gaussian_tensor_tracks_the_gaussian_curve():
    W = torch.randn(64, 2048, generator=torch.Generator().manual_seed(0))
    sw = ratio_sweep(np.array([0.1, 0.3, 0.6]), W)
    assert sw["best_ratio"] == 0.3
    assert sw["mse"][1] == pytest.approx(gaussian_mse(np.array([-1, -0.3, 0.3, 1.0]))[0], rel=0.05)


def test_properties():
    assert get_level_set("mnz").ratio == pytest.approx(1 / 3)
    assert get_level_set("pot_mnz").ratio == 0.25
    assert get_level_set("pot_mnz").shift_friendly and not get_level_set("mnz").shift_friendly
    assert get_level_set("ratio:0.3").ratio == pytest.approx(0.3)
    for name in TWO_BIT_SETS:
        ls = get_level_set(name)
        assert ls.bits == 2 and sorted(ls.code_of_level.tolist()) == [0, 1, 2, 3]


@pytest.mark.parametrize("name", ["pm12", "mnz", "pot_mnz", "lloyd", "nf2"])
def test_symmetric_code_convention(name):
    lv = get_level_set(name).level_of_code
    assert lv[0] > 0 and lv[1] > lv[0] and lv[2] == -lv[0] and lv[3] == -lv[1]


def test_std_codes_are_twos_complement():
    assert get_level_set("std").level_of_code.tolist() == [0, 1, -2, -1]
    assert get_level_set("int4").level_of_code.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, -8, -7, -6, -5, -4, -3, -2, -1]


@pytest.mark.parametrize("name", [*TWO_BIT_SETS, "int3", "int4"])
@pytest.mark.parametrize("method", ["maxabs", "mse"])
def test_quantize_equals_brute_force_nearest_level(name, method):
    g = torch.Generator().manual_seed(2)
    W = torch.randn(17, 96, generator=g, dtype=torch.float64) * torch.rand(17, 1, generator=g, dtype=torch.float64)
    ls = get_level_set(name)
    p = fit_params(W, ls, method)
    codes, deq = quantize(W, ls, p)
    if ls.kind == "asym":
        cand = (torch.arange(4, dtype=torch.float64)[None, None, :] - p.zero[:, :, None]) * p.scale[:, :, None]
    else:
        cand = torch.as_tensor(ls.levels)[None, None, :] * p.scale[:, :, None]
    best = torch.argmin((W[:, :, None] - cand).abs(), dim=2)
    expect = torch.gather(cand.expand(-1, W.shape[1], -1), 2, best[:, :, None])[..., 0]
    torch.testing.assert_close(deq, expect, rtol=0, atol=1e-12)
    torch.testing.assert_close(dequantize(codes, ls, p), deq, rtol=0, atol=1e-12)


def test_mse_search_beats_maxabs_on_gaussian():
    W = torch.randn(128, 1024, generator=torch.Generator().manual_seed(3))
    for name in TWO_BIT_SETS:
        e = {m: ((W - quantize(W, name, fit_params(W, name, m))[1]) ** 2).sum() for m in ("maxabs", "mse")}
        assert e["mse"] < e["maxabs"], name


def test_mse_search_is_per_row_optimal_on_its_grid():
    W = torch.randn(8, 256, generator=torch.Generator().manual_seed(4))
    ls = get_level_set("pot_mnz")
    p = fit_params(W, ls, "mse", grid=50)
    base = fit_params(W, ls, "maxabs").scale
    err = lambda s: ((W - quantize(W, ls, s)[1]) ** 2).sum(1)  # noqa: E731
    best = err(p.scale)
    for c in torch.linspace(1.0, 0.2, 50):
        assert torch.all(best <= err(base * c) + 1e-6)


def _plain_grid_search(W, ls, grid=100, min_clip=0.2):
    """Every clip ratio on the whole matrix, first smallest float32 error per row (the definition)."""
    base = fit_params(W, ls, "maxabs").scale
    levels = torch.as_tensor(ls.levels, dtype=W.dtype)
    mids = (levels[1:] + levels[:-1]) / 2
    errs, scales = [], []
    for c in torch.linspace(1.0, min_clip, grid).tolist():
        s = base * c
        deq = levels[torch.bucketize(W / s, mids)] * s
        errs.append((deq - W).square().sum(dim=1, keepdim=True))
        scales.append(s)
    errs, scales = torch.cat(errs, 1), torch.cat(scales, 1)
    first = torch.stack([torch.nonzero(r == r.min())[0, 0] for r in errs])
    return scales.gather(1, first[:, None])


@pytest.mark.parametrize("name", ["mnz", "std", "pot_mnz", "nf2", "int4"])
def test_fast_mse_search_picks_what_the_plain_float32_search_picks(name):
    g = torch.Generator().manual_seed(5)
    heavy = torch.distributions.StudentT(torch.tensor(3.0)).sample((64, 300)) * 0.02
    W = torch.cat([torch.randn(200, 300, generator=g) * 0.02, heavy, torch.zeros(2, 300),
                   torch.full((2, 300), 0.01), torch.randint(-3, 4, (8, 300), generator=g).float()])
    # short rows of multiples of 0.1: many clip ratios tie exactly in real numbers and float32 rounding decides
    ties = torch.randint(-6, 7, (2000, 12), generator=g).float() * 0.1
    ls = get_level_set(name)
    assert torch.equal(fit_params(W, ls, "mse").scale, _plain_grid_search(W, ls))
    assert torch.equal(fit_params(ties, ls, "mse").scale, _plain_grid_search(ties, ls))


@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("K", [1, 3, 4, 7, 64, 129])
def test_pack_roundtrip(bits, K):
    codes = torch.randint(0, 2**bits, (5, K), dtype=torch.uint8, generator=torch.Generator().manual_seed(K))
    packed = pack_codes(codes, bits)
    assert packed.shape == (5, -(-K // (8 // bits)))
    torch.testing.assert_close(unpack_codes(packed, K, bits), codes)


def test_pack_empty_rows():
    codes = torch.zeros(3, 0, dtype=torch.uint8)
    assert pack_codes(codes).shape == (3, 0)
    assert unpack_codes(pack_codes(codes), 0).shape == (3, 0)


def test_pack_bit_layout():
    packed = pack_codes(torch.tensor([[1, 2, 3, 0, 3]], dtype=torch.uint8))
    assert packed.tolist() == [[1 | 2 << 2 | 3 << 4, 3]]


def test_bad_input():
    with pytest.raises(QiftError, match="unknown level set"):
        get_level_set("mnz4")
    with pytest.raises(QiftError, match="2-D"):
        fit_params(torch.randn(4, 4, 4), "mnz")
    with pytest.raises(QiftError, match="floating-point"):
        fit_params(torch.ones(4, 4, dtype=torch.int32), "mnz")
    with pytest.raises(QiftError, match="ratio"):
        get_level_set("ratio:1.5")
    with pytest.raises(QiftError, match="one value per output row"):
        quantize(torch.randn(4, 8), "mnz", torch.ones(3))
    with pytest.raises(QiftError, match="zero point"):
        quantize(torch.randn(4, 8), "asym", QParams(torch.ones(4, 1)))
    with pytest.raises(QiftError, match="uint8"):
        pack_codes(torch.zeros(2, 4, dtype=torch.int64))
    assert set(LEVEL_SETS) >= {"std", "asym", "pm12", "mnz", "pot_mnz", "lloyd", "nf2", "int3", "int4", "int8"}


def test_hardware_view_of_the_sets():
    """unit, PE kind and integer weights (level / unit) as docs/formats.md lists them."""
    want = {"pot_mnz": (1.0, "pot_mnz", [1, 4, -1, -4]), "mnz": (0.5, "mnz", [1, 3, -1, -3]),
            "pm12": (1.0, "pm12", [1, 2, -1, -2]), "std": (1.0, "std", [0, 1, -2, -1]),
            "int3": (1.0, MULTIPLIER_PE, [0, 1, 2, 3, -4, -3, -2, -1])}
    for name, (unit, pe, w) in want.items():
        ls = get_level_set(name)
        assert (ls.unit, ls.pe, ls.int_weights.tolist()) == (unit, pe, w)
    assert get_level_set("int8").pe == MULTIPLIER_PE and get_level_set("int8").int_weights[128] == -128
    assert set(PE_KINDS) == {"pot_mnz", "mnz", "pm12", "std", MULTIPLIER_PE}
    for name in ("asym", "lloyd", "nf2", "ratio:0.25"):
        ls = get_level_set(name)
        assert ls.unit is None and ls.pe is None
        with pytest.raises(QiftError, match="no integer weights"):
            _ = ls.int_weights


def test_hardware_view_is_checked():
    lv, codes = np.array([-1.5, -0.5, 0.5, 1.5]), np.array([3, 2, 0, 1], dtype=np.uint8)
    with pytest.raises(QiftError, match="integer times unit"):
        LevelSet("x", lv, 2, "symmetric", codes, unit=1.0)
    with pytest.raises(QiftError, match="needs a unit"):
        LevelSet("x", lv, 2, "symmetric", codes, pe="mnz")
    with pytest.raises(QiftError, match="needs a unit"):
        LevelSet("x", lv, 2, "symmetric", codes, unit=0.5, pe="adder")
    assert LevelSet("x", lv, 2, "symmetric", codes, unit=0.5, pe="mnz").int_weights.tolist() == [1, 3, -1, -3]
