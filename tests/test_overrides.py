"""`--set` overrides (qift_hw.core.overrides): parsing FIELD=VALUE, setting dotted paths through dicts and lists,
and the one-line errors; the same function behind run specs, architecture files and `estimate --set`."""

import pytest

from qift_hw.core.errors import QiftError
from qift_hw.core.overrides import apply_overrides, parse_override, parse_overrides, set_path


@pytest.mark.parametrize("item, expected", [
    ("dram.gbps=32", ("dram.gbps", 32)),
    ("a.b=0.5", ("a.b", 0.5)),
    (" seeds =[0, 1, 2]", ("seeds", [0, 1, 2])),
    ("flag=false", ("flag", False)),
    ("levels=std", ("levels", "std")),
    ("label='3'", ("label", "3")),
    ("text=a=b", ("text", "a=b")),
    ("name=", ("name", "")),
    ("windows=null", ("windows", None)),
])
def test_parse_override(item, expected):
    assert parse_override(item) == expected


@pytest.mark.parametrize("item, words", [
    ("dram.gbps", ["field.path=value", "dram.gbps=32", "'dram.gbps'"]),
    ("=3", ["field.path=value"]),
    ("a..b=3", ["field.path=value"]),
    ("a.=3", ["field.path=value"]),
    ("x=[0, 1", ["--set x=[0, 1", "not valid YAML", "quote it"]),
])
def test_bad_items_are_one_line(item, words):
    with pytest.raises(QiftError) as err:
        parse_override(item, "dram.gbps=32")
    msg = str(err.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg


def test_set_path_through_dicts_and_lists():
    data = {"points": [{"levels": "mnz"}, {"levels": "std"}], "calibration": None, "name": "x"}
    set_path(data, "points.1.levels", ["a", "b"])
    set_path(data, "calibration.seeds", [3])  # a null section becomes a mapping
    set_path(data, "evaluation.windows", 5)  # a missing one is created
    set_path(data, "points.0", {"kind": "fp"})
    assert data == {"points": [{"kind": "fp"}, {"levels": ["a", "b"]}], "calibration": {"seeds": [3]},
                    "name": "x", "evaluation": {"windows": 5}}


@pytest.mark.parametrize("path, words", [
    ("points.2.levels", ["--set points.2.levels", "points has 2 item(s)", "0..1"]),
    ("points.x", ["points has 2 item(s)"]),
    ("name.first", ["--set name.first", "name is a value, not a section"]),
    ("points.0.levels.x", ["points.0.levels is a value"]),
])
def test_set_path_errors(path, words):
    data = {"points": [{"levels": "mnz"}, {"levels": "std"}], "name": "x"}
    with pytest.raises(QiftError) as err:
        set_path(data, path, 1)
    for w in words:
        assert w in str(err.value)
    assert "\n" not in str(err.value)


def test_apply_overrides_copies_and_applies_in_order():
    data = {"a": {"b": [1, 2]}, "c": 0}
    out = apply_overrides(data, parse_overrides(["a.b.1=7", "c=1", "c=2"]))
    assert out == {"a": {"b": [1, 7]}, "c": 2}
    assert data == {"a": {"b": [1, 2]}, "c": 0}
    assert apply_overrides(data, {"a.b.0": 9}) == {"a": {"b": [9, 2]}, "c": 0}
    with pytest.raises(QiftError, match="^override c.d: c is a value"):
        apply_overrides(data, [("c.d", 1)], source="override")


def test_empty_list_has_no_index():
    with pytest.raises(QiftError, match=r"seeds has 0 item\(s\); set the whole list instead"):
        set_path({"seeds": []}, "seeds.0", 1)
