"""Expiry and the rotation grace period at their exact boundary, with an injected clock instead of sleeping.

The gateway app runs in a real uvicorn server in a thread of this process (so the test can hand it a
:class:`FakeClock`), in front of a real recording upstream process, over a real SQLite file. Keys are made
with the real CLI and the real management API; only the time the gate compares against is the test's.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta

import pytest

from tests.support.lifecycle import FakeClock, KeysAPI, ThreadedGateway, bearer, parse_time
from tests.support.procs import SECRET, Gateway, Upstream

Setup = tuple[ThreadedGateway, KeysAPI, FakeClock, Upstream]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp_path = tmp_path_factory.mktemp("clock")
    up = Upstream(tmp_path)
    # Only to write the config file and run the CLI against its store; the server is the threaded one.
    cfg = Gateway(tmp_path / "gw", up.url, {"cache": {"ttl_seconds": 300}, "limits": {"auth_failures_per_minute": 0}},
                  start=False)
    admin = cfg.create_key("admin", "*", "--tier", "unlimited")
    clock = FakeClock()
    gw = ThreadedGateway(cfg.config, {"GATEWAY_SECRET": SECRET}, clock)
    api = KeysAPI(gw, admin["value"])
    try:
        yield gw, api, clock, up
    finally:
        api.close()
        gw.stop()
        up.stop()


@pytest.fixture
def setup(served: Setup) -> Setup:
    served[2].now = time.time()  # each test starts at the real time and moves the clock from there
    return served


def status(gw: ThreadedGateway, value: str, **headers: str) -> tuple[int, str | None, dict[str, str]]:
    with gw.client() as c:
        resp = c.get("/v1/servers", headers={**bearer(value), **headers})
    code = resp.json()["error"]["code"] if resp.status_code >= 400 else None
    return resp.status_code, code, dict(resp.headers)


def test_old_key_works_until_the_last_second_of_its_grace_period(setup: Setup) -> None:
    gw, api, clock, up = setup
    old = api.created(name="rotating", permissions=["servers:read"])
    assert status(gw, old["value"])[0] == 200  # cached from here on (TTL 300 s): the clock alone decides
    rotated = api.rotate(old["id"], {"grace_period": "1h"}).json()
    ends = parse_time(rotated["old_key"]["expires_at"])
    new_value = rotated["new_key"]["value"]

    up.clear()
    clock.set(ends - timedelta(seconds=1))
    code, _, headers = status(gw, old["value"], **{"X-Debug-Auth": "true"})
    assert code == 200
    assert headers["x-auth-key-status"] == "grace_period"
    assert len(up.records()) == 1  # it really was forwarded

    clock.set(ends)
    assert status(gw, old["value"])[:2] == (401, "expired_token")
    clock.set(ends + timedelta(days=3))
    assert status(gw, old["value"])[:2] == (401, "expired_token")
    assert len(up.records()) == 1  # the refused ones never reached the upstream
    # The successor has no expiry of its own: it works whatever the time.
    assert status(gw, new_value)[0] == 200
    # What the API says agrees with the gate at the same clock.
    assert api.get(old["id"]).json()["status"] == "expired"
    clock.set(ends - timedelta(seconds=1))
    assert api.get(old["id"]).json()["status"] == "active"
    assert api.get(old["id"]).json()["rotation_status"] == "grace_period"
    assert status(gw, old["value"])[0] == 200


def test_expires_at_boundary_gives_the_expired_code(setup: Setup) -> None:
    gw, api, clock, _ = setup
    doc = api.created(name="temporary", expires_at="2031-06-30T12:00:00Z")
    ends = parse_time(doc["expires_at"])
    clock.set(ends - timedelta(seconds=1))
    assert status(gw, doc["value"])[0] == 200
    clock.set(ends)
    assert status(gw, doc["value"])[:2] == (401, "expired_token")
    with gw.client() as c:
        resp = c.get("/v1/servers", headers=bearer(doc["value"]))
    assert resp.headers["www-authenticate"].startswith("Bearer")
    assert 'error="invalid_token"' in resp.headers["www-authenticate"]


def test_rotation_due_shows_in_auth_test_and_debug_headers(setup: Setup) -> None:
    gw, api, clock, _ = setup
    doc = api.created(name="auto", permissions=["servers:read"], auto_rotate=True, rotation_period="12h")
    due = parse_time(doc["rotation_due_at"])
    assert due - parse_time(doc["created_at"]) == timedelta(hours=12)

    def auth_test() -> dict[str, object]:
        with gw.client() as c:
            resp = c.get("/v1/auth/test", headers=bearer(doc["value"]))
        assert resp.status_code == 200, resp.text
        return resp.json()  # type: ignore[no-any-return]

    clock.set(due - timedelta(seconds=1))
    assert auth_test()["rotation"] == {"status": "ok", "rotation_due_at": doc["rotation_due_at"],
                                       "replaced_by": None}
    assert "x-auth-key-status" not in status(gw, doc["value"], **{"X-Debug-Auth": "true"})[2]
    clock.set(due)
    assert auth_test()["rotation"]["status"] == "due"  # type: ignore[index]
    code, _, headers = status(gw, doc["value"], **{"X-Debug-Auth": "true"})
    assert code == 200  # due is a warning, not a refusal
    assert headers["x-auth-key-status"] == "rotation_due"
    assert api.get(doc["id"]).json()["rotation_status"] == "due"
    # After a rotation the old key reports its grace period, the new one is not due.
    rotated = api.rotate(doc["id"], {"grace_period": "1d"}).json()
    assert auth_test()["rotation"]["status"] == "grace_period"  # type: ignore[index]
    assert auth_test()["rotation"]["replaced_by"] == rotated["new_key"]["id"]  # type: ignore[index]
    clock.set(parse_time(rotated["new_key"]["created_at"]))
    assert "x-auth-key-status" not in status(gw, rotated["new_key"]["value"], **{"X-Debug-Auth": "true"})[2]
