"""Which decoder layers get 2-bit weights in a mixed-precision ("L-layer") run.

Spec strings: `all`, `none`, `first:L`, `last:L`, an explicit list `0,1,5` (ranges `2-4` allowed), or
`sensitivity:L`. Sensitivity selection is greedy on a measured per-layer score (see `pick_least_sensitive`):
the pipeline measures, for every layer in isolation on the rotated float model's calibration inputs, how much
more the decoder layer's output moves at W2 than at the other precision, and keeps W2 where that costs least.
"""

from __future__ import annotations

from dataclasses import dataclass

from qift_hw.core.errors import QiftError


@dataclass(frozen=True)
class W2Spec:
    """A parsed `--w2-layers` value: kind in {all, none, first, last, list, sensitivity}."""

    kind: str
    count: int = 0
    layers: tuple[int, ...] = ()

    @property
    def needs_scores(self) -> bool:
        return self.kind == "sensitivity"

    def __str__(self) -> str:
        if self.kind in ("all", "none"):
            return self.kind
        if self.kind == "list":
            return ",".join(map(str, self.layers))
        return f"{self.kind}:{self.count}"


def _count(text: str, spec: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise QiftError(f"--w2-layers {spec!r}: {text!r} is not a layer count; use e.g. first:8") from None
    if value < 0:
        raise QiftError(f"--w2-layers {spec!r}: the layer count must be >= 0")
    return value


def parse_w2_spec(spec: str) -> W2Spec:
    """Parse a `--w2-layers` string (without knowing the model's depth yet)."""
    s = spec.strip().lower()
    if s in ("all", "none"):
        return W2Spec(s)
    if ":" in s:
        kind, _, rest = s.partition(":")
        if kind not in ("first", "last", "sensitivity"):
            raise QiftError(
                f"--w2-layers {spec!r}: unknown selector {kind!r}; use all, none, first:L, last:L, sensitivity:L "
                "or a list like 0,1,5"
            )
        return W2Spec(kind, count=_count(rest, spec))
    layers: list[int] = []
    for part in s.split(","):
        part = part.strip()
        if not part:
            continue
        lo, dash, hi = part.partition("-")
        try:
            if dash:
                a, b = int(lo), int(hi)
                if b < a:
                    raise ValueError
                layers.extend(range(a, b + 1))
            else:
                layers.append(int(part))
        except ValueError:
            raise QiftError(
                f"--w2-layers {spec!r}: {part!r} is not a layer index or range; use all, first:L, last:L, "
                "sensitivity:L or a list like 0,1,5"
            ) from None
    if not layers:
        raise QiftError(f"--w2-layers {spec!r} selects nothing; use none to keep every layer at the other precision")
    return W2Spec("list", layers=tuple(sorted(set(layers))))


def pick_least_sensitive(scores: list[float] | dict[int, float], count: int) -> list[int]:
    """The `count` layers with the lowest scores (ties: lower index first), sorted by index.

    With one independent score per layer, greedily adding the cheapest layer until `count` are chosen is the
    same as taking the `count` smallest.
    """
    items = list(scores.items()) if isinstance(scores, dict) else list(enumerate(scores))
    chosen = sorted(items, key=lambda kv: (kv[1], kv[0]))[:count]
    return sorted(i for i, _ in chosen)


def select_w2_layers(spec: W2Spec | str, n_layers: int, scores: list[float] | None = None) -> list[int]:
    """Resolve a spec to the sorted list of W2 layer indices for a model with n_layers decoder layers."""
    if isinstance(spec, str):
        spec = parse_w2_spec(spec)
    if spec.kind == "all":
        return list(range(n_layers))
    if spec.kind == "none":
        return []
    if spec.kind == "list":
        bad = [i for i in spec.layers if i >= n_layers]
        if bad:
            raise QiftError(f"--w2-layers: layer(s) {bad} out of range; the model has {n_layers} layers (0..{n_layers - 1})")
        return list(spec.layers)
    if spec.count > n_layers:
        raise QiftError(f"--w2-layers {spec}: the model has only {n_layers} layers")
    if spec.kind == "first":
        return list(range(spec.count))
    if spec.kind == "last":
        return list(range(n_layers - spec.count, n_layers))
    if scores is None or len(scores) != n_layers:
        raise QiftError("--w2-layers sensitivity:L needs one measured score per layer (run the sensitivity pass)")
    return pick_least_sensitive(scores, spec.count)
