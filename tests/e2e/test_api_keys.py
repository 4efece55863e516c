"""The key-management API over real sockets: a real `gateway serve` process, a real recording upstream,
a real SQLite file. Every endpoint, every error path, scopes and privilege escalation."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.support.lifecycle import KeysAPI, admin_gateway, bearer, parse_time, use, wait_for
from tests.support.procs import Gateway, Upstream

RECORD_FIELDS = {
    "id", "name", "hint", "permissions", "ip_whitelist", "environment", "rate_limit_tier", "description",
    "status", "created_at", "created_by", "expires_at", "revoked_at", "auto_rotate", "rotation_period",
    "rotation_due_at", "rotation_status", "rotated_from", "replaced_by", "last_used_at", "last_used_ip",
    "request_count", "grace_period", "notification_email", "revealable",
}


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    u = Upstream(tmp_path_factory.mktemp("keys-up"))
    yield u
    u.stop()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, up: Upstream) -> Iterator[tuple[Gateway, str]]:
    # flush_seconds small so usage shows up quickly; a long cache TTL, so "refused at once" after a revoke
    # can only come from this process invalidating its own cache, not from the entry running out.
    gw, admin = admin_gateway(tmp_path_factory.mktemp("keys-gw"), up.url,
                              {"usage": {"flush_seconds": 0.2}, "cache": {"ttl_seconds": 300}})
    yield gw, admin
    gw.stop()


@pytest.fixture
def api(gw: tuple[Gateway, str]) -> Iterator[KeysAPI]:
    a = KeysAPI(gw[0], gw[1])
    yield a
    a.close()


def future(days: float = 30) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")


def assert_validation(resp: Any, field: str) -> None:
    assert resp.status_code == 422, resp.text
    err = resp.json()["error"]
    assert err["code"] == "validation_error"
    assert err["status"] == 422
    assert err["field"] == field, err
    assert field in err["message"] or field == "body"


# --- create ---------------------------------------------------------------------------------------------------


def test_create_returns_value_once_and_the_record(api: KeysAPI, gw: tuple[Gateway, str]) -> None:
    resp = api.create({"name": "ci", "permissions": ["servers:read", "instances:*"], "description": "for CI"})
    assert resp.status_code == 201
    assert resp.headers["cache-control"] == "no-store"
    doc = resp.json()
    assert set(doc) == RECORD_FIELDS | {"value"}
    value = doc["value"]
    assert value.startswith("dep_live_") and len(value) == len("dep_live_") + 32
    assert doc["hint"] == value[-4:]
    assert doc["permissions"] == ["servers:read", "instances:*"]
    assert doc["description"] == "for CI"
    assert doc["environment"] == "live" and doc["status"] == "active"
    assert doc["created_by"].startswith("key_")  # the admin key's id: who made it
    assert doc["request_count"] == 0 and doc["last_used_at"] is None
    # The value is never shown again: not by GET one, not by the list.
    got = api.get(doc["id"])
    assert got.status_code == 200 and "value" not in got.json()
    assert value not in got.text and value not in api.list(limit=500).text
    # And it works at once, forwarded with the identity headers.
    ok = use(gw[0], value)
    assert ok.status_code == 200, ok.text
    assert ["x-auth-key-id", doc["id"]] in [[k.lower(), v] for k, v in ok.json()["headers"]]


def test_create_ip_whitelist_and_allowed_ips_alias(api: KeysAPI, gw: tuple[Gateway, str]) -> None:
    a = api.created(name="office", ip_whitelist=["203.0.113.0/24", "198.51.100.45", "2001:db8::/32"])
    assert a["ip_whitelist"] == ["203.0.113.0/24", "198.51.100.45/32", "2001:db8::/32"]
    b = api.created(name="ally", allowed_ips=["127.0.0.1"])
    assert b["ip_whitelist"] == ["127.0.0.1/32"]
    # The allowlist is enforced: loopback is not in a's networks, and is in b's.
    denied = use(gw[0], a["value"])
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "ip_restricted"
    assert use(gw[0], b["value"]).status_code == 200
    both = api.create({"name": "x", "permissions": ["servers:read"], "ip_whitelist": [], "allowed_ips": []})
    assert_validation(both, "ip_whitelist")


def test_create_tier_environment_rotation_description(api: KeysAPI) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    doc = api.created(name="rot", rate_limit_tier="limited", environment="test", auto_rotate=True,
                      rotation_period="90d", description="rotates", expires_at=future(365))
    assert doc["rate_limit_tier"] == "limited"
    assert doc["environment"] == "test" and doc["value"].startswith("dep_test_")
    assert doc["auto_rotate"] is True and doc["rotation_period"] == "90d"
    assert parse_time(doc["rotation_due_at"]) - parse_time(doc["created_at"]) == timedelta(days=90)
    assert parse_time(doc["created_at"]) >= before
    assert doc["rotation_status"] == "ok"
    assert doc["description"] == "rotates"
    assert parse_time(doc["expires_at"]) > datetime.now(UTC) + timedelta(days=364)
    # rotation_enabled (the deployERP guide's spelling) is accepted too; auto_rotate needs a period.
    alias = api.created(name="rot2", rotation_enabled=True, rotation_period="12h")
    assert alias["auto_rotate"] is True and alias["rotation_period"] == "12h"
    assert_validation(api.create({"name": "x", "permissions": ["servers:read"], "auto_rotate": True}),
                      "rotation_period")
    assert (doc["grace_period"], doc["notification_email"], doc["revealable"]) == (None, None, False)


# The deployERP guide's "Automatic Rotation" body. Its address reads "[email protected] " on the published page (the
# page's e-mail obfuscation, with a space after it); a real address stands in for it, the space kept.
GUIDE_ROTATION = {"rotation_enabled": True, "rotation_period": "90d", "notification_email": "admin@deployerp.com ",
                  "grace_period": "7d"}


def test_the_guides_automatic_rotation_body_is_taken_as_it_is(api: KeysAPI, gw: tuple[Gateway, str]) -> None:
    doc = api.created(name="guided")
    changed = api.patch(doc["id"], GUIDE_ROTATION)
    assert changed.status_code == 200, changed.text
    got = changed.json()
    assert (got["auto_rotate"], got["rotation_period"], got["grace_period"]) == (True, "90d", "7d")
    assert got["notification_email"] == "admin@deployerp.com"
    assert parse_time(got["rotation_due_at"]) - parse_time(got["created_at"]) == timedelta(days=90)
    assert api.get(doc["id"]).json()["notification_email"] == "admin@deployerp.com"  # who can read the key sees it
    made = api.created(name="guided-new", permissions=["servers:read"], **GUIDE_ROTATION)
    assert (made["auto_rotate"], made["grace_period"], made["notification_email"]) == (
        True, "7d", "admin@deployerp.com")
    # A rotation that names no grace period takes the key's own (7 days, not rotation.grace_period's default).
    grace = api.created(name="own-grace", grace_period="36h")
    rotated = api.rotate(grace["id"]).json()
    ends = parse_time(rotated["old_key"]["expires_at"]) - parse_time(rotated["new_key"]["created_at"])
    assert ends == timedelta(hours=36)
    assert api.get(rotated["new_key"]["id"]).json()["grace_period"] == "36h"  # inherited
    # Cleared with null: back to rotation.grace_period, no notices.
    cleared = api.patch(doc["id"], {"grace_period": None, "notification_email": None}).json()
    assert (cleared["grace_period"], cleared["notification_email"]) == (None, None)
    # The address is personal data: never in the log (the audit line masks it).
    assert "admin@deployerp.com" not in gw[0].log()


def test_notification_email_and_grace_period_are_checked(api: KeysAPI) -> None:
    doc = api.created(name="checked")
    for bad in ("not-an-address", "two@@example.com", "a b@example.com", "me@localhost", "x@exa_mple.com",
                "line\r\nBcc: evil@example.com", "me@example.com\nBcc: evil@example.com", 7, "a" * 250 + "@ex.com",
                "@example.com", "me@"):
        resp = api.patch(doc["id"], {"notification_email": bad})
        assert_validation(resp, "notification_email")
        if isinstance(bad, str) and len(bad) < 100:
            assert bad not in resp.text.replace("like ops@example.com", "")  # never echoed
        assert_validation(api.create({"name": "x", "permissions": ["servers:read"], "notification_email": bad}),
                          "notification_email")
    for bad in ("7days", "-1d", "1y", 3153600001):
        assert_validation(api.patch(doc["id"], {"grace_period": bad}), "grace_period")
    assert api.patch(doc["id"], {"grace_period": 90}).json()["grace_period"] == "90s"
    assert api.patch(doc["id"], {"grace_period": "0"}).json()["grace_period"] == "0"


def test_reveal_needs_a_held_value_and_the_right_to_rotate_the_key(api: KeysAPI) -> None:
    """Only an automatic rotation holds a value (tests/e2e/test_auto_rotation.py reveals one); a key made by a
    person got its value in the answer that made it: 410 ``value_not_held``. Revealing needs api-keys:write and
    every permission of the key, as rotating it does; an unknown key is 404."""
    strong = api.created(name="strong-reveal", permissions=["*"])
    gone = api.call("POST", f"/api-keys/{strong['id']}/reveal")
    assert gone.status_code == 410 and gone.json()["error"]["code"] == "value_not_held", gone.text
    assert gone.json()["error"]["status"] == 410
    assert api.call("POST", "/api-keys/key_nope/reveal").status_code == 404
    weak = api.as_key(api.created(name="weak", permissions=["api-keys:*", "servers:read"])["value"])
    reader = api.as_key(api.created(name="reader-only", permissions=["api-keys:read", "servers:read"])["value"])
    try:
        for caller in (weak, reader):
            resp = caller.call("POST", f"/api-keys/{strong['id']}/reveal")
            assert resp.status_code == 403 and resp.json()["error"]["code"] == "insufficient_permissions"
    finally:
        weak.close()
        reader.close()


def test_create_without_permissions_inherits_the_callers(api: KeysAPI) -> None:
    narrow = api.created(name="narrow", permissions=["api-keys:write", "servers:read"])
    child = api.as_key(narrow["value"])
    try:
        resp = child.create({"name": "child"})
        assert resp.status_code == 201, resp.text
        doc = resp.json()
    finally:
        child.close()
    assert doc["permissions"] == ["api-keys:write", "servers:read"]
    assert doc["created_by"] == narrow["id"]


# --- list -----------------------------------------------------------------------------------------------------


def test_list_pagination_walks_every_key_once(api: KeysAPI) -> None:
    for i in range(5):
        api.created(name=f"page-{i}")
    full = api.all_ids()
    assert len(full) >= 6 and len(set(full)) == len(full)
    walked: list[str] = []
    offset: int | None = 0
    pages = 0
    while offset is not None:
        resp = api.list(limit=2, offset=offset)
        assert resp.status_code == 200
        doc = resp.json()
        assert doc["pagination"]["limit"] == 2 and doc["pagination"]["offset"] == offset
        assert 1 <= len(doc["data"]) <= 2
        assert all("value" not in r for r in doc["data"])
        walked += [r["id"] for r in doc["data"]]
        offset = doc["pagination"]["next_offset"]
        pages += 1
    assert walked == full
    assert pages == (len(full) + 1) // 2
    assert api.list(limit=2, offset=len(full)).json()["data"] == []


def test_list_filters_by_environment_and_status(api: KeysAPI) -> None:
    t = api.created(name="env-test", environment="test")
    live = api.created(name="env-live")
    gone = api.created(name="to-revoke")
    assert api.delete(gone["id"]).status_code == 200
    tests = api.list(environment="test", limit=500).json()["data"]
    assert t["id"] in [r["id"] for r in tests] and all(r["environment"] == "test" for r in tests)
    assert live["id"] not in [r["id"] for r in tests]
    lives = api.list(environment="live", limit=500).json()["data"]
    assert all(r["environment"] == "live" for r in lives) and live["id"] in [r["id"] for r in lives]
    revoked = api.list(status="revoked", limit=500).json()["data"]
    assert gone["id"] in [r["id"] for r in revoked] and all(r["status"] == "revoked" for r in revoked)
    active = api.list(status="active", limit=500).json()["data"]
    assert gone["id"] not in [r["id"] for r in active] and live["id"] in [r["id"] for r in active]
    # Expired: a key rotated with no grace period is expired at once.
    old = api.created(name="to-expire")
    assert api.rotate(old["id"], {"grace_period": "0"}).status_code == 200
    expired = api.list(status="expired", limit=500).json()["data"]
    assert old["id"] in [r["id"] for r in expired] and all(r["status"] == "expired" for r in expired)


@pytest.mark.parametrize(
    ("params", "field"),
    [({"limit": "0"}, "limit"), ({"limit": "x"}, "limit"), ({"limit": "501"}, "limit"), ({"offset": "-1"}, "offset"),
     ({"environment": "prod"}, "environment"), ({"status": "dead"}, "status"), ({"sort": "name"}, "sort")],
)
def test_list_bad_query(api: KeysAPI, params: dict[str, str], field: str) -> None:
    assert_validation(api.list(**params), field)


def test_routes_are_the_ones_the_gate_matched_and_answers_keep_its_headers(api: KeysAPI) -> None:
    """The management API routes on the path the gate matched (one trailing slash ignored, escapes decoded,
    as the policy matches them), and every answer, a refusal too, carries the headers of the gate's decision:
    the key's rate limit, the debug headers asked for, the request id."""
    caller = api.created(name="limited", permissions=["api-keys:*", "servers:read"])  # standard tier: limited
    target = api.created(name="target")["id"]
    escaped = "".join(f"%{ord(c):02X}" if c in "key_" else c for c in target)  # key_x -> %6B%65%79%5Fx
    me = api.as_key(caller["value"])
    debug = {**bearer(caller["value"]), "X-Debug-Auth": "true"}
    try:
        answers = {
            "list": me.client.get("/v1/api-keys/", headers=debug),
            "get": me.client.get(f"/v1/api-keys/{target}/", headers=debug),
            "escaped": me.client.get(f"/v1/api-keys/{escaped}", headers=debug),
            "auth/test": me.client.get("/v1/auth/test/", headers=debug),
            "create": me.client.post("/v1/api-keys/", headers=debug,
                                     json={"name": "x", "permissions": ["servers:read"]}),
            "unknown id": me.client.get("/v1/api-keys/key_doesnotexist", headers=debug),
            "bad query": me.client.get("/v1/api-keys/?limit=0", headers=debug),
        }
        statuses = {name: r.status_code for name, r in answers.items()}
        assert statuses == {"list": 200, "get": 200, "escaped": 200, "auth/test": 200, "create": 201,
                            "unknown id": 404, "bad query": 422}, {n: r.text for n, r in answers.items()}
        assert answers["get"].json()["id"] == answers["escaped"].json()["id"] == target
        for name, resp in answers.items():
            assert resp.headers["x-ratelimit-limit"] == "100", (name, resp.headers)
            assert resp.headers["x-auth-key-id"] == caller["id"], (name, resp.headers)
            assert resp.headers["x-request-id"], name
    finally:
        me.close()


