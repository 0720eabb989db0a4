"""`qift-hw run SPEC` through the installed entry point (the venv's `qift-hw` script, in a subprocess): a bad spec
or `--set` is one line on stderr and exit 2 with nothing written, and `--list` prints every point x seed without
running one."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
QIFT_HW = Path(sys.executable).parent / "qift-hw"
GOOD = {"model": "smollm2", "text": "pydoc", "points": [{"levels": "mnz"}]}


def qift_hw(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(QIFT_HW), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("spec, args, words", [
    pytest.param({**GOOD, "colour": "red"}, (), ["unknown field colour"], id="unknown-field"),
    pytest.param({**GOOD, "points": [{"levels": "mnz", "bitz": 2}]}, (), ["unknown field points.0.bitz"],
                 id="unknown-group-field"),
    pytest.param({**GOOD, "calibration": {"seeds": []}}, (), ["calibration.seeds is an empty list"],
                 id="empty-seeds"),
    pytest.param({**GOOD, "points": [{"levels": ["mnz", "mzn"]}]}, (), ["points.0.levels.1", "unknown level set",
                                                                        "mzn"], id="unknown-level-set"),
    pytest.param(GOOD, ("--set", "calibration.seeds"), ["--set takes field.path=value", "calibration.seeds"],
                 id="set-without-equals"),
    pytest.param(GOOD, ("--set", "points.3.levels=std"), ["--set points.3.levels", "points has 1 item(s)"],
                 id="set-index-out-of-range"),
])
def test_bad_spec_is_one_line_exit_2_and_writes_nothing(tmp_path, spec, args, words):
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    res = qift_hw(tmp_path, "run", "s.yaml", *args)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, res.stderr
    assert len(lines) == 1 and lines[0].startswith("error: spec file s.yaml" if not args else "error: --set"), lines
    assert "Traceback" not in res.stderr and res.stdout == ""
    for w in words:
        assert w in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]


def test_list_prints_every_point_and_seed_of_the_seeds_spec(tmp_path):
    spec_file = ROOT / "sim" / "specs" / "seeds.yaml"
    spec = yaml.safe_load(spec_file.read_text())
    seeds = spec["calibration"]["seeds"]
    groups = spec["points"]
    fp = sum(g.get("kind") == "fp" for g in groups)  # FP once; a GPTQ group: its level sets x calibration seeds
    quant = sum(len(g["levels"]) if isinstance(g.get("levels"), list) else 1 for g in groups if g.get("kind") != "fp")
    expected = fp + quant * len(seeds)
    assert expected == 25  # the count the spec's header promises

    res = qift_hw(tmp_path, "run", str(spec_file), "--list")
    assert res.returncode == 0, res.stderr
    numbered = [line for line in res.stdout.splitlines() if re.match(r"^\d+: ", line)]
    assert [int(line.split(":")[0]) for line in numbered] == list(range(expected))
    assert numbered[0] == "0: FP"
    for seed in seeds:
        assert sum(f"(calib seed {seed}," in line for line in numbered) == quant
    assert yaml.safe_load(res.stdout.split("\n0: FP")[0])["name"] == "seeds"  # the resolved spec comes first
    assert list(tmp_path.iterdir()) == []  # nothing run, nothing written
