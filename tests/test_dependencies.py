"""Every distribution the code imports is declared in pyproject.toml, and the lock pins every declared one.

A module that imports a package only because something else happened to install it works until that something
changes its own dependencies; then a fresh install breaks. So: the code under ``gateway/`` may import only the
standard library, itself and distributions named in ``[project.dependencies]`` (and the one module behind an
optional extra, its extra: gateway/observability/otel.py, the ``otel`` extra, imported only when tracing is on);
the tests may also import the ``test`` extra and the load tests the ``load`` extra. Imports are read with
``ast`` (lazy imports inside functions count too) and mapped to distributions with
``importlib.metadata.packages_distributions``.

The Python SDK (sdk/python, the ``deployerp-sdk`` distribution: packages ``deployerp``, ``deployally`` and the
private ``_deployerp_sdk``) is a package of its own with its own pyproject.toml: its code may import only the
standard library, itself and what that file declares (httpx). The tests import it too, from this checkout: the
suite's install command (``.ci/run``, the README) installs it with ``pip install -e sdk/python``, as
pyproject.toml cannot name a local path; the gateway itself never imports it.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
import tomllib
from importlib.metadata import packages_distributions, version
from pathlib import Path

import pytest

from tests.support.procs import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
SDK_ROOT = ROOT / "sdk" / "python"
SDK_PYPROJECT = tomllib.loads((SDK_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
SDK_PACKAGES = {"deployerp", "deployally", "_deployerp_sdk"}
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


def undeclared(folder: str, declared: set[str], own: set[str],
               per_file: dict[str, set[str]] | None = None) -> list[str]:
    """``file:line imports module`` for every third-party import in ``folder`` that no declared
    distribution provides (``per_file``: more distributions one file, by its path, may import)."""
    dists = packages_distributions()
    problems = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        allowed = declared | (per_file or {}).get(path.relative_to(ROOT).as_posix(), set())
        for module, line in _top_level_imports(path).items():
            if module in sys.stdlib_module_names or module in own:
                continue
            providers = {_norm(d) for d in dists.get(module, [])}
            if not providers & allowed:
                where = path.relative_to(ROOT)
                problems.append(f"{where}:{line} imports {module!r}, provided by "
                                f"{sorted(providers) or 'no installed distribution'}: declare it in pyproject.toml")
    return problems


MAIN = _names(PYPROJECT["project"]["dependencies"])
EXTRAS = {name: _names(reqs) for name, reqs in PYPROJECT["project"]["optional-dependencies"].items()}
SDK_DIST = _norm(SDK_PYPROJECT["project"]["name"])
SDK_MAIN = _names(SDK_PYPROJECT["project"]["dependencies"])


def test_the_gateway_imports_only_what_it_declares() -> None:
    """The SDK is not among them: a gateway module importing ``deployerp`` is reported. OpenTelemetry (the ``otel``
    extra) only in gateway/observability/otel.py, which the app imports only when tracing is on."""
    assert undeclared("gateway", MAIN, {"gateway"}, {"gateway/observability/otel.py": EXTRAS["otel"]}) == []


def test_the_tests_import_only_what_the_test_extra_declares() -> None:
    """... and the local SDK, which the suite's install command adds."""
    assert undeclared("tests", MAIN | EXTRAS["test"] | {SDK_DIST}, {"gateway", "tests"}) == []


def test_the_sdk_imports_only_what_its_own_pyproject_declares() -> None:
    """A user installs the SDK alone: nothing of the gateway's (uvicorn, aiohttp, redis ...) may creep in."""
    assert SDK_MAIN == {"httpx"}
    assert undeclared("sdk/python/src", SDK_MAIN, SDK_PACKAGES) == []


def test_the_tests_import_the_sdk_of_this_checkout() -> None:
    """``deployerp-sdk`` is installed from sdk/python (editable), not a copy from elsewhere: the tests exercise the
    code next to them, and every SDK package the tests import belongs to that distribution."""
    dists = packages_distributions()
    for package in SDK_PACKAGES:
        assert _norm_all(dists.get(package, [])) == {SDK_DIST}, f"{package} is not from {SDK_DIST}"
        spec = importlib.util.find_spec(package)
        assert spec is not None and spec.origin is not None, package
        assert Path(spec.origin).resolve().is_relative_to(SDK_ROOT / "src"), (
            f"{package} is imported from {spec.origin}, not from {SDK_ROOT / 'src'}: pip install -e sdk/python")
    written = (SDK_ROOT / "src" / "_deployerp_sdk" / "_version.py").read_text(encoding="utf-8")
    assert f'__version__ = "{version(SDK_DIST)}"' in written, "the installed SDK is not this checkout's version"


def _norm_all(names: list[str]) -> set[str]:
    return {_norm(n) for n in names}


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
    """A tested range is closed: the next major (or minor, below 1.0) release is untested until it is tried. The
    SDK's too: it is installed into other people's environments, where an untested httpx would arrive first."""
    open_ended = [r for reqs in [PYPROJECT["project"]["dependencies"], *PYPROJECT["project"]
                                 ["optional-dependencies"].values(), SDK_PYPROJECT["project"]["dependencies"]]
                  for r in reqs if "<" not in r]
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


@pytest.mark.parametrize("extra", ["main", *sorted(EXTRAS), "sdk"])
def test_the_lock_pins_every_declared_distribution(extra: str) -> None:
    """``constraints.txt`` (made by ``bash .ci/lock``) pins each declared distribution to one version, so a fresh
    machine installs exactly the tested set."""
    declared = {"main": MAIN, "sdk": SDK_MAIN}.get(extra) or EXTRAS[extra]
    missing = sorted(declared - set(_pins()))
    assert missing == []
