"""The Python SDK (gateway.client) against real `gateway serve` processes over loopback sockets.

Keys are created with the CLI (the operator's way), then every SDK method and every error class is exercised
against the live gateway, in the deployERP and the DeployAlly formats, blocking and async. Nothing is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import traceback
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.client import (
    APIConnectionError,
    APIError,
    AsyncClient,
    AuthenticationError,
    Client,
    ConfigurationError,
    ConflictError,
    GatewayClientError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    ValidationError,
)
from tests.support.procs import ROOT, Gateway, Upstream, free_port

KEY_VARS = ("DEPLOYERP_API_KEY", "DEPLOYALLY_API_KEY", "GATEWAY_URL")


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


# --- the seed's snippet, as written ----------------------------------------------------------------------------


def test_seed_snippet_with_environment(gw: Gateway, admin: str, clean_env: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    clean_env.setenv("DEPLOYERP_API_KEY", admin)
    clean_env.setenv("GATEWAY_URL", gw.url)
    # --- the deployERP guide's "Python SDK" snippet, with only the import changed -------------------------
    from gateway.client import AuthenticationError, Client

    client = Client()  # Reads from DEPLOYERP_API_KEY env var
    try:
        client.auth.test()
        print("Authentication successful")
    except AuthenticationError as e:
        print(f"Authentication failed: {e}")
    # ------------------------------------------------------------------------------------------------------
    client.close()
    assert capsys.readouterr().out == "Authentication successful\n"

    bad = admin[:-1] + ("A" if admin[-1] != "A" else "B")  # checksum fails: refused before any lookup
    with Client(api_key=bad, base_url=gw.url) as client:
        try:
            client.auth.test()
            print("Authentication successful")
        except AuthenticationError as e:
            print(f"Authentication failed: {e}")
    out = capsys.readouterr().out
    assert out.startswith("Authentication failed: 401 invalid_token:"), out
    assert bad not in out


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
    clean_env.setenv("GATEWAY_URL", gw.url)
    clean_env.setenv("DEPLOYALLY_API_KEY", reader)
    with Client() as c:  # only the DeployAlly variable: it is used
        assert "api-keys:write" not in c.auth.test()["permissions"]
    clean_env.setenv("DEPLOYERP_API_KEY", admin)
    with Client() as c:  # both: DEPLOYERP_API_KEY wins
        assert "api-keys:write" in c.auth.test()["permissions"]
    with Client(api_key=reader) as c:  # an argument beats the environment
        assert "api-keys:write" not in c.auth.test()["permissions"]
    clean_env.delenv("GATEWAY_URL")
    with Client() as c:
        assert c.base_url == "http://127.0.0.1:8080"  # the gateway's default listen address


def test_no_key_anywhere_names_the_variables(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError) as info:
        Client()
    assert "DEPLOYERP_API_KEY" in str(info.value) and "DEPLOYALLY_API_KEY" in str(info.value)
    assert isinstance(info.value, GatewayClientError)
    clean_env.setenv("DEPLOYERP_API_KEY", "   ")
    with pytest.raises(ConfigurationError):
        AsyncClient()


def test_bad_construction_arguments(clean_env: pytest.MonkeyPatch) -> None:
    secret = "dep_live_has space\r\nX-Evil: 1"
    with pytest.raises(ConfigurationError) as info:
        Client(api_key=secret)
    assert secret not in _all_text(info.value) and "has space" not in str(info.value)
    with pytest.raises(ConfigurationError, match="GATEWAY_URL"):
        Client(api_key="dep_live_x", base_url="ftp://example.com")
    clean_env.setenv("GATEWAY_URL", "not a url")
    with pytest.raises(ConfigurationError, match="GATEWAY_URL"):
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
    import time

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
        assert isinstance(exc, APIError) and isinstance(exc, GatewayClientError)
        assert exc.message and exc.code in str(exc)
        assert admin not in _all_text(exc) and reader not in _all_text(exc)


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


def test_key_never_in_repr(gw: Gateway, admin: str) -> None:
    c = Client(api_key=admin, base_url=gw.url)
    a = AsyncClient(api_key=admin, base_url=gw.url)
    try:
        for obj in (c, a, c.auth, c.api_keys, a.api_keys):
            assert admin not in repr(obj) and admin[-8:] not in repr(obj)
        assert repr(c) == f"Client(base_url={gw.url!r}, prefix='/v1')"
    finally:
        c.close()
        asyncio.run(a.aclose())


# --- DeployAlly format: {"success", "data"} wrapper and its error codes -----------------------------------------


@pytest.fixture(scope="module")
def ally(tmp_path_factory: pytest.TempPathFactory, up: Upstream) -> Iterator[Gateway]:
    g = Gateway(tmp_path_factory.mktemp("sdk-ally"), up.url, {
        "error_format": "deployally", "key_format": "deployally",
        "policies": str(ROOT / "policies" / "deployally.yaml"),
    })
    yield g
    g.stop()


def test_deployally_wrapper_and_codes(ally: Gateway, clean_env: pytest.MonkeyPatch) -> None:
    value = ally.create_key("ally-admin", "api-keys:read,api-keys:write,templates:read")["value"]
    assert value.startswith("da_")
    clean_env.setenv("DEPLOYALLY_API_KEY", value)
    clean_env.setenv("GATEWAY_URL", ally.url)
    with Client() as c:
        assert c.auth.test()["authenticated"] is True
        created = c.api_keys.create("Servidor Produção", permissions=["templates:read"],
                                    allowed_ips=["203.0.113.10"])
        assert created["value"].startswith("da_") and created["allowed_ips"] == ["203.0.113.10/32"]
        assert c.api_keys.get(created["id"])["name"] == "Servidor Produção"  # unwrapped from "data"
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
    with Client(api_key="da_" + "k" * 32, base_url=ally.url) as bad:
        with pytest.raises(AuthenticationError) as ae:
            bad.auth.test()
    assert ae.value.code == "UNAUTHORIZED"
    with Client(api_key=limited, base_url=ally.url) as lc:
        with pytest.raises(PermissionDeniedError) as pd:
            lc.api_keys.list()
    assert pd.value.code == "FORBIDDEN"


# --- the async variant -----------------------------------------------------------------------------------------


def test_async_client(gw: Gateway, admin: str, clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DEPLOYERP_API_KEY", admin)
    clean_env.setenv("GATEWAY_URL", gw.url)

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
