"""Live and test keys: test keys reach only upstream.environments.test (a second real recording upstream),
never the live one; with no test upstream they are refused; a test key can neither make nor see live keys."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.lifecycle import KeysAPI, admin_gateway, use
from tests.support.procs import Gateway, Upstream

Env = tuple[Gateway, KeysAPI, Upstream, Upstream]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    live = Upstream(tmp_path_factory.mktemp("live-up"))
    test = Upstream(tmp_path_factory.mktemp("test-up"))
    gw, admin = admin_gateway(tmp_path_factory.mktemp("env-gw"), live.url,
                              {"upstream": {"url": live.url, "environments": {"test": test.url}}})
    api = KeysAPI(gw, admin)
    yield gw, api, live, test
    api.close()
    gw.stop()
    test.stop()
    live.stop()


def env_header(record: dict[str, object]) -> list[str]:
    return [v for k, v in record["headers"] if k.lower() == "x-auth-environment"]  # type: ignore[attr-defined]


def test_test_keys_reach_only_the_test_upstream(env: Env) -> None:
    gw, api, live, test = env
    t = api.created(name="dev", environment="test", permissions=["servers:read", "instances:*"])
    lk = api.created(name="prod", permissions=["servers:read"])
    assert t["value"].startswith("dep_test_") and lk["value"].startswith("dep_live_")
    live.clear()
    test.clear()
    for path in ("/v1/servers", "/v1/instances/i-1", "/v1/servers/s-1?x=1"):
        resp = use(gw, t["value"], path)
        assert resp.status_code == 200, resp.text
    assert use(gw, lk["value"]).status_code == 200
    seen_test, seen_live = test.records(), live.records()
    assert [r["target"] for r in seen_test] == ["/v1/servers", "/v1/instances/i-1", "/v1/servers/s-1?x=1"]
    assert all(env_header(r) == ["test"] for r in seen_test)
    assert [r["target"] for r in seen_live] == ["/v1/servers"]
    assert env_header(seen_live[0]) == ["live"]
    # A POST with a body goes the same way.
    with gw.client() as c:
        resp = c.post("/v1/instances", content=b'{"app": "shop"}',
                      headers={"Authorization": f"Bearer {t['value']}", "Content-Type": "application/json"})
    assert resp.status_code == 200 and resp.json()["body_bytes"] == 15
    assert len(live.records()) == 1 and len(test.records()) == 4


def test_test_key_cannot_create_or_see_live_keys(env: Env) -> None:
    gw, api, _, _ = env
    live_key = api.created(name="live-one")
    tk = api.created(name="test-admin", environment="test", permissions=["api-keys:*", "servers:read"])
    t = api.as_key(tk["value"])
    try:
        refused = t.create({"name": "escape", "permissions": ["servers:read"], "environment": "live"})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "insufficient_permissions"
        made = t.create({"name": "child", "permissions": ["servers:read"]})  # no environment: its own, test
        assert made.status_code == 201 and made.json()["environment"] == "test"
        assert made.json()["value"].startswith("dep_test_")
        listed = t.all_ids()
        assert live_key["id"] not in listed and tk["id"] in listed and made.json()["id"] in listed
        assert all(r["environment"] == "test" for r in t.list(limit=500).json()["data"])
        assert t.list(environment="live").json()["data"] == []
        # To a test key a live key does not exist: 404 on every verb, and nothing changes.
        for resp in (t.get(live_key["id"]), t.patch(live_key["id"], {"name": "x"}), t.delete(live_key["id"]),
                     t.rotate(live_key["id"])):
            assert resp.status_code == 404, resp.text
        shown = api.get(live_key["id"]).json()
        assert shown["name"] == "live-one" and shown["status"] == "active" and shown["replaced_by"] is None
        # Rotating a test key gives a test key.
        rotated = t.rotate(made.json()["id"], {"grace_period": "0"})
        assert rotated.status_code == 200 and rotated.json()["new_key"]["value"].startswith("dep_test_")
    finally:
        t.close()
    # The live admin sees both environments.
    every = api.all_ids()
    assert live_key["id"] in every and tk["id"] in every


def test_without_a_test_upstream_test_keys_are_refused(tmp_path: Path, env: Env) -> None:
    live = env[2]
    gw, admin = admin_gateway(tmp_path / "no-test", live.url)
    api = KeysAPI(gw, admin)
    try:
        t = api.created(name="dev", environment="test")
        live.clear()
        resp = use(gw, t["value"])
        assert resp.status_code == 403
        assert resp.json() == {"error": {"code": "environment_unavailable", "message": resp.json()["error"]["message"],
                                         "status": 403}}
        assert "test" in resp.json()["error"]["message"].lower()
        assert live.records() == []  # never the live upstream
        # The gateway's own endpoints still answer a test key (nothing is forwarded).
        with gw.client() as c:
            me = c.get("/v1/auth/test", headers={"Authorization": f"Bearer {t['value']}"})
        assert me.status_code == 200 and me.json()["environment"] == "test"
        assert use(gw, api.created(name="prod")["value"]).status_code == 200
        assert len(live.records()) == 1
    finally:
        api.close()
        gw.stop()
