"""``--set FIELD=VALUE`` overrides of nested YAML data, shared by run specs, architecture files and the CLI.

A field is a dotted path through mappings and lists (``calibration.seeds``, ``points.0.levels``; list items by
index); a value is read as YAML (``3``, ``true``, ``[0, 1]``, ``std``; an empty value is the empty string, write
``null`` for none). Missing mappings on the path are created, so an unknown field reaches the schema that
validates the data, which names it and the fields it takes.
"""

from __future__ import annotations

import copy
from typing import Any, Iterable, Mapping, Sequence

import yaml

from qift_hw.core.errors import QiftError


def parse_override(item: str, example: str = "calibration.seeds=[0,1,2]") -> tuple[str, Any]:
    """``"a.b.0=value"`` -> (``"a.b.0"``, value read as YAML); ``example`` is shown when the form is wrong."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise QiftError(f"--set takes field.path=value (e.g. --set {example}), got {item!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        raise QiftError(f"--set {item}: the value is not valid YAML; quote it or write a number, true/false, "
                        "or a list [a, b]") from None
    return key, value


def parse_overrides(items: Iterable[str], example: str = "calibration.seeds=[0,1,2]") -> list[tuple[str, Any]]:
    """`parse_override` of each item, in order."""
    return [parse_override(item, example) for item in items]


def set_path(data: dict, path: str, value: Any, source: str = "--set") -> None:
    """Set the dotted ``path`` in nested dicts/lists to ``value`` in place, creating missing (or null) mappings on
    the way; QiftError (``source path: ...``) for an index out of range or a path through a plain value."""
    parts = path.split(".")
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(parts[:i])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                fix = f"give an index 0..{len(node) - 1}" if node else "set the whole list instead"
                raise QiftError(f"{source} {path}: {where} has {len(node)} item(s); {fix}")
            key: Any = int(part)
        elif isinstance(node, dict):
            key = part
            if not last and node.get(key) is None:
                node[key] = {}
        else:
            raise QiftError(f"{source} {path}: {where} is a value, not a section")
        if last:
            node[key] = value
        else:
            node = node[key]


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[tuple[str, Any]] | Mapping[str, Any],
                    source: str = "--set") -> dict:
    """A deep copy of ``data`` with each (dotted path, value) set (`set_path`); the input is left unchanged."""
    out = copy.deepcopy(dict(data))
    pairs = overrides.items() if isinstance(overrides, Mapping) else overrides
    for path, value in pairs:
        set_path(out, path, value, source)
    return out
