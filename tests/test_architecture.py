"""The import rules of the package layout (pyproject.toml [tool.importlinter]) hold, and a wrong arrow breaks them."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([LINT], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"})


@pytest.fixture(scope="module")
def lint_available():
    if not Path(LINT).exists():
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")


def test_import_contracts_hold(lint_available):
    proc = _lint(ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "BROKEN" not in proc.stdout


def test_an_upward_import_breaks_a_contract(lint_available, tmp_path):
    """Copy the package, add one import from core up to the CLI, and the linter must fail on that contract."""
    shutil.copytree(ROOT / "qift_hw", tmp_path / "qift_hw", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "qift_hw" / "core" / "uphill.py").write_text("import qift_hw.cli.app  # noqa: F401\n")
    proc = _lint(tmp_path)
    assert proc.returncode != 0
    assert "core imports nothing else of qift_hw BROKEN" in proc.stdout
