"""Automatic rotation as the deployERP guide describes it ("Key Rotation: Automatic Rotation"), end to end.

Real `gateway serve` processes check every second, in front of a real recording upstream, over a real SQLite
file or a real redis-server; their notices go to a real SMTP server (aiosmtpd, tests/support/smtp.py) and their
webhook to a real HTTP receiver. A key made with ``rotation_enabled``, a ``rotation_period`` of seconds, a
``grace_period`` and a ``notification_email`` rotates by itself; its owner is told before and after, never
with a key value; the new value is obtainable once.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.support.lifecycle import KeysAPI, Receiver, admin_gateway, parse_time, use, wait_for
from tests.support.procs import Gateway, RedisServer, Upstream, free_port
from tests.support.smtp import MailServer, Received

OWNER = "ops.team@example.com"


@pytest.fixture
def mail() -> Iterator[MailServer]:
    server = MailServer()
    yield server
    server.stop()


def settings(smtp_url: str, **rotation: Any) -> dict[str, Any]:
    return {
        "cache": {"ttl_seconds": 0.2},
        "rotation": {"check_seconds": 1, **rotation},
        "notifications": {"smtp": {"url": smtp_url, "from": "gateway@example.com"}, "retry_seconds": 1,
                          "max_attempts": 10},
    }


def notices(mail: MailServer, key_id: str, event: str) -> list[Received]:
    return [m for m in mail.messages
            if m.message["X-Gateway-Key-Id"] == key_id and m.message["X-Gateway-Notice"] == event]


def rotated(api: KeysAPI, key_id: str, timeout: float = 15.0) -> dict[str, Any]:
    """The key's document once it has been rotated (by the gateway: nobody else rotates here)."""

    def check() -> dict[str, Any] | None:
        doc: dict[str, Any] = api.get(key_id).json()
        return doc if doc["replaced_by"] else None

    return wait_for(check, timeout=timeout, interval=0.1)  # type: ignore[no-any-return]


def metric(gw: Gateway, name: str, **labels: str) -> float:
    with gw.client() as c:
        text = c.get("/metrics").text
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if m and ",".join(sorted(m.group(1).split(","))) == want:
            return float(m.group(2))
    return 0.0