# --- get, usage -----------------------------------------------------------------------------------------------


def test_get_one_shows_usage_after_requests(api: KeysAPI, gw: tuple[Gateway, str]) -> None:
    doc = api.created(name="used")
    assert doc["last_used_at"] is None and doc["last_used_ip"] is None and doc["request_count"] == 0
    for _ in range(3):
        assert use(gw[0], doc["value"]).status_code == 200
    # Written in batches (usage.flush_seconds = 0.2 here), not per request: poll until the batch lands.
    shown = wait_for(lambda: (r := api.get(doc["id"]).json())["request_count"] >= 3 and r)
    assert shown["request_count"] == 3
    assert shown["last_used_ip"] == "127.0.0.1"
    used_at = parse_time(shown["last_used_at"])
    assert abs((datetime.now(UTC) - used_at).total_seconds()) < 30


def test_unknown_id_is_404_everywhere(api: KeysAPI) -> None:
    for resp in (api.get("key_doesnotexist"), api.patch("key_doesnotexist", {"name": "x"}),
                 api.delete("key_doesnotexist"), api.rotate("key_doesnotexist")):
        assert resp.status_code == 404, resp.text
        assert resp.json()["error"]["code"] == "not_found"


# --- update ---------------------------------------------------------------------------------------------------


def test_patch_changes_fields_and_takes_effect_at_once(api: KeysAPI, gw: tuple[Gateway, str]) -> None:
    doc = api.created(name="before", permissions=["servers:read"])
    assert use(gw[0], doc["value"], "/v1/instances").status_code == 403
    expiry = future(10)
    resp = api.patch(doc["id"], {"name": "after", "permissions": ["servers:read", "instances:read"],
                                 "ip_whitelist": ["127.0.0.0/8"], "rate_limit_tier": "high_volume",
                                 "expires_at": expiry, "description": "changed"})
    assert resp.status_code == 200, resp.text
    new = resp.json()
    assert new["name"] == "after" and new["permissions"] == ["servers:read", "instances:read"]
    assert new["ip_whitelist"] == ["127.0.0.0/8"] and new["rate_limit_tier"] == "high_volume"
    assert new["expires_at"] == expiry and new["description"] == "changed"
    stored = api.get(doc["id"]).json()
    assert {k: stored[k] for k in new if not k.startswith(("last_used", "request"))} == {
        k: new[k] for k in new if not k.startswith(("last_used", "request"))}
    # The cache entry was dropped in this process: the new permission works on the very next request
    # (the cache TTL here is 300 s).
    assert use(gw[0], doc["value"], "/v1/instances").status_code == 200
    # allowed_ips alias on PATCH, then an allowlist that excludes loopback: refused at once.
    resp = api.patch(doc["id"], {"allowed_ips": ["10.0.0.0/8"]})
    assert resp.status_code == 200 and resp.json()["ip_whitelist"] == ["10.0.0.0/8"]
    assert use(gw[0], doc["value"]).json()["error"]["code"] == "ip_restricted"
    # Clearing: expiry and tier to null.
    resp = api.patch(doc["id"], {"expires_at": None, "rate_limit_tier": None, "ip_whitelist": []})
    assert resp.status_code == 200
    assert resp.json()["expires_at"] is None and resp.json()["rate_limit_tier"] is None
    # Environment is fixed at creation.
    assert_validation(api.patch(doc["id"], {"environment": "test"}), "environment")


