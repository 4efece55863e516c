"""Every distribution the code imports is declared in pyproject.toml, and the lock pins every declared one.

A module that imports a package only because something else happened to install it works until that something
changes its own dependencies; then a fresh install breaks. So: the code under ``gateway/`` may import only the
standard library, itself and distributions named in ``[project.dependencies]``; the tests may also import the
``test`` extra and the load tests the ``load`` extra. Imports are read with ``ast`` (lazy imports inside
functions count too) and mapped to distributions with ``importlib.metadata.packages_distributions``.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from tests.support.procs import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
CONSTRAINTS = ROOT / "constraints.txt"


def _norm(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _names(requirements: list[str]) -> set[str]:
    return {_norm(re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0]) for r in requirements}


def _top_level_imports(path: Path) -> dict[str, int]:
    """Absolute top-level module names imported anywhere in ``path``, with the first line of each."""
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.setdefault(alias.name.split(".")[0], node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.setdefault(node.module.split(".")[0], node.lineno)
    return found


def undeclared(folder: str, declared: set[str], own: set[str]) -> list[str]:
    """``file:line imports module`` for every third-party import in ``folder`` that no declared
    distribution provides."""
    dists = packages_distributions()
    problems = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for module, line in _top_level_imports(path).items():
            if module in sys.stdlib_module_names or module in own:
                continue
            providers = {_norm(d) for d in dists.get(module, [])}
            if not providers & declared:
                where = path.relative_to(ROOT)
                problems.append(f"{where}:{line} imports {module!r}, provided by "
                                f"{sorted(providers) or 'no installed distribution'}: declare it in pyproject.toml")
    return problems


MAIN = _names(PYPROJECT["project"]["dependencies"])
EXTRAS = {name: _names(reqs) for name, reqs in PYPROJECT["project"]["optional-dependencies"].items()}


def test_the_gateway_imports_only_what_it_declares() -> None:
    assert undeclared("gateway", MAIN, {"gateway"}) == []


def test_the_tests_import_only_what_the_test_extra_declares() -> None:
    assert undeclared("tests", MAIN | EXTRAS["test"], {"gateway", "tests"}) == []


def test_the_check_catches_an_undeclared_import(tmp_path: Path) -> None:
    """The check itself can fail: yarl is installed (aiohttp needs it) but declaring only aiohttp is not enough."""
    folder = ROOT / "tests" / "_undeclared_probe"
    folder.mkdir()
    try:
        (folder / "probe.py").write_text("import yarl\n", encoding="utf-8")
        problems = undeclared("tests/_undeclared_probe", {"aiohttp"}, set())
    finally:
        (folder / "probe.py").unlink()
        folder.rmdir()
    assert len(problems) == 1 and "'yarl'" in problems[0]


def test_every_declared_range_has_an_upper_bound() -> None:
    """A tested range is closed: the next major (or minor, below 1.0) release is untested until it is tried."""
    open_ended = [r for reqs in [PYPROJECT["project"]["dependencies"], *PYPROJECT["project"]
                                 ["optional-dependencies"].values()] for r in reqs if "<" not in r]
    assert open_ended == []


def _pins() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin (name==version)"
            pins[_norm(name)] = version
    return pins


@pytest.mark.parametrize("extra", ["main", *sorted(EXTRAS)])
def test_the_lock_pins_every_declared_distribution(extra: str) -> None:
    """``constraints.txt`` (made by ``bash .ci/lock``) pins each declared distribution to one version, so a fresh
    machine installs exactly the tested set."""
    declared = MAIN if extra == "main" else EXTRAS[extra]
    missing = sorted(declared - set(_pins()))
    assert missing == []
