"""The DeployAlly Python SDK (``deployally``, installed from sdk/python) against a real `gateway serve` process.

The gateway runs as the DeployAlly guide describes the platform: ``da_`` keys, ``{"success": ..}`` bodies with
``UNAUTHORIZED`` / ``FORBIDDEN`` codes, the API under ``/api/v1``. The key comes from ``DEPLOYALLY_API_KEY`` or,
as the guide's "Armazenamento" section shows, from ``~/.config/deployally/config.toml`` (``api_key = "da_xxx"``,
chmod 600): HOME and XDG_CONFIG_HOME point at a temporary directory, so the real file of whoever runs the suite is
never read. Nothing is mocked.
"""

from __future__ import annotations

import asyncio
import io
import os
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest
from deployally import (
    AsyncClient,
    AuthenticationError,
    Client,
    ConfigurationError,
    NotFoundError,
    PermissionDeniedError,
    SDKError,
    ValidationError,
)

from tests.support.procs import ROOT, Gateway, Upstream, free_port

ENV = ("DEPLOYALLY_API_KEY", "DEPLOYALLY_BASE_URL", "DEPLOYERP_API_KEY", "XDG_CONFIG_HOME")


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    u = Upstream(tmp_path_factory.mktemp("ally-sdk-upstream"))
    yield u
    u.stop()


@pytest.fixture(scope="module")
def ally(tmp_path_factory: pytest.TempPathFactory, up: Upstream) -> Iterator[Gateway]:
    g = Gateway(tmp_path_factory.mktemp("ally-sdk"), up.url, {
        "error_format": "deployally", "key_format": "deployally", "management": {"prefix": "/api/v1"},
        "policies": str(ROOT / "policies" / "deployally.yaml"),
    })
    yield g
    g.stop()


@pytest.fixture(scope="module")
def admin(ally: Gateway) -> str:
    value = str(ally.create_key("ally-admin", "api-keys:read,api-keys:write,templates:read")["value"])
    assert value.startswith("da_")
    return value


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home directory of this test's own, no DeployAlly variable set."""
    for var in ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def _config(home: Path, text: str, mode: int = 0o600) -> Path:
    path = home / ".config" / "deployally" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def _all_text(exc: BaseException) -> str:
    buf = io.StringIO()
    traceback.print_exception(exc, file=buf)
    return f"{exc}\n{exc!r}\n{buf.getvalue()}"


def test_the_variable_and_the_guide_base_url(ally: Gateway, admin: str, home: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEPLOYALLY_API_KEY", admin)
    with Client() as c:
        assert (c.base_url, c.prefix) == ("https://sys.deployally.com/api/v1", "")
    monkeypatch.setenv("DEPLOYALLY_BASE_URL", f"{ally.url}/api/v1")
    with Client() as c:
        assert c.auth.test()["authenticated"] is True
    monkeypatch.setenv("DEPLOYERP_API_KEY", "dep_live_" + "A" * 32)  # the other platform's variable: not read
    monkeypatch.delenv("DEPLOYALLY_API_KEY")
    with Client() as c, pytest.raises(AuthenticationError) as info:
        c.auth.test()
    assert info.value.code == "UNAUTHORIZED" and "DEPLOYALLY_API_KEY" in str(info.value)
    assert "config.toml" in str(info.value)  # names where else it looked


def test_the_config_file_when_the_variable_is_unset(ally: Gateway, admin: str, home: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """``echo 'api_key = "da_xxx"' > ~/.config/deployally/config.toml; chmod 600 ...``, as the guide says."""
    _config(home, f'api_key = "{admin}"\n')
    monkeypatch.setenv("DEPLOYALLY_BASE_URL", f"{ally.url}/api/v1")
    with Client() as c:
        assert c.auth.test()["authenticated"] is True
    # the variable wins over the file (a refused key shows which one was used)
    monkeypatch.setenv("DEPLOYALLY_API_KEY", "da_" + "k" * 32)
    with Client() as c, pytest.raises(AuthenticationError):
        c.auth.test()
    # an argument wins over both
    with Client(api_key=admin) as c:
        assert c.auth.test()["authenticated"] is True


def test_xdg_config_home_is_honoured(ally: Gateway, admin: str, home: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """XDG Base Directory: ``$XDG_CONFIG_HOME`` (default ``~/.config``) holds the file."""
    elsewhere = home / "xdg"
    path = elsewhere / "deployally" / "config.toml"
    path.parent.mkdir(parents=True)
    path.write_text(f'api_key = "{admin}"\n')
    path.chmod(0o600)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(elsewhere))
    with Client(base_url=f"{ally.url}/api/v1") as c:
        assert c.auth.test()["authenticated"] is True


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660], ids=lambda m: f"{m:04o}")
def test_a_config_file_others_can_read_is_refused(home: Path, admin: str, mode: int) -> None:
    """As ssh refuses a private key others can read: the file is not used, and the error says how to fix it."""
    path = _config(home, f'api_key = "{admin}"\n', mode)
    with pytest.raises(ConfigurationError) as info:
        Client()
    message = str(info.value)
    assert f"chmod 600 {path}" in message and f"{mode:04o}" in message
    assert admin not in _all_text(info.value)
    assert isinstance(info.value, SDKError)
    path.chmod(0o600)
    Client().close()  # fixed: accepted
    path.chmod(0o400)  # read-only for the owner is fine too
    Client().close()