# --- revoke ---------------------------------------------------------------------------------------------------


def test_delete_revokes_keeps_the_record_and_refuses_at_once(api: KeysAPI, gw: tuple[Gateway, str]) -> None:
    doc = api.created(name="doomed")
    assert use(gw[0], doc["value"]).status_code == 200  # now in the cache (TTL 300 s)
    resp = api.delete(doc["id"])
    assert resp.status_code == 200
    assert resp.json()["status"] == "revoked" and resp.json()["revoked_at"] is not None
    refused = use(gw[0], doc["value"])
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_token"
    kept = api.get(doc["id"])
    assert kept.status_code == 200 and kept.json()["status"] == "revoked"
    # Revoking again changes nothing; rotating a revoked key is a conflict.
    again = api.delete(doc["id"])
    assert again.status_code == 200 and again.json()["revoked_at"] == resp.json()["revoked_at"]
    conflict = api.rotate(doc["id"])
    assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "conflict"
    # A revoked key stays as it was: no changes either.
    changed = api.patch(doc["id"], {"name": "revived", "expires_at": None})
    assert changed.status_code == 409 and api.get(doc["id"]).json()["name"] == "doomed"


def test_a_rotated_keys_grace_period_can_end_sooner_not_later(api: KeysAPI, gw: tuple[Gateway, str]) -> None:
    old = api.created(name="leaked")
    assert api.rotate(old["id"], {"grace_period": "0"}).status_code == 200
    for later in ({"expires_at": None}, {"expires_at": future(30)}):
        resp = api.patch(old["id"], later)
        assert resp.status_code == 409, resp.text
        assert "rotated" in resp.json()["error"]["message"]
    refused = use(gw[0], old["value"])
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "expired_token"
    graced = api.created(name="graced")
    rotated = api.rotate(graced["id"], {"grace_period": "7d"}).json()
    sooner = future(1)
    resp = api.patch(graced["id"], {"expires_at": sooner, "name": "graced-old"})
    assert resp.status_code == 200 and resp.json()["expires_at"] == sooner
    assert parse_time(sooner) < parse_time(rotated["old_key"]["expires_at"])