def test_a_key_rotates_by_itself_with_notices_before_and_after_and_its_value_revealed_once(
        tmp_path: Path, fresh_upstream: Upstream, mail: MailServer) -> None:
    gw, admin = admin_gateway(tmp_path / "gw", fresh_upstream.url, settings(mail.url))
    api = KeysAPI(gw, admin)
    try:
        # The guide's body, with a name and a scope to make a key of it.
        key = api.created(name="ci-pipeline", permissions=["servers:read"], rotation_enabled=True,
                          rotation_period="3s", notification_email=OWNER, grace_period="5s")
        ends_soon = (datetime.now(UTC) + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
        temporary = api.created(name="temporary-key", expires_at=ends_soon, notification_email=OWNER)
        assert (key["auto_rotate"], key["rotation_period"], key["grace_period"]) == (True, "3s", "5s")
        assert key["notification_email"] == OWNER and key["revealable"] is False
        # Before: the rotation is due within notifications.notice_before (7d), so the notice goes out at once.
        (before,) = wait_for(lambda: notices(mail, key["id"], "rotating"), timeout=10)
        assert before.rcpt_tos == [OWNER] and before.mail_from == "gateway@example.com"
        assert key["rotation_due_at"].replace("T", " ").replace("Z", " UTC") in before.text

        old = rotated(api, key["id"])
        new_id = old["replaced_by"]
        new = api.get(new_id).json()
        ends = parse_time(old["expires_at"])
        # Rotated when due (created + 3 s, checked every second), with the key's own grace period of 5 s.
        assert parse_time(key["rotation_due_at"]) <= parse_time(new["created_at"]) <= \
            parse_time(key["rotation_due_at"]) + timedelta(seconds=5)
        assert ends - parse_time(new["created_at"]) == timedelta(seconds=5)
        assert new["rotated_from"] == key["id"] and new["created_by"] == "auto-rotation"
        assert new["permissions"] == ["servers:read"] and new["notification_email"] == OWNER
        assert new["grace_period"] == "5s" and new["revealable"] is True
        # The old key works during its grace period...
        if datetime.now(UTC) < ends - timedelta(seconds=1):
            ok = use(gw, key["value"], **{"X-Debug-Auth": "true"})
            assert ok.status_code == 200 and ok.headers["x-auth-key-status"] == "grace_period"

        # ... the new value is revealed once, and works ...
        revealed = api.call("POST", f"/api-keys/{new_id}/reveal")
        assert revealed.status_code == 200, revealed.text
        assert revealed.headers["cache-control"] == "no-store"
        value = revealed.json()["value"]
        assert set(revealed.json()) == {"id", "value", "created_at"} and revealed.json()["id"] == new_id
        assert value.startswith("dep_live_") and value[-4:] == new["hint"]
        assert use(gw, value).status_code == 200
        again = api.call("POST", f"/api-keys/{new_id}/reveal")
        assert again.status_code == 410 and again.json()["error"]["code"] == "value_not_held", again.text
        assert api.get(new_id).json()["revealable"] is False

        # ... and the old one is refused once the grace period is over.
        wait_for(lambda: use(gw, key["value"]).status_code == 401, timeout=12, interval=0.2)
        assert use(gw, key["value"]).json()["error"]["code"] == "expired_token"

        # After: which key, its successor, when the old one stops, how to get the new one.
        (after,) = wait_for(lambda: notices(mail, key["id"], "rotated"), timeout=10)
        text = after.text
        assert new_id in text and key["id"] in text and "ci-pipeline" in text
        assert old["expires_at"].replace("T", " ").replace("Z", " UTC") in text
        assert f"POST /v1/api-keys/{new_id}/reveal" in text
        # The successor rotates in its turn (it inherited the settings): its value is held, never mailed.
        third = rotated(api, new_id)["replaced_by"]
        wait_for(lambda: notices(mail, new_id, "rotated"), timeout=10)
        assert api.get(third).json()["revealable"] is True

        # A key that expires within notifications.notice_before (and does not rotate) is told so, once.
        (expiring,) = wait_for(lambda: notices(mail, temporary["id"], "expiring"), timeout=5)
        assert ends_soon.replace("T", " ").replace("Z", " UTC") in expiring.text
        assert f"/v1/api-keys/{temporary['id']}/rotate" in expiring.text

        values = [key["value"], value, admin, temporary["value"]]
        for message in mail.messages:
            for v in values:
                assert v not in message.text and v[len("dep_live_"):] not in message.text
            assert re.search(r"dep_(live|test)_[A-Za-z0-9]{8,}", message.text) is None, message.text
        # Each notice once per key and event, though the gateway checked every second.
        for kid in (key["id"], new_id):
            assert len(notices(mail, kid, "rotated")) == 1 and len(notices(mail, kid, "rotating")) == 1

        trail = json.loads(gw.cli("audit", "--key", new_id, "--json").stdout)
        assert {("reveal", api.created_by), ("rotate", "auto-rotation")} <= {(e["action"], e["actor"]) for e in trail}
        assert value not in json.dumps(trail)
        assert metric(gw, "gateway_notifications_total", channel="email", result="sent") >= 4
        assert metric(gw, "gateway_key_rotations_total", result="rotated") >= 2
        log = gw.log()
        assert "ops.team" not in log and "***@example.com" in log  # the address's local part is never logged
        for v in values:
            assert v not in log
    finally:
        api.close()
        gw.stop()


def test_a_mail_server_that_is_down_never_holds_up_a_rotation_and_gets_the_notices_when_back(
        tmp_path: Path, fresh_upstream: Upstream) -> None:
    port = free_port()  # nothing listens here yet
    down = MailServer(port=port, start=False)
    gw, admin = admin_gateway(tmp_path / "gw", fresh_upstream.url, settings(down.url))
    api = KeysAPI(gw, admin)
    try:
        key = api.created(name="mailless", rotation_enabled=True, rotation_period="2s", grace_period="1h",
                          notification_email=OWNER)
        old = rotated(api, key["id"])  # the rotation does not wait for the mail
        assert use(gw, key["value"]).status_code == 200
        wait_for(lambda: metric(gw, "gateway_notifications_total", channel="email", result="retried") >= 2,
                 timeout=10, interval=0.3)
        assert metric(gw, "gateway_notifications_total", channel="email", result="sent") == 0
        assert "not delivered (attempt" in gw.log() and "ops.team" not in gw.log()

        down.start()  # the server comes back: the queued notices go out on their next attempt
        try:
            (after,) = wait_for(lambda: notices(down, key["id"], "rotated"), timeout=30, interval=0.2)
            assert old["replaced_by"] in after.text and key["value"] not in after.text
            assert metric(gw, "gateway_notifications_total", channel="email", result="sent") >= 1
            assert metric(gw, "gateway_notifications_total", channel="email", result="failed") == 0
        finally:
            down.stop()
    finally:
        api.close()
        gw.stop()
    # A restart resends nothing already sent: the notices' state is in the store.
    sent = len(notices(down, key["id"], "rotated"))
    down.start()
    gw.start()
    try:
        time.sleep(2.5)
        assert len(notices(down, key["id"], "rotated")) == sent == 1
    finally:
        gw.stop()
        down.stop()


def test_with_deliver_value_the_webhook_gets_the_new_value_and_nothing_is_held(
        tmp_path: Path, fresh_upstream: Upstream, mail: MailServer) -> None:
    hook = Receiver()
    gw, admin = admin_gateway(tmp_path / "gw", fresh_upstream.url,
                              settings(mail.url, webhook_url=hook.url, deliver_value=True))
    api = KeysAPI(gw, admin)
    try:
        key = api.created(name="vaulted", rotation_enabled=True, rotation_period="2s", grace_period="1h",
                          notification_email=OWNER)
        new_id = rotated(api, key["id"])["replaced_by"]
        body = wait_for(lambda: next((b for b in hook.bodies if b["key_id"] == key["id"]), None), timeout=5)
        assert body["new_key_id"] == new_id and body["value"].startswith("dep_live_")
        assert use(gw, body["value"]).status_code == 200
        # Delivered once: the webhook took it, so the gateway holds no copy to reveal.
        assert api.get(new_id).json()["revealable"] is False
        gone = api.call("POST", f"/api-keys/{new_id}/reveal")
        assert gone.status_code == 410 and gone.json()["error"]["code"] == "value_not_held"
        (after,) = wait_for(lambda: notices(mail, key["id"], "rotated"), timeout=10)
        assert "rotation webhook" in after.text and body["value"] not in after.text
        assert body["value"] not in gw.log()
    finally:
        api.close()
        gw.stop()
        hook.stop()


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_two_gateways_sharing_a_store_rotate_and_notify_each_key_once(
        backend: str, tmp_path: Path, fresh_upstream: Upstream, mail: MailServer) -> None:
    """Both processes check every 0.1 s; the store's lease (Redis: SET NX PX; SQLite: flock beside the file)
    lets one at a time do a pass, so no rotation is attempted twice (which the store would refuse: a
    conflict logged) and no notice is sent twice."""
    redis = RedisServer(tmp_path / "redis") if backend == "redis" else None
    hook = Receiver()
    url = redis.url if redis is not None else f"sqlite:///{tmp_path / 'shared' / 'keys.db'}"
    shared = {**settings(mail.url, webhook_url=hook.url), "store": {"url": url}}
    shared["rotation"]["check_seconds"] = 0.1
    first = Gateway(tmp_path / "a", fresh_upstream.url, shared)
    second = Gateway(tmp_path / "b", fresh_upstream.url, shared)
    try:
        ids = [first.create_key(f"shared-{i}", "servers:read", "--auto-rotate", "--rotation-period", "1s",
                                "--grace-period", "1h", "--notification-email", OWNER)["id"] for i in range(6)]
        for kid in ids:
            wait_for(lambda kid=kid: notices(mail, kid, "rotated"), timeout=15, interval=0.1)
        time.sleep(1.0)
    finally:
        first.stop()
        second.stop()
    try:
        keys = {k["id"]: k for k in json.loads(first.cli("keys", "list", "--json").stdout)}
        posted = [b["key_id"] for b in hook.bodies]
        for kid in ids:
            assert keys[kid]["replaced_by"] and posted.count(kid) == 1, (kid, posted)
        assert all(posted.count(kid) == 1 for kid in posted), posted
        for kid in keys:
            assert len(notices(mail, kid, "rotated")) <= 1, kid
            assert len(notices(mail, kid, "rotating")) <= 1, kid
        # The held value, revealed once through this store (SQLite transaction / Redis script), then gone.
        successor = keys[ids[0]]["replaced_by"]
        shown = first.cli("keys", "reveal", successor, "--json")
        assert json.loads(shown.stdout)["value"].startswith("dep_live_")
        again = first.cli("keys", "reveal", successor, check=False)
        assert again.returncode == 1 and "no value is held" in again.stderr
        logs = first.log() + second.log()
        assert "not done" not in logs, "two processes tried the same rotation"
        # Both took part: the lease goes to whichever asks first, pass by pass.
        assert "rotated automatically" in first.log() or "rotated automatically" in second.log()
    finally:
        hook.stop()
        if redis is not None:
            redis.stop()


def test_a_schema_1_store_gets_the_new_columns_when_opened(tmp_path: Path) -> None:
    """A store made by the gateway before per-key grace periods and notices (schema 1): opened by this one, its
    keys stay as they were and take the new fields (ALTER TABLE ... ADD COLUMN, SQLite's own way)."""
    db = tmp_path / "old" / "keys.db"
    db.parent.mkdir(mode=0o700)
    with closing(sqlite3.connect(db)) as conn:
        conn.executescript(SCHEMA_1)
        conn.execute(
            "INSERT INTO api_keys (id, key_hash, hint, name, permissions, allowed_ips, environment, created_at,"
            " created_by, auto_rotate, rotation_period) VALUES ('key_old1', 'abc', 'wxyz', 'legacy',"
            " '[\"servers:read\"]', '[]', 'live', '2026-01-01T00:00:00Z', 'cli', 1, 7776000)")
        conn.execute("PRAGMA user_version=1")
        conn.commit()
    gw = Gateway(tmp_path / "gw", "http://127.0.0.1:9", {"store": {"url": f"sqlite:///{db}"}}, start=False)
    shown = json.loads(gw.cli("keys", "show", "key_old1", "--json").stdout)
    assert (shown["name"], shown["rotation_period"], shown["grace_period"], shown["notification_email"]) == (
        "legacy", "90d", None, None)
    gw.cli("keys", "update", "key_old1", "--grace-period", "12h", "--notification-email", OWNER)
    shown = json.loads(gw.cli("keys", "show", "key_old1", "--json").stdout)
    assert (shown["grace_period"], shown["notification_email"]) == ("12h", OWNER)
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 5  # the current schema, with the user tables
        columns = {row[1] for row in conn.execute("PRAGMA table_info(api_keys)")}
        assert conn.execute("SELECT count(*) FROM users").fetchone()[0] == 0
    assert {"grace_period", "notification_email", "held_value", "notices"} <= columns
    # The audit trail of that change masks the address (it is logged too).
    audit = gw.cli("audit", "--key", "key_old1", "--json").stdout
    assert "***@example.com" in audit and "ops.team" not in audit


SCHEMA_1 = """
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY, key_hash TEXT NOT NULL UNIQUE, hint TEXT NOT NULL, name TEXT NOT NULL,
    permissions TEXT NOT NULL, allowed_ips TEXT NOT NULL, environment TEXT NOT NULL, created_at TEXT NOT NULL,
    expires_at TEXT, revoked_at TEXT, rate_limit_tier TEXT, description TEXT, created_by TEXT NOT NULL,
    auto_rotate INTEGER NOT NULL DEFAULT 0, rotation_period INTEGER, rotated_from TEXT, rotated_to TEXT,
    last_used_at TEXT, last_used_ip TEXT, request_count INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX api_keys_created ON api_keys (created_at, id);
CREATE TABLE audit_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
    key_id TEXT NOT NULL, details TEXT NOT NULL
);
CREATE INDEX audit_log_key ON audit_log (key_id, seq);
"""
