"""Core behaviour, end to end: `gateway keys create/list/revoke` on a real SQLite file, the server secret file, the key
cache seen from a running `gateway serve`, and a kill -9 of the gateway losing nothing.

Clients pass ``verify=False``: everything is plain HTTP on loopback, and it spares loading the CA bundle for
every client (about 0.1 s each on a busy machine).
"""

from __future__ import annotations

import json
import re
import sqlite3
import stat
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.support.core import assert_deployerp_error, assert_no_secret, bearer
from tests.support.procs import SECRET, Gateway, Upstream, run_cli

KEY_ID = re.compile(r"^key_[0-9A-Za-z]{12}$")
LIVE_VALUE = re.compile(r"^dep_live_[0-9A-Za-z]{32}$")
TEST_VALUE = re.compile(r"^dep_test_[0-9A-Za-z]{32}$")


def offline(tmp_path: Path, **settings: object) -> Gateway:
    """A gateway's config and store without starting the server: for CLI-only tests."""
    return Gateway(tmp_path / "gw", "http://127.0.0.1:9", dict(settings), start=False)


def test_keys_create_json_and_text(tmp_path: Path) -> None:
    g = offline(tmp_path)
    made = g.create_key("ci-pipeline", "servers:read,instances:*", "--expires-at", "2099-01-31T00:00:00Z")
    for field in ("id", "value", "name", "permissions", "expires_at", "environment"):
        assert field in made, field
    assert KEY_ID.match(made["id"])
    assert LIVE_VALUE.match(made["value"])
    assert made["name"] == "ci-pipeline"
    assert made["permissions"] == ["servers:read", "instances:*"]
    assert made["expires_at"] == "2099-01-31T00:00:00Z"
    assert made["environment"] == "live"
    assert "key_hash" not in made and "hash" not in json.dumps(made).lower().replace("hint", "")

    test = g.create_key("dev", "servers:read", "--env", "test")
    assert TEST_VALUE.match(test["value"]) and test["environment"] == "test" and test["expires_at"] is None

    text = g.cli("keys", "create", "--name", "plain", "--permissions", "backups:read")
    values = re.findall(r"dep_live_[0-9A-Za-z]{32}", text.stdout)
    ids = re.findall(r"key_[0-9A-Za-z]{12}", text.stdout)
    assert len(values) == 1 and len(ids) == 1, text.stdout
    # Every value is different, and every id.
    assert len({made["value"], test["value"], values[0]}) == 3
    assert len({made["id"], test["id"], ids[0]}) == 3
    # The value is printed once, on stdout only; nothing of it goes to stderr (where logs go).
    assert_no_secret(text.stderr, values)


def test_keys_list_never_shows_values_and_revoke(tmp_path: Path) -> None:
    g = offline(tmp_path)
    a = g.create_key("alpha", "servers:read")
    b = g.create_key("beta", "teams:read,teams:write", "--allow-ip", "10.0.0.0/8")
    listed = g.cli("keys", "list", "--json")
    docs = json.loads(listed.stdout)
    # The listing order is created_at (to the second), then id: two keys made in one second sort by id.
    expected = sorted([(a["created_at"], a["id"]), (b["created_at"], b["id"])])
    assert [(d["created_at"], d["id"]) for d in docs] == expected
    by_id = {d["id"]: d for d in docs}
    assert by_id[a["id"]]["name"] == "alpha" and by_id[b["id"]]["name"] == "beta"
    assert by_id[b["id"]]["permissions"] == ["teams:read", "teams:write"]
    assert all("value" not in d for d in docs)
    table = g.cli("keys", "list")
    assert a["id"] in table.stdout and "beta" in table.stdout and "ID" in table.stdout
    for out in (listed.stdout, table.stdout, listed.stderr, table.stderr):
        assert_no_secret(out, [a["value"], b["value"]])

    revoked = g.cli("keys", "revoke", a["id"])
    assert a["id"] in revoked.stdout and "cache.ttl_seconds" in revoked.stdout
    docs = json.loads(g.cli("keys", "list", "--json").stdout)
    assert {d["id"]: d["status"] for d in docs} == {a["id"]: "revoked", b["id"]: "active"}
    assert {d["id"]: d["revoked_at"] is not None for d in docs} == {a["id"]: True, b["id"]: False}
    gone = g.cli("keys", "revoke", "key_000000000000", check=False)
    assert gone.returncode == 1 and "key_000000000000" in gone.stderr