# --- rotate ---------------------------------------------------------------------------------------------------


def test_rotate_answers_in_the_deployerp_shape_and_inherits(api: KeysAPI, gw: tuple[Gateway, str]) -> None:
    old = api.created(name="rotating", permissions=["servers:read", "instances:read"],
                      ip_whitelist=["127.0.0.0/8"], rate_limit_tier="limited", environment="live",
                      description="d")
    assert use(gw[0], old["value"]).status_code == 200
    now = datetime.now(UTC)
    resp = api.rotate(old["id"])  # no body: the configured default grace period, 7 days
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    assert set(doc) == {"old_key", "new_key"}
    assert set(doc["old_key"]) == {"id", "expires_at"} and set(doc["new_key"]) == {"id", "value", "created_at"}
    assert doc["old_key"]["id"] == old["id"] and doc["new_key"]["id"] != old["id"]
    grace = parse_time(doc["old_key"]["expires_at"]) - now
    assert timedelta(days=7) - timedelta(seconds=30) < grace <= timedelta(days=7) + timedelta(seconds=2)
    assert abs((parse_time(doc["new_key"]["created_at"]) - now).total_seconds()) < 30
    value = doc["new_key"]["value"]
    assert value.startswith("dep_live_") and value != old["value"]
    new = api.get(doc["new_key"]["id"]).json()
    for f in ("permissions", "ip_whitelist", "rate_limit_tier", "environment", "description", "name"):
        assert new[f] == old[f], f
    assert new["rotated_from"] == old["id"]
    shown_old = api.get(old["id"]).json()
    assert shown_old["replaced_by"] == new["id"] and shown_old["rotation_status"] == "grace_period"
    # Both keys work during the grace period.
    assert use(gw[0], old["value"]).status_code == 200
    assert use(gw[0], value).status_code == 200
    # A rotated key cannot be rotated again (rotate its successor).
    again = api.rotate(old["id"])
    assert again.status_code == 409 and new["id"] in again.json()["error"]["message"]


