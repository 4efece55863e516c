"""Files that hold secrets are private to the gateway's user, whatever umask the gateway runs under.

The SQLite store (every key's keyed hash, the key records, the audit trail), its ``-wal`` and ``-shm`` files
and the server secret are created mode 600, and the directories the gateway creates for them mode 700, by
`gateway serve` and by the CLI alike, under the usual umask (022) and a permissive one (000). A store that an
earlier version left readable by others is tightened at start-up, with a warning naming the file (never its
content); a secret file readable by others is refused (tests/unit/test_hashing.py). `gateway demo`'s
temporary store: tests/e2e/test_core_demo.py.
"""

from __future__ import annotations

import json
import sqlite3
import stat
import time
from pathlib import Path

import pytest

from tests.support.core import bearer
from tests.support.procs import Gateway, Upstream


def _mode(path: Path) -> str:
    return f"{stat.S_IMODE(path.stat().st_mode):o}"


def _secretless(work: Path, upstream: Upstream, umask: int, **settings: object) -> Gateway:
    """A gateway whose store is in ``work/data/nested`` (two directories it must create) and that has no server
    secret given, so it creates one beside the store."""
    store = work / "data" / "nested" / "keys.db"
    g = Gateway(work, upstream.url, {"store": {"url": f"sqlite:///{store}"}, **settings}, start=False, umask=umask)
    g.env.pop("GATEWAY_SECRET")
    return g


def _wait_for_usage(g: Gateway, key_id: str) -> None:
    """Until the server's usage flush (its own SQLite connection, in a thread) has written this key's count."""
    deadline = time.monotonic() + 15
    while json.loads(g.cli("keys", "show", key_id, "--json").stdout)["request_count"] < 1:
        assert time.monotonic() < deadline, "the usage flush never wrote the request count"
        time.sleep(0.2)


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_serve_creates_store_wal_shm_secret_and_directories_private(
    tmp_path: Path, fresh_upstream: Upstream, umask: int
) -> None:
    work = tmp_path / "gw"
    g = _secretless(work, fresh_upstream, umask, usage={"flush_seconds": 0.2})
    work_mode = _mode(work)
    g.start()
    try:
        made = g.create_key("k", "servers:read")  # the CLI, under the same umask, on the server's store
        with g.client(verify=False) as c:
            assert c.get("/v1/servers", headers=bearer(made["value"])).status_code == 200
        _wait_for_usage(g, made["id"])
        data = work / "data"
        store = data / "nested" / "keys.db"
        # While the server runs, the WAL and the shared-memory index exist (the last connection to close
        # removes them).
        modes = {p.relative_to(work).as_posix(): _mode(p) for p in (
            data, data / "nested", store, Path(f"{store}-wal"), Path(f"{store}-shm"), data / "nested" / "gateway.secret"
        )}
    finally:
        g.stop()
    assert modes == {
        "data": "700", "data/nested": "700", "data/nested/keys.db": "600", "data/nested/keys.db-wal": "600",
        "data/nested/keys.db-shm": "600", "data/nested/gateway.secret": "600",
    }
    assert _mode(work) == work_mode, "a directory the gateway did not create was changed"


def test_cli_first_run_creates_the_store_private(tmp_path: Path, fresh_upstream: Upstream) -> None:
    """`gateway keys create` before any `gateway serve`: the CLI makes the directories, store and secret."""
    work = tmp_path / "gw"
    g = _secretless(work, fresh_upstream, 0o000)
    g.create_key("k", "servers:read")
    nested = work / "data" / "nested"
    found = {p.relative_to(work).as_posix(): _mode(p) for p in (work / "data", *sorted(nested.rglob("*")), nested)}
    assert found == {"data": "700", "data/nested": "700", "data/nested/keys.db": "600",
                     "data/nested/gateway.secret": "600"}


def test_a_store_readable_by_others_is_tightened_with_a_warning(tmp_path: Path, fresh_upstream: Upstream) -> None:
    """A database, -wal and -shm left mode 644 (as versions before this one created them, and as an SQLite
    connection of another program makes them): the gateway sets them to 600 before it opens the store and logs
    a warning that names each file and its old mode."""
    work = tmp_path / "gw"
    g = _secretless(work, fresh_upstream, 0o022)
    made = g.create_key("k", "servers:read")
    store = work / "data" / "nested" / "keys.db"
    store.chmod(0o644)
    # Another connection keeps the store open in WAL mode, so its -wal and -shm exist, with the database's mode.
    other = sqlite3.connect(store)
    try:
        assert other.execute("SELECT count(*) FROM api_keys").fetchone() == (1,)
        wal, shm = Path(f"{store}-wal"), Path(f"{store}-shm")
        assert (_mode(store), _mode(wal), _mode(shm)) == ("644", "644", "644")
        g.start()
        try:
            with g.client(verify=False) as c:
                assert c.get("/v1/servers", headers=bearer(made["value"])).status_code == 200
            assert (_mode(store), _mode(wal), _mode(shm)) == ("600", "600", "600")
        finally:
            g.stop()
    finally:
        other.close()
    for path in (store, wal, shm):
        assert f"{path} had mode 644" in g.log(), (path, g.log())
    assert made["value"] not in g.log()
