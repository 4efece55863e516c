"""ruff over the whole tree, with the rules pyproject.toml selects (E, F, I, B, UP), and mypy --strict over the
gateway and the Python SDK: the style the project keeps (../shared/STYLE.md) is checked on every run rather than
by whoever remembers to."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.procs import ROOT

SDK = ROOT / "sdk" / "python"


def _mypy(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mypy", "--no-incremental", "--cache-dir", "/dev/null", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=300)


def test_ruff_finds_nothing() -> None:
    """sdk/python has its own pyproject.toml with the same rules (ruff uses the nearest one)."""
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff is not None, "ruff is not installed: pip install -e '.[test]'"
    done = subprocess.run([ruff, "check", "--no-cache", "gateway", "tests", "loadtests", "sdk/python"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_strict_finds_nothing() -> None:
    """mypy --strict over gateway/ (the settings are [tool.mypy] in pyproject.toml)."""
    done = _mypy(cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_strict_finds_nothing_in_the_sdk() -> None:
    """The SDK is imported by users' code, so its annotations are checked too: mypy --strict over sdk/python/src
    (its own [tool.mypy])."""
    done = _mypy(cwd=SDK)
    assert done.returncode == 0, done.stdout + done.stderr


def test_users_code_is_type_checked_against_the_installed_sdk(tmp_path: Path) -> None:
    """PEP 561: the packages ship ``py.typed``, so a user's ``mypy --strict`` reads the SDK's annotations (without
    it mypy refuses the import) and catches a misuse: here a ``str`` where the key list is a ``dict``."""
    user = tmp_path / "app.py"
    user.write_text(
        "import deployally\n"
        "from deployerp import AsyncClient, AuthenticationError, Client\n\n"
        "def main() -> None:\n"
        "    with Client() as client:\n"
        "        try:\n"
        "            me: dict[str, object] = client.auth.test()\n"
        "        except AuthenticationError as e:\n"
        "            print(e.status_code + 1, e.code)\n"
        "            return\n"
        "        page: str = client.api_keys.list()\n"
        "    deployally.Client().close()\n\n"
        "async def amain() -> None:\n"
        "    async with AsyncClient() as client:\n"
        "        print(await client.api_keys.get('key_abc123'), me)\n"
    )
    done = _mypy("--strict", str(user), cwd=tmp_path)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    errors = [line for line in out.splitlines() if ": error:" in line]
    assert len(errors) == 2, out  # the str annotation, and `me` unknown in amain
    assert "app.py:11: error: Incompatible types in assignment" in errors[0], out
    assert 'app.py:16: error: Name "me" is not defined' in errors[1], out


def test_the_layers_hold() -> None:
    """import-linter's contracts in pyproject.toml: front doors above the gate, the gate above the stores, limits
    and policy, configuration at the bottom, and no transport in the gate. A module importing upwards (or an
    import cycle across layers) fails this test with the chain of imports that does it."""
    lint = Path(sys.executable).parent / "lint-imports"
    assert lint.exists(), "import-linter is part of the [test] extra: pip install -e '.[test]'"
    done = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