def test_rotate_with_grace_zero_refuses_the_old_key_at_once(api: KeysAPI, gw: tuple[Gateway, str]) -> None:
    old = api.created(name="compromised")
    assert use(gw[0], old["value"]).status_code == 200  # cached (TTL 300 s)
    resp = api.rotate(old["id"], {"grace_period": "0"})
    assert resp.status_code == 200
    refused = use(gw[0], old["value"])
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "expired_token"
    assert use(gw[0], resp.json()["new_key"]["value"]).status_code == 200
    assert api.get(old["id"]).json()["status"] == "expired"


def test_rotate_grace_period_forms(api: KeysAPI) -> None:
    old = api.created(name="g12h")
    now = datetime.now(UTC)
    doc = api.rotate(old["id"], {"grace_period": "12h"}).json()
    left = parse_time(doc["old_key"]["expires_at"]) - now
    assert timedelta(hours=12) - timedelta(seconds=30) < left <= timedelta(hours=12) + timedelta(seconds=2)
    # Rotation never extends a key's life: an expiry sooner than the grace period stays.
    soon = api.created(name="soon", expires_at=future(1))
    doc = api.rotate(soon["id"], {"grace_period": "30d"}).json()
    assert doc["old_key"]["expires_at"] == soon["expires_at"]
    for bad in ("7x", "-1d", True, [], "d"):
        victim = api.created(name="bad-grace")
        assert_validation(api.rotate(victim["id"], {"grace_period": bad}), "grace_period")
        assert api.get(victim["id"]).json()["replaced_by"] is None
    assert_validation(api.rotate(api.created(name="x")["id"], {"grace": "1d"}), "grace")


