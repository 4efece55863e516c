"""ruff over the whole tree, with the rules pyproject.toml selects (E, F, I, B, UP): the style the project keeps
(../shared/STYLE.md) is checked on every run rather than by whoever remembers to."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.procs import ROOT


def test_ruff_finds_nothing() -> None:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff is not None, "ruff is not installed: pip install -e '.[test]'"
    done = subprocess.run([ruff, "check", "--no-cache", "gateway", "tests", "loadtests"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_strict_finds_nothing() -> None:
    """The package ships py.typed (the SDK in gateway/client is imported by users' code), so its annotations
    are checked too: mypy --strict over gateway/ (the settings are [tool.mypy] in pyproject.toml)."""
    done = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental", "--cache-dir", "/dev/null"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
