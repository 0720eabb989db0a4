"""Weight statistics against scipy on known distributions, and the analyze command end to end."""

import json
import math

import numpy as np
import pytest
import scipy.stats
import torch

from qift_hw.algo import stats
from qift_hw.core.errors import QiftError

RNG = np.random.default_rng(0)
SAMPLES = {
    "normal": RNG.standard_normal(20000),
    "uniform": RNG.uniform(-1, 1, 20000),
    "laplace": RNG.laplace(0.3, 2.0, 20000),
    "student_t5": RNG.standard_t(5, 20000),
}


@pytest.mark.parametrize("name", SAMPLES)
def test_kurtosis_matches_scipy(name):
    x = SAMPLES[name]
    ours = stats.excess_kurtosis(torch.from_numpy(x).reshape(100, 200))
    assert ours == pytest.approx(scipy.stats.kurtosis(x, fisher=True, bias=True), rel=1e-9, abs=1e-12)


def test_kurtosis_known_values():
    assert abs(stats.excess_kurtosis(torch.from_numpy(SAMPLES["normal"]))) < 0.1
    assert stats.excess_kurtosis(torch.from_numpy(SAMPLES["uniform"])) == pytest.approx(-1.2, abs=0.05)
    big_laplace = np.random.default_rng(1).laplace(0.0, 1.0, 1_000_000)
    assert stats.excess_kurtosis(torch.from_numpy(big_laplace)) == pytest.approx(3.0, abs=0.15)
    # two-point distribution: m4 / m2^2 = 1
    assert stats.excess_kurtosis(torch.tensor([-1.0, 1.0] * 50)) == pytest.approx(-2.0)


def test_qq_error_against_scipy_probplot():
    for name, x in SAMPLES.items():
        (osm, osr), _ = scipy.stats.probplot(x, dist="norm")
        # scipy uses Filliben's plotting positions; ours are (i - 0.5)/n, so compare against a direct computation
        z = np.sort((x - x.mean()) / x.std())
        q = scipy.stats.norm.ppf((np.arange(1, x.size + 1) - 0.5) / x.size)
        expected = math.sqrt(np.mean((z - q) ** 2))
        assert stats.qq_error(torch.from_numpy(x)) == pytest.approx(expected, rel=1e-9)
        assert np.allclose(np.sort(x), osr)
    assert stats.qq_error(torch.from_numpy(SAMPLES["normal"])) < 0.05
    assert stats.qq_error(torch.from_numpy(SAMPLES["laplace"])) > 0.1


def test_qq_error_zero_for_exact_quantiles():
    q = stats.normal_quantiles(1001)
    # standardizing the quantiles themselves changes their std slightly; the error stays tiny
    assert stats.qq_error(q) < 0.02


def test_weight_stats_and_summary():
    w = torch.from_numpy(SAMPLES["laplace"])
    s = stats.weight_stats(w)
    assert s["mean"] == pytest.approx(float(np.mean(SAMPLES["laplace"])))
    assert s["std"] == pytest.approx(float(np.std(SAMPLES["laplace"])))
    assert s["zero_centredness"] == pytest.approx(abs(s["mean"]) / s["std"])
    rows = [
        {"name": "a", "before": {"zero_centredness": 0.1, "excess_kurtosis": 10.0, "qq_error": 1.0},
         "after": {"zero_centredness": 0.0, "excess_kurtosis": 0.1, "qq_error": 0.1}},
        {"name": "b", "before": {"zero_centredness": 0.2, "excess_kurtosis": -1.0, "qq_error": 0.5},
         "after": {"zero_centredness": 0.0, "excess_kurtosis": 0.01, "qq_error": 0.05}},
        {"name": "c", "before": {"zero_centredness": 0.3, "excess_kurtosis": 2.0, "qq_error": 0.2},
         "after": {"zero_centredness": 0.0, "excess_kurtosis": 4.0, "qq_error": 0.4}},
    ]
    summ = stats.summarize(rows, "before", "after")
    assert summ["median_excess_kurtosis_reduction"] == pytest.approx(100.0)
    assert summ["median_qq_error_reduction"] == pytest.approx(10.0)
    assert summ["modules_excess_kurtosis_reduced"] == 2
    assert "| c |" in stats.markdown_table(rows, ("before", "after"))


def test_bad_inputs():
    with pytest.raises(QiftError):
        stats.excess_kurtosis(torch.ones(10))
    with pytest.raises(QiftError):
        stats.weight_stats(torch.tensor([1.0, float("nan")]))
    with pytest.raises(QiftError):
        stats.summarize([])


def _save_word_tokenizer(folder):
    """A minimal word-level tokenizer (load_model needs one next to the weights)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, **{f"w{i}": i + 1 for i in range(100)}}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]").save_pretrained(folder)


def test_analyze_command(tmp_path):
    """`qift-hw analyze` on a tiny saved model: files written, rotation lowers the kurtosis of heavy-tailed weights."""
    from typer.testing import CliRunner

    from qift_hw.cli import app
    from qift_hw.algo.models import tiny_llama

    model = tiny_llama(seed=0, hidden=64, intermediate=128)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # heavy-tailed weights with a few outlier input channels, like trained models
        for name, p in model.named_parameters():
            if name.endswith("proj.weight"):
                p.copy_(torch.distributions.StudentT(3.0).sample(p.shape) * 0.02)
                p[:, torch.randint(0, p.shape[1], (2,), generator=gen)] *= 8
    folder = tmp_path / "tiny"
    model.save_pretrained(folder)
    _save_word_tokenizer(folder)
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["analyze", "--model", str(folder), "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "stats.json").read_text())
    assert len(data["modules"]) == 14
    assert data["summary"]["original_vs_rotated"]["median_excess_kurtosis_reduction"] > 3
    for f in ("stats.md", "kurtosis.png", "qq.png"):
        assert (out / f).stat().st_size > 100
    bad = CliRunner().invoke(app, ["analyze", "--model", str(folder), "--out", str(out), "--example", "nope"])
    assert bad.exit_code != 0


def test_row_statistics_remove_row_scale_spread():
    """Gaussian rows of very different widths: pooled kurtosis is large, row-standardized kurtosis is ~0."""
    rng = np.random.default_rng(2)
    w = rng.standard_normal((300, 400)) * np.exp(rng.uniform(-2, 2, (300, 1))) + rng.uniform(-1, 1, (300, 1))
    s = stats.weight_stats(torch.from_numpy(w))
    z = (w - w.mean(axis=1, keepdims=True)) / w.std(axis=1, keepdims=True)
    assert s["row_excess_kurtosis"] == pytest.approx(scipy.stats.kurtosis(z.ravel()), rel=1e-9, abs=1e-12)
    assert s["excess_kurtosis"] > 1.0 and abs(s["row_excess_kurtosis"]) < 0.1
    assert s["row_qq_error"] < 0.05 < s["qq_error"]
    kinds = stats.summarize_by_kind([{"name": "model.layers.0.mlp.up_proj", "a": s},
                                     {"name": "model.layers.1.mlp.up_proj", "a": s}], ("a",))
    assert kinds[0]["name"] == "up_proj" and kinds[0]["modules"] == 2