# --- scopes and privilege escalation ----------------------------------------------------------------------------


def test_scopes_are_enforced(api: KeysAPI, gw: tuple[Gateway, str]) -> None:
    target = api.created(name="target")
    reader = api.as_key(api.created(name="reader", permissions=["api-keys:read"])["value"])
    plain = api.as_key(api.created(name="plain", permissions=["servers:read"])["value"])
    writer = api.as_key(api.created(name="writer", permissions=["api-keys:*", "servers:read"])["value"])
    try:
        assert reader.list().status_code == 200 and reader.get(target["id"]).status_code == 200
        for resp in (reader.create({"name": "x", "permissions": ["api-keys:read"]}),
                     reader.patch(target["id"], {"name": "y"}), reader.delete(target["id"]),
                     reader.rotate(target["id"]),
                     plain.list(), plain.get(target["id"]),
                     plain.create({"name": "x", "permissions": ["servers:read"]})):
            assert resp.status_code == 403, resp.text
            assert resp.json()["error"]["code"] == "insufficient_permissions"
        assert writer.list().status_code == 200
        assert writer.patch(target["id"], {"name": "renamed"}).status_code == 200
        nobody = api.as_key("")
        try:
            anon = nobody.client.get("/v1/api-keys")
        finally:
            nobody.close()
        assert anon.status_code == 401 and anon.json()["error"]["code"] == "authentication_required"
    finally:
        for c in (reader, plain, writer):
            c.close()
    assert api.get(target["id"]).json()["name"] == "renamed"


def test_no_privilege_escalation(api: KeysAPI) -> None:
    caller_doc = api.created(name="limited-admin", permissions=["api-keys:*", "servers:read", "instances:*"])
    caller = api.as_key(caller_doc["value"])
    strong = api.created(name="strong", permissions=["*"])
    mine = api.created(name="mine", permissions=["servers:read"])
    before = api.all_ids()
    try:
        attempts = [
            caller.create({"name": "x", "permissions": ["servers:write"]}),
            caller.create({"name": "x", "permissions": ["*"]}),
            caller.create({"name": "x", "permissions": ["servers:*"]}),
            caller.patch(mine["id"], {"permissions": ["servers:read", "billing:read"]}),
            caller.patch(caller_doc["id"], {"permissions": ["*"]}),  # itself
            caller.patch(strong["id"], {"name": "pwned"}),
            caller.rotate(strong["id"]),
            caller.delete(strong["id"]),
        ]
        for resp in attempts:
            assert resp.status_code == 403, resp.text
            assert resp.json()["error"]["code"] == "insufficient_permissions"
        # What it holds, it may grant (wildcards it holds cover narrower scopes).
        ok = caller.create({"name": "ok", "permissions": ["instances:read", "servers:read"]})
        assert ok.status_code == 201
    finally:
        caller.close()
    assert api.get(strong["id"]).json()["name"] == "strong"
    assert api.get(strong["id"]).json()["status"] == "active"
    assert api.get(strong["id"]).json()["replaced_by"] is None
    assert api.get(mine["id"]).json()["permissions"] == ["servers:read"]
    assert api.get(caller_doc["id"]).json()["permissions"] == ["api-keys:*", "servers:read", "instances:*"]
    assert len(api.all_ids()) == len(before) + 1


# --- validation: 422 naming the field, nothing half-written ------------------------------------------------------