BAD_INPUT = [
    (["--permissions", "servers:reed"], "--permissions"),
    (["--permissions", "servers:read", "--allow-ip", "10.0.0.0/33"], "--allow-ip"),
    (["--permissions", "servers:read", "--expires-at", "2020-01-01T00:00:00Z"], "--expires-at"),
    (["--permissions", "servers:read", "--expires-at", "next tuesday"], "--expires-at"),
    (["--permissions", "servers:read", "--env", "prod"], "--env"),
]


def test_keys_create_bad_input_exits_2_naming_the_field(tmp_path: Path) -> None:
    g = offline(tmp_path)

    def attempt(case: tuple[list[str], str]) -> tuple[str, subprocess.CompletedProcess[str]]:
        args, named = case
        return named, g.cli("keys", "create", "--name", "x", *args, check=False)

    # The CLI takes ~0.5 s to start; the cases are independent, so run them side by side.
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(attempt, BAD_INPUT))
    for (args, _), (named, out) in zip(BAD_INPUT, results, strict=True):
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert named in out.stderr, (args, out.stderr)
        assert "Traceback" not in out.stderr
        assert out.stdout == ""
    # Nothing was written.
    assert json.loads(g.cli("keys", "list", "--json").stdout) == []


def test_every_key_command_takes_config(tmp_path: Path) -> None:
    """--config picks the store: two configs, two separate stores."""
    one, two = offline(tmp_path / "one"), offline(tmp_path / "two")
    made = one.create_key("only-in-one", "servers:read")
    assert [d["id"] for d in json.loads(one.cli("keys", "list", "--json").stdout)] == [made["id"]]
    assert json.loads(two.cli("keys", "list", "--json").stdout) == []
    assert two.cli("keys", "revoke", made["id"], check=False).returncode == 1
    one.cli("keys", "revoke", made["id"])
    # Without --config, ./config.yaml is used (the default), as for serve.
    default = run_cli("keys", "list", "--json", env=one.env, cwd=one.work)
    assert [d["id"] for d in json.loads(default.stdout)] == [made["id"]]
    missing = run_cli("keys", "list", "--config", str(tmp_path / "nope.yaml"), check=False)
    assert missing.returncode == 2 and "nope.yaml" in missing.stderr


def test_secret_file_created_mode_600_beside_the_store(tmp_path: Path, fresh_upstream: Upstream) -> None:
    def secretless(name: str) -> Gateway:
        work = tmp_path / name
        g = Gateway(work, fresh_upstream.url, {"store": {"url": f"sqlite:///{work / 'data' / 'keys.db'}"}},
                    start=False)
        g.env.pop("GATEWAY_SECRET")  # no secret given anywhere: the gateway must make one
        return g

    # First run is the CLI: it creates the secret and says where.
    cli_first = secretless("cli-first")
    first = cli_first.cli("keys", "create", "--name", "a", "--permissions", "servers:read", "--json")
    secret = cli_first.work / "data" / "gateway.secret"
    assert secret.exists()
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert str(secret) in first.stderr
    assert len(secret.read_bytes().strip()) >= 32
    # Said once: the next command reuses the file quietly.
    assert str(secret) not in cli_first.cli("keys", "list").stderr

    # First run is the server: it creates the secret, says where in its log, and the CLI then uses the same one.
    g = secretless("serve-first")
    g.start()
    try:
        made = g.cli("keys", "create", "--name", "b", "--permissions", "servers:read", "--json")
        served_secret = g.work / "data" / "gateway.secret"
        assert stat.S_IMODE(served_secret.stat().st_mode) == 0o600
        assert str(served_secret) in g.log()
        assert str(served_secret) not in made.stderr
        value = json.loads(made.stdout)["value"]
        with g.client(verify=False) as c:
            assert c.get("/v1/servers", headers=bearer(value)).status_code == 200
    finally:
        g.stop()
    assert_no_secret(g.log(), [value, json.loads(first.stdout)["value"]])
    assert served_secret.read_bytes().strip().decode() not in g.log()
    assert secret.read_bytes() != served_secret.read_bytes()  # each made its own, from secrets


