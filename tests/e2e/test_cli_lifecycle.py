"""CLI parity: every management action as `gateway keys ...` on the store, with a real gateway process serving
the same store, plus `gateway keys rotate-due` with a real HTTP receiver for its webhook and `gateway audit`."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.support.lifecycle import KeysAPI, Receiver, admin_gateway, bearer, parse_time, use, wait_for
from tests.support.procs import Gateway, Upstream, run_cli

Env = tuple[Gateway, str, Receiver]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    up = Upstream(tmp_path_factory.mktemp("cli-up"))
    hook = Receiver()
    # A short cache TTL: the CLI writes the store directly, and a running gateway sees it within the TTL. The
    # gateway does not rotate by itself here (rotation.automatic: false): `keys rotate-due` is what is tested.
    gw, admin = admin_gateway(tmp_path_factory.mktemp("cli-gw"), up.url,
                              {"cache": {"ttl_seconds": 0.3},
                               "rotation": {"webhook_url": hook.url, "automatic": False}})
    yield gw, admin, hook
    gw.stop()
    hook.stop()
    up.stop()


@pytest.fixture
def api(env: Env) -> Iterator[KeysAPI]:
    """The management API as the admin key: quick set-up and inspection where the CLI is not the point."""
    a = KeysAPI(env[0], env[1])
    yield a
    a.close()


def cli(gw: Gateway, *args: str, status: int = 0, extra_env: dict[str, str] | None = None) -> Any:
    proc = run_cli(*args, "--config", str(gw.config), env={**gw.env, **(extra_env or {})}, check=False,
                   cwd=gw.work)
    assert proc.returncode == status, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    return proc


def cli_json(gw: Gateway, *args: str, extra_env: dict[str, str] | None = None) -> Any:
    return json.loads(cli(gw, *args, "--json", extra_env=extra_env).stdout)


def test_create_list_show_in_table_and_json(env: Env) -> None:
    gw = env[0]
    proc = cli(gw, "keys", "create", "--name", "table-key", "--permissions", "servers:read,instances:*",
               "--allow-ip", "127.0.0.0/8", "--tier", "limited", "--description", "made by hand")
    value = next(w for w in proc.stdout.split() if w.startswith("dep_live_"))
    key_id = proc.stdout.split()[1]
    assert key_id.startswith("key_") and "shown this once" in proc.stdout
    doc = cli_json(gw, "keys", "create", "--name", "json-key", "--permissions", "servers:read", "--env", "test",
                   "--auto-rotate", "--rotation-period", "90d", "--expires-at", "2031-01-01T00:00:00Z",
                   "--grace-period", "7d", "--notification-email", "Ops@Example.COM")
    assert doc["value"].startswith("dep_test_") and doc["environment"] == "test"
    assert doc["grace_period"] == "7d" and doc["notification_email"] == "Ops@example.com"
    assert doc["rotation_due_at"] and doc["expires_at"] == "2031-01-01T00:00:00Z"
    # Table by default: a header and one row per key; never a value.
    table = cli(gw, "keys", "list").stdout
    lines = table.splitlines()
    assert lines[0].split() == ["ID", "NAME", "ENV", "STATUS", "PERMISSIONS", "EXPIRES", "HINT"]
    row = next(line for line in lines if line.startswith(key_id))
    assert "table-key" in row and "live" in row and "active" in row and "servers:read,instances:*" in row
    assert value not in table and doc["value"] not in table
    listed = cli_json(gw, "keys", "list", "--env", "test")
    assert [r["id"] for r in listed] == [doc["id"]] and "value" not in listed[0]
    # show: usage fields after real requests (flushed at shutdown or every usage.flush_seconds = 5 s).
    assert use(gw, value).status_code == 200
    shown = cli(gw, "keys", "show", key_id).stdout
    assert "table-key" in shown and "127.0.0.0/8" in shown and "made by hand" in shown and "limited" in shown
    assert value not in shown
    one = cli_json(gw, "keys", "show", key_id)
    assert one["id"] == key_id and one["rate_limit_tier"] == "limited" and "request_count" in one
    assert "no key with id" in cli(gw, "keys", "show", "key_000000000000", status=1).stderr


def test_update_in_table_and_json(env: Env, api: KeysAPI) -> None:
    gw = env[0]
    key = api.created(name="to-update")
    assert use(gw, key["value"], "/v1/instances").status_code == 403
    out = cli(gw, "keys", "update", key["id"], "--name", "updated", "--permissions", "servers:read,instances:read",
              "--tier", "high_volume", "--description", "d2", "--expires-at", "2030-05-01T00:00:00Z").stdout
    assert out.startswith(f"Updated {key['id']}.") and "updated" in out
    doc = cli_json(gw, "keys", "update", key["id"], "--allow-ip", "127.0.0.1", "--allow-ip", "::1")
    assert doc["name"] == "updated" and doc["permissions"] == ["servers:read", "instances:read"]
    assert doc["ip_whitelist"] == ["127.0.0.1/32", "::1/128"] and doc["rate_limit_tier"] == "high_volume"
    assert doc["expires_at"] == "2030-05-01T00:00:00Z" and doc["description"] == "d2"
    # The running gateway sees the new permission within its cache TTL.
    wait_for(lambda: use(gw, key["value"], "/v1/instances").status_code == 200, timeout=5)
    cleared = cli_json(gw, "keys", "update", key["id"], "--clear-allow-ip", "--tier", "none", "--expires-at", "never")
    assert cleared["ip_whitelist"] == [] and cleared["rate_limit_tier"] is None and cleared["expires_at"] is None
    noticed = cli_json(gw, "keys", "update", key["id"], "--grace-period", "12h", "--notification-email", "a@b.example")
    assert (noticed["grace_period"], noticed["notification_email"]) == ("12h", "a@b.example")
    plain = cli_json(gw, "keys", "update", key["id"], "--grace-period", "default", "--notification-email", "")
    assert (plain["grace_period"], plain["notification_email"]) == (None, None)


BAD_ARGS: list[tuple[list[str], str]] = [
    (["keys", "create", "--name", "x", "--permissions", "nope:read"], "permissions"),
    (["keys", "create", "--name", "x", "--permissions", "servers:read", "--allow-ip", "10.0.0.0/40"], "allow-ip"),
    (["keys", "create", "--name", "x", "--permissions", "servers:read", "--expires-at", "2001-01-01T00:00:00Z"],
     "expires-at"),
    (["keys", "create", "--name", "x", "--permissions", "servers:read", "--tier", "gold"], "tier"),
    (["keys", "rotate", "KEYID", "--grace-period", "1y"], "grace-period"),
    (["keys", "update", "KEYID"], "nothing to change"),
    (["keys", "create", "--name", "x", "--permissions", "servers:read", "--notification-email", "ops at example"],
     "--notification-email"),
    (["keys", "update", "KEYID", "--grace-period", "soon"], "--grace-period"),
]


def test_bad_cli_input_exits_2_naming_the_option(env: Env, api: KeysAPI) -> None:
    gw = env[0]
    key = api.created(name="victim")
    before = api.all_ids()
    for args, names in BAD_ARGS:
        proc = cli(gw, *[key["id"] if a == "KEYID" else a for a in args], status=2)
        assert names in proc.stderr, (args, proc.stderr)
    assert api.all_ids() == before  # nothing written
    after = api.get(key["id"]).json()
    assert after["permissions"] == ["servers:read"] and after["replaced_by"] is None


def test_revoke_and_unknown_ids(env: Env, api: KeysAPI) -> None:
    gw = env[0]
    key = api.created(name="to-revoke")
    assert use(gw, key["value"]).status_code == 200
    out = cli(gw, "keys", "revoke", key["id"]).stdout
    assert out.startswith(f"Revoked {key['id']}") and "cache.ttl_seconds" in out
    wait_for(lambda: use(gw, key["value"]).status_code == 401, timeout=5)
    assert use(gw, key["value"]).json()["error"]["code"] == "invalid_token"
    for action in ("revoke", "rotate"):
        assert "no key with id" in cli(gw, "keys", action, "key_000000000000", status=1).stderr
    assert "cannot do that" in cli(gw, "keys", "rotate", key["id"], status=1).stderr


def test_rotate_default_grace_inherits_and_reports_the_grace_period(env: Env, api: KeysAPI) -> None:
    gw = env[0]
    key = api.created(name="to-rotate", permissions=["servers:read", "instances:read"], ip_whitelist=["127.0.0.0/8"],
                      rate_limit_tier="limited")
    assert use(gw, key["value"]).status_code == 200
    now = datetime.now(UTC)
    doc = cli_json(gw, "keys", "rotate", key["id"])
    assert set(doc) == {"old_key", "new_key"} and doc["old_key"]["id"] == key["id"]
    assert set(doc["new_key"]) == {"id", "value", "created_at"}
    grace = parse_time(doc["old_key"]["expires_at"]) - now
    assert timedelta(days=7) - timedelta(seconds=60) < grace <= timedelta(days=7) + timedelta(seconds=2)
    new = api.get(doc["new_key"]["id"]).json()
    assert new["permissions"] == ["servers:read", "instances:read"] and new["ip_whitelist"] == ["127.0.0.0/8"]
    assert new["rate_limit_tier"] == "limited" and new["environment"] == "live"
    assert use(gw, doc["new_key"]["value"]).status_code == 200
    # The old key still works, and says it is in its grace period (debug header and auth/test), once the
    # running gateway's cache entry (TTL 0.3 s) has been refreshed.
    wait_for(lambda: use(gw, key["value"], **{"X-Debug-Auth": "true"}).headers.get("x-auth-key-status")
             == "grace_period", timeout=5)
    assert use(gw, key["value"]).status_code == 200
    with gw.client() as c:
        test = c.get("/v1/auth/test", headers=bearer(key["value"]))
    assert test.status_code == 200, test.text
    assert test.json()["rotation"] == {"status": "grace_period", "rotation_due_at": None,
                                       "replaced_by": doc["new_key"]["id"]}
    assert test.json()["expires_at"] == doc["old_key"]["expires_at"]


def test_rotate_table_output_and_grace_zero(env: Env, api: KeysAPI) -> None:
    gw = env[0]
    key = api.created(name="rot-zero")
    assert use(gw, key["value"]).status_code == 200
    out = cli(gw, "keys", "rotate", key["id"], "--grace-period", "0").stdout
    assert out.startswith(f"Rotated {key['id']} -> key_") and "shown this once" in out
    new_value = next(w for w in out.split() if w.startswith("dep_live_"))
    wait_for(lambda: use(gw, key["value"]).status_code == 401, timeout=5)
    assert use(gw, key["value"]).json()["error"]["code"] == "expired_token"
    assert use(gw, new_value).status_code == 200


def test_rotate_due_dry_run_then_rotates_and_notifies(env: Env, api: KeysAPI) -> None:
    gw, _, hook = env
    due = [api.created(name=f"due-{i}", auto_rotate=True, rotation_period="1s") for i in range(2)]
    later = api.created(name="not-due", auto_rotate=True, rotation_period="90d")
    plain = api.created(name="plain")
    time.sleep(1.1)  # the shortest period is one second; nothing shorter can be asked for
    hook.bodies.clear()

    proc = cli(gw, "keys", "rotate-due", "--dry-run")
    assert "would rotate" in proc.stdout
    for k in due:
        assert k["id"] in proc.stdout
    assert later["id"] not in proc.stdout and plain["id"] not in proc.stdout
    assert hook.bodies == []
    assert all(api.get(k["id"]).json()["replaced_by"] is None for k in due)

    results = cli_json(gw, "keys", "rotate-due")
    mine = {r["key_id"]: r for r in results if r["key_id"] in {k["id"] for k in due}}
    assert set(mine) == {k["id"] for k in due}
    assert all(r["rotated"] and r["notified"] and r["delivery"] == "held" for r in mine.values())
    notices = {b["key_id"]: b for b in hook.bodies}
    for k in due:
        n = notices[k["id"]]
        assert n["new_key_id"] == mine[k["id"]]["new_key_id"]
        assert n["old_key_expires_at"] == mine[k["id"]]["old_key_expires_at"]
        assert "value" not in n  # rotation.deliver_value is off
        assert api.get(k["id"]).json()["replaced_by"] == n["new_key_id"]
        assert use(gw, k["value"]).status_code == 200  # the old key has its grace period
    assert later["id"] not in notices and plain["id"] not in notices
    assert api.get(later["id"]).json()["replaced_by"] is None
    assert "value" not in json.dumps(results)
    events = cli_json(gw, "audit", "--key", due[0]["id"])
    assert [(e["action"], e["actor"]) for e in events] == [("create", api.created_by), ("rotate", "cli")]
    # Nobody received the new values: the store holds them, sealed, until revealed once.
    new_id = mine[due[0]["id"]]["new_key_id"]
    assert api.get(new_id).json()["revealable"] is True
    shown = cli(gw, "keys", "reveal", new_id).stdout
    value = next(w for w in shown.split() if w.startswith("dep_live_"))
    assert "shown this once" in shown and use(gw, value).status_code == 200
    assert "no value is held" in cli(gw, "keys", "reveal", new_id, status=1).stderr
    assert api.get(new_id).json()["revealable"] is False

    # With rotation.deliver_value the notice carries the new value, and that value works.
    extra = api.created(name="due-deliver", auto_rotate=True, rotation_period="1s")
    failing = api.created(name="due-fail", auto_rotate=True, rotation_period="1s")
    time.sleep(1.1)
    hook.bodies.clear()
    # A webhook that fails for one key is reported (exit 1); the rotations themselves stand.
    hook.fail_for = {failing["id"]}
    try:
        proc = cli(gw, "keys", "rotate-due", status=1, extra_env={"GATEWAY_ROTATION__DELIVER_VALUE": "true"})
    finally:
        hook.fail_for = set()
    notice = next(b for b in hook.bodies if b["key_id"] == extra["id"])
    assert notice["value"].startswith("dep_live_")
    assert notice["value"] not in proc.stdout + proc.stderr
    assert use(gw, notice["value"]).status_code == 200
    assert "webhook answered 500" in proc.stdout and failing["id"] in proc.stdout
    assert [b["key_id"] for b in hook.bodies].count(failing["id"]) == 3  # a 5xx is retried twice
    assert [b["key_id"] for b in hook.bodies].count(extra["id"]) == 1
    assert api.get(failing["id"]).json()["replaced_by"] is not None
    # The webhook took the one value (delivered once: nothing held); the failed one is held, not lost.
    assert api.get(notice["new_key_id"]).json()["revealable"] is False
    assert api.get(api.get(failing["id"]).json()["replaced_by"]).json()["revealable"] is True


def test_audit_lists_every_change_with_its_actor(env: Env, api: KeysAPI) -> None:
    gw = env[0]
    key = gw.create_key("audited", "servers:read")
    patched = api.patch(key["id"], {"name": "audited-2", "permissions": ["servers:read", "backups:read"]})
    assert patched.status_code == 200
    rotated = api.rotate(key["id"], {"grace_period": "1h"}).json()
    assert api.delete(rotated["new_key"]["id"]).status_code == 200
    cli(gw, "keys", "revoke", key["id"])
    admin_id = api.created_by

    events = cli_json(gw, "audit", "--key", key["id"])
    assert [(e["action"], e["actor"]) for e in events] == [
        ("create", "cli"), ("update", admin_id), ("rotate", admin_id), ("revoke", "cli")]
    assert events[1]["details"] == {"name": "audited-2", "permissions": ["servers:read", "backups:read"]}
    assert events[2]["details"]["new_key_id"] == rotated["new_key"]["id"]
    assert events[2]["details"]["old_key_expires_at"] == rotated["old_key"]["expires_at"]
    for e in events:
        assert e["key_id"] == key["id"] and parse_time(e["at"]) <= datetime.now(UTC) + timedelta(seconds=1)
    table = cli(gw, "audit", "--key", key["id"]).stdout.splitlines()
    assert len(table) == 4
    assert table[1].split()[1:4] == [admin_id, "update", key["id"]]
    everything = cli_json(gw, "audit")
    assert {e["key_id"] for e in everything} >= {key["id"], rotated["new_key"]["id"], admin_id}
    assert ("revoke", admin_id) in [(e["action"], e["actor"]) for e in everything
                                    if e["key_id"] == rotated["new_key"]["id"]]
    assert rotated["new_key"]["value"] not in json.dumps(everything)
    # The structured log twin of the API's changes, without any value.
    log = gw.log()
    wait_for(lambda: '"event": "key.rotate"' in gw.log(), timeout=5)
    assert '"event": "key.update"' in log and key["id"] in log
    assert rotated["new_key"]["value"] not in gw.log()