BAD_CREATES: list[tuple[Any, str]] = [
    ({"name": "x", "permissions": ["nonsense:read"]}, "permissions"),
    ({"name": "x", "permissions": ["servers:read", "Not A Scope"]}, "permissions"),
    ({"name": "x", "permissions": []}, "permissions"),
    ({"name": "x", "permissions": ["servers:read"], "ip_whitelist": ["10.0.0.0/33"]}, "ip_whitelist"),
    ({"name": "x", "permissions": ["servers:read"], "allowed_ips": ["not-an-ip"]}, "ip_whitelist"),
    ({"name": "x", "permissions": ["servers:read"], "expires_at": "2020-01-01T00:00:00Z"}, "expires_at"),
    ({"name": "x", "permissions": ["servers:read"], "expires_at": "tomorrow"}, "expires_at"),
    ({"name": "x", "permissions": ["servers:read"], "rate_limit_tier": "platinum"}, "rate_limit_tier"),
    ({"name": "x", "permissions": ["servers:read"], "rotation_period": "90days"}, "rotation_period"),
    ({"name": "x", "permissions": ["servers:read"], "rotation_period": "0"}, "rotation_period"),
    ({"name": "x", "permissions": ["servers:read"], "environment": "prod"}, "environment"),
    ({"name": "x", "permissions": ["servers:read"], "colour": "red"}, "colour"),
    ({"name": "x", "permissions": "servers:read"}, "permissions"),
    ({"name": "x", "permissions": ["servers:read"], "auto_rotate": "yes"}, "auto_rotate"),
    ({"name": "x", "permissions": ["servers:read"], "ip_whitelist": "10.0.0.0/8"}, "ip_whitelist"),
    ({"name": 7, "permissions": ["servers:read"]}, "name"),
    ({"name": "", "permissions": ["servers:read"]}, "name"),
    ({"permissions": ["servers:read"]}, "name"),
    ({"name": "x", "permissions": ["servers:read"], "description": "d" * 5000}, "description"),
    (["not", "an", "object"], "body"),
]


def test_bad_create_bodies_get_422_naming_the_field(api: KeysAPI) -> None:
    before = api.all_ids()
    for body, field in BAD_CREATES:
        assert_validation(api.create(body), field)
    too_big = b'{"name": "x", "permissions": ["servers:read"], "description": "' + b"d" * 70_000 + b'"}'
    for raw in (b"{", b"\xff\xfe", b'{"name": "x", "permissions": ["servers:read"],}', b"null", too_big):
        assert_validation(api.call("POST", "/api-keys", raw=raw), "body")
    assert api.all_ids() == before, "a failed create wrote something"