def test_the_config_file_is_not_read_when_the_variable_is_set(home: Path, admin: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    _config(home, f'api_key = "{admin}"\n', 0o644)
    monkeypatch.setenv("DEPLOYALLY_API_KEY", admin)
    Client().close()  # a loose file that is not used is not an error


@pytest.mark.parametrize(("text", "says"), [
    ('api_key = "da_unterminated\n', "line 1"),
    ("api_key = 42\n", "api_key must be a string"),
    ("[api_key]\nvalue = 1\n", "api_key must be a string"),
])
def test_a_broken_config_file_is_named(home: Path, text: str, says: str) -> None:
    path = _config(home, text)
    with pytest.raises(ConfigurationError) as info:
        Client()
    assert str(path) in str(info.value) and says in str(info.value)
    assert "da_unterminated" not in _all_text(info.value)


def test_a_config_file_without_a_key_fails_at_the_first_call(home: Path) -> None:
    _config(home, "# nothing yet\n")
    with Client(base_url=f"http://127.0.0.1:{free_port()}/api/v1") as c, pytest.raises(AuthenticationError):
        c.auth.test()


def test_wrapper_removed_and_codes_kept(ally: Gateway, admin: str, home: Path, up: Upstream,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Bodies come as ``{"success": true, "data": ...}``: the SDK returns ``data``; errors come as
    ``{"success": false, "error": {...}}``: the SDK raises the typed error with the guide's code."""
    monkeypatch.setenv("DEPLOYALLY_API_KEY", admin)
    monkeypatch.setenv("DEPLOYALLY_BASE_URL", f"{ally.url}/api/v1")
    with Client() as c:
        created = c.api_keys.create("Servidor Produção", permissions=["templates:read"],
                                    allowed_ips=["203.0.113.10"])
        assert created["value"].startswith("da_") and created["allowed_ips"] == ["203.0.113.10/32"]
        assert c.api_keys.get(created["id"])["name"] == "Servidor Produção"
        assert created["id"] in [k["id"] for k in c.api_keys.list(limit=500)["data"]]
        assert c.api_keys.update(created["id"], description="x")["description"] == "x"
        limited = c.api_keys.create("ally-limited", permissions=["templates:read"])["value"]
        assert c.api_keys.rotate(created["id"], grace_period="0")["new_key"]["value"].startswith("da_")
        with pytest.raises(NotFoundError) as nf:
            c.api_keys.revoke("key_doesnotexist00")
        assert nf.value.code == "NOT_FOUND"
        with pytest.raises(ValidationError) as ve:
            c.api_keys.create("x", permissions=["templates:read"], rate_limit_tier="gold")
        assert (ve.value.code, ve.value.field) == ("VALIDATION_ERROR", "rate_limit_tier")
        # a route of the API, relative to the base URL as the guide's curl lines are
        up.clear()
        c.request("GET", "/templates")
        assert [r["path"] for r in up.records()] == ["/api/v1/templates"]
    with Client(api_key="da_" + "k" * 32) as bad, pytest.raises(AuthenticationError) as ae:
        bad.auth.test()
    assert (ae.value.status_code, ae.value.code) == (401, "UNAUTHORIZED")
    with Client(api_key=limited) as lc, pytest.raises(PermissionDeniedError) as pd:
        lc.api_keys.list()
    assert (pd.value.status_code, pd.value.code) == (403, "FORBIDDEN")


def test_async_client_reads_the_config_file(ally: Gateway, admin: str, home: Path) -> None:
    _config(home, f'api_key = "{admin}"\n')

    async def main() -> None:
        async with AsyncClient(base_url=f"{ally.url}/api/v1") as c:
            assert (await c.auth.test())["authenticated"] is True
            assert (await c.api_keys.list(limit=1))["pagination"]["limit"] == 1

    asyncio.run(asyncio.wait_for(main(), 60))


def test_repr_never_shows_the_key(admin: str, home: Path) -> None:
    _config(home, f'api_key = "{admin}"\n')
    with Client() as c:
        assert repr(c) == "Client(base_url='https://sys.deployally.com/api/v1', prefix='', api_key='[redacted]')"
        assert admin[-6:] not in repr(c) and admin[-6:] not in repr(c.api_keys)
    assert os.environ.get("DEPLOYALLY_API_KEY") is None
