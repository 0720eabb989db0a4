"""Source statistics of weight matrices: how zero-centred and how Gaussian they are (before/after rotation).

Per module, over all entries of its weight (float64):
- mean, std (population), zero-centredness |mean| / std;
- excess kurtosis m4 / m2^2 - 3 (population moments; 0 for a Gaussian, scipy.stats.kurtosis's default);
- Q-Q error: root-mean-square difference between the sorted standardized weights and the standard normal
  quantiles at plotting positions (i - 0.5) / n (0 for a perfect Gaussian sample, about 1/sqrt(n) noise for a
  real one; large when the tails are heavy).
The row_* variants first standardize every output row (output channel) by its own mean and std, then pool: they
measure the shape each per-channel quantizer sees, without the spread of row scales (a mixture of Gaussians of
different widths has positive kurtosis even when every row is Gaussian).
Reduction factors compare |excess kurtosis| and Q-Q error before and after, module by module.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Iterable

import torch

from qift_hw.core.errors import QiftError

STAT_KEYS = ("mean", "std", "zero_centredness", "excess_kurtosis", "qq_error", "row_excess_kurtosis", "row_qq_error")
SHAPE_KEYS = ("excess_kurtosis", "qq_error", "row_excess_kurtosis", "row_qq_error")


def _flat64(w: torch.Tensor) -> torch.Tensor:
    x = w.detach().reshape(-1).to(torch.float64)
    if x.numel() < 2:
        raise QiftError(f"statistics need at least 2 values, got {x.numel()}")
    if not torch.isfinite(x).all():
        raise QiftError("weight holds NaN or infinite values; the checkpoint is broken")
    return x


def excess_kurtosis(w: torch.Tensor) -> float:
    """Population excess kurtosis m4 / m2^2 - 3 of all entries."""
    x = _flat64(w)
    d = x - x.mean()
    m2 = (d * d).mean()
    if m2 == 0:
        raise QiftError("excess kurtosis of a constant tensor is undefined")
    return float((d**4).mean() / m2**2 - 3.0)


@functools.lru_cache(maxsize=8)
def _quantiles64(n: int) -> torch.Tensor:
    p = (torch.arange(1, n + 1, dtype=torch.float64) - 0.5) / n
    return torch.special.ndtri(p)


def normal_quantiles(n: int, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """Standard normal quantiles at the plotting positions (i - 0.5) / n, i = 1..n (cached per n)."""
    return _quantiles64(n).to(device=device, dtype=dtype)


def standardized_sorted(w: torch.Tensor) -> torch.Tensor:
    """Entries standardized by the population mean and std, sorted ascending."""
    x = _flat64(w)
    std = x.std(unbiased=False)
    if std == 0:
        raise QiftError("Q-Q error of a constant tensor is undefined")
    return torch.sort((x - x.mean()) / std).values


def qq_error(w: torch.Tensor) -> float:
    """RMS difference between sorted standardized entries and standard normal quantiles."""
    z = standardized_sorted(w)
    return float(torch.sqrt(((z - normal_quantiles(z.numel(), device=z.device)) ** 2).mean()))


def row_standardized(w: torch.Tensor) -> torch.Tensor:
    """A 2-D weight with every row shifted to mean 0 and scaled to std 1 (population), float64."""
    if w.dim() != 2:
        raise QiftError(f"row statistics need a 2-D weight, got shape {tuple(w.shape)}")
    x = w.detach().to(torch.float64)
    std = x.std(dim=1, unbiased=False, keepdim=True)
    if (std == 0).any():
        raise QiftError("a weight row is constant; row statistics are undefined")
    return (x - x.mean(dim=1, keepdim=True)) / std


def weight_stats(w: torch.Tensor) -> dict[str, float]:
    """All statistics of one weight tensor (keys: STAT_KEYS and n); the row_* ones only for 2-D weights."""
    x = _flat64(w)
    mean = float(x.mean())
    std = float(x.std(unbiased=False))
    out = {
        "n": int(x.numel()),
        "mean": mean,
        "std": std,
        "zero_centredness": abs(mean) / std if std > 0 else math.inf,
        "excess_kurtosis": excess_kurtosis(x),
        "qq_error": qq_error(x),
    }
    if w.dim() == 2:
        z = row_standardized(w)
        out["row_excess_kurtosis"] = excess_kurtosis(z)
        out["row_qq_error"] = qq_error(z)
    return out


def qq_points(w: torch.Tensor, points: int = 400) -> tuple[list[float], list[float]]:
    """(normal quantiles, sorted standardized entries) at about `points` ranks evenly spaced in normal-quantile
    space (so the tails are drawn as densely as the centre), for plots."""
    z = standardized_sorted(w)
    n = z.numel()
    q = normal_quantiles(n, device=z.device)
    targets = torch.linspace(float(q[0]), float(q[-1]), min(points, n), dtype=torch.float64, device=z.device)
    idx = torch.unique(torch.searchsorted(q, targets).clamp(max=n - 1))
    return q[idx].tolist(), z[idx].tolist()


def reduction(before: float, after: float) -> float:
    """|before| / |after| (inf when after is exactly 0)."""
    return abs(before) / abs(after) if after != 0 else math.inf


def summarize(rows: Iterable[dict], before: str = "original", after: str = "rotated") -> dict:
    """Medians over modules of each statistic in both states, and median reduction factors.

    `rows`: dicts with "name" and one dict of weight_stats per state key (e.g. rows[i]["original"]).
    """
    rows = list(rows)
    if not rows:
        raise QiftError("no modules to summarize")
    out: dict = {"modules": len(rows), "before": before, "after": after}
    shape_keys = [k for k in SHAPE_KEYS if all(k in r[before] and k in r[after] for r in rows)]
    for key in ("zero_centredness", *shape_keys):
        for state in (before, after):
            out[f"median_{key}_{state}"] = statistics.median(r[state][key] for r in rows)
    for key in shape_keys:
        factors = [reduction(r[before][key], r[after][key]) for r in rows]
        out[f"median_{key}_reduction"] = statistics.median(factors)
        out[f"min_{key}_reduction"] = min(factors)
        out[f"modules_{key}_reduced"] = sum(f > 1 for f in factors)
    out["max_zero_centredness_" + before] = max(r[before]["zero_centredness"] for r in rows)
    return out


def module_kind(name: str) -> str:
    """Last part of a qualified module name: "model.layers.3.mlp.down_proj" -> "down_proj"."""
    return name.rsplit(".", 1)[-1]


def summarize_by_kind(rows: Iterable[dict], states: tuple[str, ...]) -> list[dict]:
    """Per module kind (q_proj, ..., down_proj): rows like the module rows, holding medians over that kind."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(module_kind(r["name"]), []).append(r)
    out = []
    for kind, rs in groups.items():
        row: dict = {"name": kind, "modules": len(rs)}
        for state in states:
            keys = [k for k in ("zero_centredness", *SHAPE_KEYS) if all(k in r[state] for r in rs)]
            row[state] = {k: statistics.median(r[state][k] for r in rs) for k in keys}
        out.append(row)
    return out


COLUMNS = (("zero_centredness", r"\|mean\|/std"), ("excess_kurtosis", "ex. kurtosis"), ("qq_error", "Q-Q err"),
           ("row_excess_kurtosis", "row ex. kurtosis"), ("row_qq_error", "row Q-Q err"))


def markdown_table(rows: list[dict], states: tuple[str, ...], label: str = "module") -> str:
    """One line per row (module or kind): each statistic of COLUMNS in every state (values or medians)."""
    cols = [(k, short) for k, short in COLUMNS if any(k in r[states[0]] for r in rows)]
    head = [label] + [f"{short} {s}" for _, short in cols for s in states]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["name"]]
        for key, _ in cols:
            cells += [f"{r[s][key]:.4g}" if key in r[s] else "-" for s in states]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