def test_bad_patch_bodies_change_nothing(api: KeysAPI) -> None:
    doc = api.created(name="stable", permissions=["servers:read"], rate_limit_tier="standard")
    bad = [
        ({"name": "ok", "permissions": ["nonsense:read"]}, "permissions"),
        ({"name": "ok", "ip_whitelist": ["1.2.3.4/99"]}, "ip_whitelist"),
        ({"name": "ok", "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ({"name": "ok", "rate_limit_tier": "gold"}, "rate_limit_tier"),
        ({"name": "ok", "rotation_period": "soon"}, "rotation_period"),
        ({"name": "ok", "value": "dep_live_x"}, "value"),
        ({"name": "ok", "id": "key_other"}, "id"),
        ({"name": ["ok"]}, "name"),
        ({"name": "ok", "auto_rotate": True}, "rotation_period"),
    ]
    for body, field in bad:
        assert_validation(api.patch(doc["id"], body), field)
    assert_validation(api.patch(doc["id"], None, raw=b"{nope"), "body")
    after = api.get(doc["id"]).json()
    assert after["name"] == "stable" and after["permissions"] == ["servers:read"]
    assert after["rate_limit_tier"] == "standard" and after["ip_whitelist"] == []


def test_no_key_value_in_the_log(gw: tuple[Gateway, str], api: KeysAPI) -> None:
    doc = api.created(name="secretive")
    use(gw[0], doc["value"])
    api.rotate(doc["id"], {"grace_period": "0"})
    use(gw[0], doc["value"])
    log = gw[0].log()
    assert "key.create" in log  # the structured audit event is logged ...
    assert doc["value"] not in log and gw[1] not in log  # ... but never a value
    assert doc["value"][-28:] not in log


# --- DeployAlly format ----------------------------------------------------------------------------------------


def test_deployally_format_wraps_answers(tmp_path: Path, up: Upstream) -> None:
    gw, admin = admin_gateway(tmp_path / "ally", up.url, {
        "error_format": "deployally", "key_format": "deployally", "management": {"prefix": "/api/v1"},
        "policies": str(Path(__file__).resolve().parents[2] / "policies" / "deployally.yaml"),
    })
    api = KeysAPI(gw, admin, prefix="/api/v1")  # the DeployAlly guide's paths: /api/v1/api-keys
    try:
        with gw.client() as c:  # nothing at /v1 (no rule: denied)
            assert c.get("/v1/api-keys", headers={"Authorization": f"Bearer {admin}"}).status_code == 403
        resp = api.create({"name": "CI/CD Pipeline", "permissions": ["templates:read", "deployments:create"],
                           "allowed_ips": ["203.0.113.10", "203.0.113.11"]})
        assert resp.status_code == 201
        doc = resp.json()
        assert set(doc) == {"success", "data"} and doc["success"] is True
        data = doc["data"]
        assert data["value"].startswith("da_") and not data["value"].startswith("da_test_")
        assert data["allowed_ips"] == ["203.0.113.10/32", "203.0.113.11/32"]
        # A list is `data` itself, its pagination beside it (not `data: {data: [...]}`).
        listed = api.list(limit=1).json()
        assert set(listed) == {"success", "data", "meta"} and listed["success"] is True
        assert isinstance(listed["data"], list) and len(listed["data"]) == 1
        assert listed["meta"] == {"pagination": {"limit": 1, "offset": 0, "next_offset": 1}}
        assert data["id"] in [r["id"] for r in api.list(limit=500).json()["data"]]
        # auth/test is wrapped like every other answer.
        me = api.call("GET", "/auth/test").json()
        assert set(me) == {"success", "data"} and me["success"] is True and me["data"]["authenticated"] is True
        got = api.get(data["id"]).json()
        assert got["success"] is True and got["data"]["id"] == data["id"]
        rotated = api.rotate(data["id"], {"grace_period": "1h"}).json()
        assert rotated["success"] is True and set(rotated["data"]) == {"old_key", "new_key"}
        assert rotated["data"]["new_key"]["value"].startswith("da_")
        revoked = api.delete(rotated["data"]["new_key"]["id"]).json()
        assert revoked == {"success": True, "data": revoked["data"]} and revoked["data"]["status"] == "revoked"
        test_key = api.create({"name": "dev", "permissions": ["templates:read"], "environment": "test"}).json()
        assert test_key["data"]["value"].startswith("da_test_")
        bad = api.create({"name": "x", "permissions": ["servers:read"]})
        assert bad.status_code == 422
        assert bad.json() == {"success": False, "error": {
            "code": "VALIDATION_ERROR", "message": "permissions: o item 1 não é uma permissão que a política conhece",
            "field": "permissions"}}
        # pydantic's own checks answer in Portuguese too, naming the field and its limit, never the value
        long = api.create({"name": "n" * 201, "permissions": ["templates:read"]})
        assert long.status_code == 422 and long.json()["error"] == {
            "code": "VALIDATION_ERROR", "message": "name: deve ter no máximo 200 caracteres", "field": "name"}
        unknown = api.create({"name": "x", "colour": "blue"})
        assert unknown.json()["error"]["message"] == "colour: campo desconhecido"
        missing = api.get("key_missing000000")
        assert missing.status_code == 404 and missing.json() == {"success": False, "error": {
            "code": "NOT_FOUND", "message": "Nenhuma API Key com este id"}}
    finally:
        api.close()
        gw.stop()


# --- usage is written in batches, not per request -------------------------------------------------------------


def test_usage_is_batched_off_the_hot_path_and_flushed_at_shutdown(tmp_path: Path, up: Upstream) -> None:
    gw, admin = admin_gateway(tmp_path / "usage", up.url, {"usage": {"flush_seconds": 3600}})
    api = KeysAPI(gw, admin)
    try:
        doc = api.created(name="busy")
        for _ in range(5):
            assert use(gw, doc["value"]).status_code == 200
        # Read the real SQLite file: nothing was written for those five requests (the batch is an hour away).
        with closing(sqlite3.connect(gw.work / "keys.db")) as db:
            row = db.execute("SELECT request_count, last_used_at FROM api_keys WHERE id = ?", (doc["id"],)).fetchone()
        assert row == (0, None)
    finally:
        api.close()
    gw.stop()  # SIGTERM: the pending batch is written on the way out
    with closing(sqlite3.connect(gw.work / "keys.db")) as db:
        count, used_at, ip = db.execute("SELECT request_count, last_used_at, last_used_ip FROM api_keys WHERE id = ?",
                                        (doc["id"],)).fetchone()
    assert count == 5 and used_at is not None and ip == "127.0.0.1"