def test_revoked_key_refused_within_cache_ttl(make_gateway: Callable[..., Gateway], fresh_upstream: Upstream) -> None:
    g = make_gateway(fresh_upstream.url, {"cache": {"ttl_seconds": 1}})
    made = g.create_key("soon-revoked", "servers:read")
    with g.client(verify=False) as c:
        assert c.get("/v1/servers", headers=bearer(made["value"])).status_code == 200  # now cached
        g.cli("keys", "revoke", made["id"])
        revoked_at = time.monotonic()
        while True:
            resp = c.get("/v1/servers", headers=bearer(made["value"]))
            if resp.status_code != 200 or time.monotonic() - revoked_at > 3:
                break
            time.sleep(0.05)
        took = time.monotonic() - revoked_at
    assert_deployerp_error(resp, "invalid_token")
    assert took <= 3, f"revoked key still accepted {took:.1f} s after revocation with ttl 1"
    assert_no_secret(g.log(), [made["value"]])


def test_cache_hit_does_no_store_io(make_gateway: Callable[..., Gateway], fresh_upstream: Upstream) -> None:
    """With a long TTL a cached key keeps working after its row says revoked: proof the cache answered."""
    g = make_gateway(fresh_upstream.url, {"cache": {"ttl_seconds": 300}})
    made = g.create_key("cached", "servers:read")
    with g.client(verify=False) as c:
        assert c.get("/v1/servers", headers=bearer(made["value"])).status_code == 200
        g.cli("keys", "revoke", made["id"])
        time.sleep(0.3)
        assert c.get("/v1/servers", headers=bearer(made["value"])).status_code == 200


def test_kill_9_loses_nothing_and_store_is_wal_without_values(
    make_gateway: Callable[..., Gateway], fresh_upstream: Upstream
) -> None:
    g = make_gateway(fresh_upstream.url)
    made = g.create_key("durable", "servers:read")
    g.kill()
    g.start()
    try:
        with g.client(verify=False) as c:
            assert c.get("/v1/servers", headers=bearer(made["value"])).status_code == 200
        # And once more with traffic in flight: the gateway writes usage to the store.
        second = g.create_key("durable-2", "servers:read")
        with g.client(verify=False) as c:
            assert c.get("/v1/servers", headers=bearer(second["value"])).status_code == 200
        g.kill()
        g.start()
        with g.client(verify=False) as c:
            for value in (made["value"], second["value"]):
                assert c.get("/v1/servers", headers=bearer(value)).status_code == 200
        ids = {d["id"] for d in json.loads(g.cli("keys", "list", "--json").stdout)}
        assert ids == {made["id"], second["id"]}
    finally:
        g.stop()
    db = g.work / "keys.db"
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    stored = b"".join(p.read_bytes() for p in g.work.glob("keys.db*"))
    for value in (made["value"], second["value"]):
        assert value.encode() not in stored
        assert value.split("_")[-1][:-4].encode() not in stored  # not even the random part (the hint is 4 chars)
    assert SECRET.encode() not in stored
    assert_no_secret(g.log(), [made["value"], second["value"]])
