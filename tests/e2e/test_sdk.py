"""The deployERP Python SDK (``deployerp``, installed from sdk/python) against real `gateway serve` processes.

Keys are created with the CLI (the operator's way), then every SDK method and every error class is exercised
against the live gateway over loopback sockets, blocking and async; the deployERP guide's snippet runs as a
user's script in its own process. Nothing is mocked. The DeployAlly package is tested in test_sdk_deployally.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from deployerp import (
    APIConnectionError,
    APIError,
    AsyncClient,
    AuthenticationError,
    Client,
    ConfigurationError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    SDKError,
    ServerError,
    ValidationError,
)

from tests.support.procs import Gateway, Upstream, free_port

KEY_VARS = ("DEPLOYERP_API_KEY", "DEPLOYERP_BASE_URL")


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    u = Upstream(tmp_path_factory.mktemp("sdk-upstream"))
    yield u
    u.stop()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, up: Upstream) -> Iterator[Gateway]:
    """One deployERP gateway for the module (starting one costs about a second)."""
    settings = {"rotation": {"grace_period": "1h"}, "cache": {"ttl_seconds": 0.5}}
    g = Gateway(tmp_path_factory.mktemp("sdk-gw"), up.url, settings)
    yield g
    g.stop()


@pytest.fixture(scope="module")
def admin(gw: Gateway) -> str:
    return str(gw.create_key("sdk-admin", "api-keys:read,api-keys:write,servers:read,instances:*")["value"])


@pytest.fixture(scope="module")
def reader(gw: Gateway) -> str:
    return str(gw.create_key("sdk-reader", "api-keys:read,servers:read")["value"])


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in KEY_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def _all_text(exc: BaseException) -> str:
    """Everything a log would show of an exception: str, repr and the whole chained traceback."""
    buf = io.StringIO()
    traceback.print_exception(exc, file=buf)
    return f"{exc}\n{exc!r}\n{buf.getvalue()}"


# --- the seed's snippet, as a user's script ---------------------------------------------------------------------

# The deployERP guide's "Python SDK" snippet, word for word but for two things: the key placeholder is a real key
# (SNIPPET_KEY), and AuthenticationError is imported too (the guide's snippet catches it without importing it, so
# as printed it would fail with NameError the first time a key is refused). The host comes from
# DEPLOYERP_BASE_URL, which Client() reads beside DEPLOYERP_API_KEY.
SEED_SNIPPET = '''\
from deployerp import Client, AuthenticationError

# Initialize client with API key
client = Client(api_key="SNIPPET_KEY")

# Or use environment variable
client = Client()  # Reads from DEPLOYERP_API_KEY env var

# Test authentication
try:
    client.auth.test()
    print("Authentication successful")
except AuthenticationError as e:
    print(f"Authentication failed: {e}")
'''


def _run_snippet(tmp_path: Path, key_in_code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "snippet.py"
    script.write_text(SEED_SNIPPET.replace("SNIPPET_KEY", key_in_code))
    clean = {k: v for k, v in os.environ.items() if k not in KEY_VARS}
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                          env={**clean, **env}, cwd=tmp_path)


def test_seed_snippet_authenticates(gw: Gateway, admin: str, tmp_path: Path) -> None:
    """The snippet, run as a script: ``Client()`` reads DEPLOYERP_API_KEY and ``auth.test()`` succeeds."""
    done = _run_snippet(tmp_path, admin, {"DEPLOYERP_API_KEY": admin, "DEPLOYERP_BASE_URL": gw.url})
    assert (done.returncode, done.stdout, done.stderr) == (0, "Authentication successful\n", "")


def test_seed_snippet_reports_a_bad_key(gw: Gateway, admin: str, tmp_path: Path) -> None:
    """A key whose checksum fails is refused by the gateway (401 invalid_token): the snippet's except clause
    catches it and prints the reason, without the key."""
    bad = admin[:-1] + ("A" if admin[-1] != "A" else "B")
    done = _run_snippet(tmp_path, bad, {"DEPLOYERP_API_KEY": bad, "DEPLOYERP_BASE_URL": gw.url})
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.startswith("Authentication failed: 401 invalid_token:"), done.stdout
    assert bad not in done.stdout


def test_seed_snippet_without_a_key_fails_inside_the_try(tmp_path: Path) -> None:
    """No DEPLOYERP_API_KEY: ``Client()`` (outside the snippet's try) must not raise; ``auth.test()`` raises
    AuthenticationError naming the variable, before any request (nothing listens at the base URL here, so a
    request would have been an APIConnectionError instead)."""
    done = _run_snippet(tmp_path, "", {"DEPLOYERP_BASE_URL": f"http://127.0.0.1:{free_port()}"})
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.startswith("Authentication failed: 401 authentication_required:"), done.stdout
    assert "DEPLOYERP_API_KEY" in done.stdout


def test_auth_test_answers_for_the_key(gw: Gateway, admin: str) -> None:
    with Client(api_key=admin, base_url=gw.url) as c:
        doc = c.auth.test()
    assert doc["authenticated"] is True
    assert doc["key_id"].startswith("key_")
    assert "api-keys:write" in doc["permissions"]
    assert "rate_limit" in doc


# --- construction from the environment -------------------------------------------------------------------------


def test_environment_variables_and_their_order(gw: Gateway, admin: str, reader: str,
                                               clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DEPLOYERP_BASE_URL", gw.url)
    clean_env.setenv("DEPLOYALLY_API_KEY", admin)  # the other platform's variable is not this client's
    with Client() as c, pytest.raises(AuthenticationError):
        c.auth.test()
    clean_env.setenv("DEPLOYERP_API_KEY", reader)
    with Client() as c:
        assert "api-keys:write" not in c.auth.test()["permissions"]
    with Client(api_key=admin) as c:  # an argument beats the environment
        assert "api-keys:write" in c.auth.test()["permissions"]
    clean_env.delenv("DEPLOYERP_BASE_URL")
    with Client() as c:
        assert c.base_url == "https://api.deployerp.com"  # the guide's host; the key API is under /v1
        assert c.prefix == "/v1"


def test_no_key_raises_authentication_error_at_the_first_call(clean_env: pytest.MonkeyPatch) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    client = Client(base_url=dead)  # construction succeeds: the seed's try/except wraps only the call
    with pytest.raises(AuthenticationError) as info:
        client.auth.test()
    assert "DEPLOYERP_API_KEY" in str(info.value)
    assert (info.value.status_code, info.value.code) == (401, "authentication_required")
    assert isinstance(info.value, SDKError)
    with pytest.raises(AuthenticationError):
        client.api_keys.list()
    client.close()
    clean_env.setenv("DEPLOYERP_API_KEY", "   ")  # blank is no key

    async def main() -> None:
        async with AsyncClient(base_url=dead) as a:
            with pytest.raises(AuthenticationError, match="DEPLOYERP_API_KEY"):
                await a.auth.test()

    asyncio.run(main())


def test_a_key_that_cannot_be_sent_is_an_authentication_error(clean_env: pytest.MonkeyPatch) -> None:
    """A key with spaces or control characters could split or bend the Authorization header: it is refused
    at the first call, like any invalid key, and never echoed."""
    secret = "dep_live_has space\r\nX-Evil: 1"
    with Client(api_key=secret, base_url=f"http://127.0.0.1:{free_port()}") as c:
        with pytest.raises(AuthenticationError) as info:
            c.auth.test()
    assert info.value.code == "invalid_token"
    assert secret not in _all_text(info.value) and "has space" not in _all_text(info.value)


def test_bad_construction_arguments(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match="DEPLOYERP_BASE_URL"):
        Client(api_key="dep_live_x", base_url="ftp://example.com")
    clean_env.setenv("DEPLOYERP_BASE_URL", "not a url")
    with pytest.raises(ConfigurationError, match="DEPLOYERP_BASE_URL"):
        Client(api_key="dep_live_x")
    with pytest.raises(ConfigurationError, match="prefix"):
        Client(api_key="dep_live_x", base_url="http://127.0.0.1:1", prefix="v1/")
    with Client(api_key="dep_live_x", base_url="http://127.0.0.1:1") as c:
        with pytest.raises(ValueError):
            c.api_keys.get("")
        with pytest.raises(ValueError):
            c.request("GET", "http://elsewhere.example/v1/servers")  # the key goes to the gateway only

# --- every key-management method --------------------------------------------------------------------------------


def test_every_api_keys_method(gw: Gateway, admin: str) -> None:
    with Client(api_key=admin, base_url=gw.url) as c:
        expires = datetime.now(UTC) + timedelta(days=30)
        created = c.api_keys.create(
            "sdk-created", permissions=["servers:read"], ip_whitelist=["127.0.0.0/8"], expires_at=expires,
            description="made by the SDK test",
        )
        assert created["value"].startswith("dep_live_")
        assert created["permissions"] == ["servers:read"]
        assert created["ip_whitelist"] == ["127.0.0.0/8"]
        assert created["expires_at"].startswith(expires.strftime("%Y-%m-%dT%H:%M"))
        key_id = created["id"]

        # the new key is real: it passes the gateway for its scope, and not for another
        with Client(api_key=created["value"], base_url=gw.url) as new:
            assert new.auth.test()["key_id"] == key_id
            assert new.request("GET", "/v1/servers")["path"] == "/v1/servers"
            with pytest.raises(PermissionDeniedError):
                new.request("GET", "/v1/instances")

        got = c.api_keys.get(key_id)
        assert got["id"] == key_id and got["name"] == "sdk-created" and "value" not in got

        page = c.api_keys.list(limit=500)
        assert key_id in [k["id"] for k in page["data"]]
        assert all("value" not in k for k in page["data"])
        small = c.api_keys.list(limit=1, offset=0, environment="live", status="active")
        assert len(small["data"]) == 1 and small["pagination"]["next_offset"] == 1

        updated = c.api_keys.update(key_id, name="sdk-renamed", expires_at=None, ip_whitelist=[])
        assert updated["name"] == "sdk-renamed" and updated["expires_at"] is None and updated["ip_whitelist"] == []
        assert updated["description"] == "made by the SDK test"  # not given: unchanged

        rotated = c.api_keys.rotate(key_id, grace_period="0")
        assert rotated["old_key"]["id"] == key_id
        new_id, new_value = rotated["new_key"]["id"], rotated["new_key"]["value"]
        assert new_id != key_id and new_value != created["value"]
        with Client(api_key=new_value, base_url=gw.url) as new:
            assert new.auth.test()["key_id"] == new_id
        assert c.api_keys.get(key_id)["replaced_by"] == new_id

        revoked = c.api_keys.revoke(new_id)
        assert revoked["status"] == "revoked"
        assert c.api_keys.list(status="revoked", limit=500)["data"][0]["status"] == "revoked"
        # revoking takes effect within cache.ttl_seconds (0.5 s here); poll rather than sleep a fixed time
        with Client(api_key=new_value, base_url=gw.url) as new:
            _eventually_refused(new)


def _eventually_refused(client: Client, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            client.auth.test()
        except AuthenticationError as exc:
            assert exc.code == "invalid_token"
            return
        assert time.monotonic() < deadline, "a revoked key was still accepted"
        time.sleep(0.2)


def test_rotate_with_the_default_grace_period_keeps_the_old_key(gw: Gateway, admin: str) -> None:
    value = gw.create_key("sdk-rot", "servers:read")["value"]
    with Client(api_key=admin, base_url=gw.url) as c:
        with Client(api_key=value, base_url=gw.url) as own:
            key_id = own.auth.test()["key_id"]
        rotated = c.api_keys.rotate(key_id)
        old_until = datetime.fromisoformat(rotated["old_key"]["expires_at"].replace("Z", "+00:00"))
        assert timedelta(minutes=55) < old_until - datetime.now(UTC) <= timedelta(hours=1)
    with Client(api_key=value, base_url=gw.url) as old:
        assert old.auth.test()["key_id"] == key_id  # still works during the grace period


# --- every error class -----------------------------------------------------------------------------------------


def test_error_types_carry_the_gateway_code(gw: Gateway, admin: str, reader: str) -> None:
    with Client(api_key=admin, base_url=gw.url) as c, Client(api_key=reader, base_url=gw.url) as r:
        with pytest.raises(NotFoundError) as nf:
            c.api_keys.get("key_doesnotexist00")
        assert (nf.value.status_code, nf.value.code) == (404, "not_found")

        with pytest.raises(ValidationError) as ve:
            c.api_keys.create("bad-scope", permissions=["not a scope"])
        assert (ve.value.status_code, ve.value.code, ve.value.field) == (422, "validation_error", "permissions")
        with pytest.raises(ValidationError) as ve2:
            c.api_keys.update(_some_id(c), expires_at="yesterday")
        assert ve2.value.field == "expires_at"
        with pytest.raises(ValidationError) as ve3:
            c.api_keys.list(status="sleeping")
        assert ve3.value.field == "status"

        with pytest.raises(PermissionDeniedError) as pd:
            r.api_keys.create("from-reader", permissions=["servers:read"])  # needs api-keys:write
        assert (pd.value.status_code, pd.value.code) == (403, "insufficient_permissions")
        with pytest.raises(PermissionDeniedError) as esc:
            c.api_keys.create("escalate", permissions=["teams:write"])  # admin does not hold it
        assert esc.value.code == "insufficient_permissions"

        victim = c.api_keys.create("sdk-conflict", permissions=["servers:read"])
        c.api_keys.revoke(victim["id"])
        with pytest.raises(ConflictError) as cf:
            c.api_keys.rotate(victim["id"])
        assert (cf.value.status_code, cf.value.code) == (409, "conflict")

    with Client(api_key="dep_live_" + "A" * 32, base_url=gw.url) as nobody:
        with pytest.raises(AuthenticationError) as ae:
            nobody.api_keys.list()
    assert (ae.value.status_code, ae.value.code) == (401, "invalid_token")
    for exc in (nf.value, ve.value, pd.value, cf.value, ae.value):
        assert isinstance(exc, APIError) and isinstance(exc, SDKError)
        assert exc.message and exc.code in str(exc)
        assert admin not in _all_text(exc) and reader not in _all_text(exc)


def test_an_expired_key_is_an_authentication_error(gw: Gateway, admin: str) -> None:
    """Missing, invalid, revoked (test_every_api_keys_method) and expired keys all raise AuthenticationError; the
    code tells them apart."""
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
    with Client(api_key=admin, base_url=gw.url) as c:
        value = c.api_keys.create("sdk-expiring", permissions=["servers:read"], expires_at=expires)["value"]
    time.sleep(max(0.0, expires.timestamp() - time.time()) + 0.3)
    with Client(api_key=value, base_url=gw.url) as c, pytest.raises(AuthenticationError) as info:
        c.auth.test()
    assert (info.value.status_code, info.value.code) == (401, "expired_token")
    assert value not in _all_text(info.value)


def _some_id(c: Client) -> str:
    return str(c.api_keys.list(limit=1)["data"][0]["id"])


def test_rate_limit_error_has_retry_after(gw: Gateway) -> None:
    value = gw.create_key("sdk-limited", "api-keys:read", "--tier", "limited")["value"]  # 10 per minute
    with Client(api_key=value, base_url=gw.url) as c:
        with pytest.raises(RateLimitError) as info:
            for _ in range(30):
                c.api_keys.list(limit=1)
    err = info.value
    assert err.status_code == 429 and err.code == "rate_limit_exceeded"
    assert err.retry_after is not None and 0 < err.retry_after <= 60
    assert value not in _all_text(err)


def test_server_error_and_connection_error(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there: the gateway answers 502
    g = Gateway(tmp_path / "dead-upstream", dead)
    try:
        value = g.create_key("sdk-502", "servers:read")["value"]
        with Client(api_key=value, base_url=g.url) as c:
            with pytest.raises(ServerError) as se:
                c.request("GET", "/v1/servers")
        assert (se.value.status_code, se.value.code) == (502, "upstream_unavailable")
        assert value not in _all_text(se.value)
    finally:
        g.stop()
    with Client(api_key=value, base_url=g.url, timeout=5) as c:  # the gateway is gone now
        with pytest.raises(APIConnectionError) as ce:
            c.auth.test()
    assert g.url in str(ce.value)
    assert value not in _all_text(ce.value)


# --- no key in repr or exception text --------------------------------------------------------------------------


def test_key_never_in_repr(gw: Gateway, admin: str, clean_env: pytest.MonkeyPatch) -> None:
    c = Client(api_key=admin, base_url=gw.url)
    a = AsyncClient(api_key=admin, base_url=gw.url)
    try:
        for obj in (c, a, c.auth, c.api_keys, a.api_keys):
            assert admin not in repr(obj) and admin[-8:] not in repr(obj)
        assert repr(c) == f"Client(base_url={gw.url!r}, prefix='/v1', api_key='[redacted]')"
        assert repr(Client(base_url=gw.url)) == f"Client(base_url={gw.url!r}, prefix='/v1', api_key=None)"
    finally:
        c.close()
        asyncio.run(a.aclose())


# --- the async variant -----------------------------------------------------------------------------------------


def test_async_client(gw: Gateway, admin: str, clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DEPLOYERP_API_KEY", admin)
    clean_env.setenv("DEPLOYERP_BASE_URL", gw.url)

    async def main() -> None:
        async with AsyncClient() as c:
            me = await c.auth.test()
            assert me["authenticated"] is True
            created = await c.api_keys.create("sdk-async", permissions=["servers:read"])
            key_id = created["id"]
            assert (await c.api_keys.get(key_id))["name"] == "sdk-async"
            assert key_id in [k["id"] for k in (await c.api_keys.list(limit=500))["data"]]
            assert (await c.api_keys.update(key_id, name="sdk-async-2"))["name"] == "sdk-async-2"
            rotated = await c.api_keys.rotate(key_id, grace_period="0")
            assert (await c.api_keys.revoke(rotated["new_key"]["id"]))["status"] == "revoked"
            # concurrent calls share one connection pool
            pages = await asyncio.gather(*(c.api_keys.list(limit=1) for _ in range(5)))
            assert all(len(p["data"]) == 1 for p in pages)
            assert (await c.request("GET", "/v1/servers/1"))["path"] == "/v1/servers/1"
            with pytest.raises(NotFoundError):
                await c.api_keys.get("key_doesnotexist00")
        async with AsyncClient(api_key="dep_live_" + "A" * 32) as bad:
            with pytest.raises(AuthenticationError) as ae:
                await bad.auth.test()
        assert ae.value.code == "invalid_token"
        async with AsyncClient(base_url=f"http://127.0.0.1:{free_port()}", timeout=5) as gone:
            with pytest.raises(APIConnectionError):
                await gone.auth.test()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_exception_reraised_through_contextlib_keeps_no_key(gw: Gateway) -> None:
    """An error logged with its traceback (the way most applications log) shows no key."""
    secret = "dep_live_" + "Z" * 32
    with Client(api_key=secret, base_url=gw.url) as c, contextlib.suppress(AuthenticationError):
        try:
            c.api_keys.list()
        except AuthenticationError as exc:
            assert secret not in _all_text(exc)
            raise
