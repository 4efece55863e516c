"""`gateway demo` as a user runs it: it starts, prints three keys and curl lines that work as printed, and Ctrl-C
(SIGINT) stops it cleanly and removes its temporary store. It is the same server as `gateway serve`: the
client address is the socket peer whatever X-Forwarded-For says, the guarded HTTP protocol answers malformed
framing, and its temporary store is private to its user.

Clients pass ``verify=False``: everything is plain HTTP on loopback, and it spares loading the CA bundle for
every client (about 0.1 s each on a busy machine).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.core import assert_deployerp_error, bearer
from tests.support.demo import Demo, end_demo
from tests.support.procs import PYTHON, body_json, free_port, raw_request, status_of


@pytest.fixture
def demo() -> Iterator[Demo]:
    d = Demo(free_port())
    yield d
    end_demo(d)


def _store(out: str) -> Path:
    return Path(re.search(r"^store: (\S+)", out, re.M).group(1))  # type: ignore[union-attr]


def _keys(out: str) -> dict[str, tuple[str, str]]:
    found = re.findall(r"^\s+(read-only|deployment|admin)\s+(key_[0-9A-Za-z]{12})\s+(dep_live_[0-9A-Za-z]{32})\s",
                       out, re.M)
    return {kind: (key_id, value) for kind, key_id, value in found}


def test_demo_keys_work_and_ctrl_c_stops_cleanly(demo: Demo) -> None:
    keys = _keys(demo.out)
    assert set(keys) == {"read-only", "deployment", "admin"}, demo.out
    store = _store(demo.out)
    assert store.exists()
    base = f"http://127.0.0.1:{demo.port}"
    ro_id, ro = keys["read-only"]
    with httpx.Client(base_url=base, timeout=10, verify=False) as c:
        servers = c.get("/v1/servers", headers=bearer(ro))
        assert servers.status_code == 200
        echo = servers.json()["echo"]
        assert echo["path"] == "/v1/servers"
        assert echo["auth_headers"]["x-auth-key-id"] == ro_id
        assert echo["auth_headers"]["x-auth-permissions"] == "servers:read,instances:read,backups:read"
        assert echo["auth_headers"]["x-auth-environment"] == "live"
        assert c.get("/v1/servers").status_code == 401
        assert c.post("/v1/instances", headers=bearer(ro)).status_code == 403
        assert c.post("/v1/instances", headers=bearer(keys["deployment"][1]), json={"app": "shop"}).status_code == 201
        assert c.get("/v1/invoices", headers=bearer(keys["admin"][1])).status_code == 200
        auth = c.get("/v1/auth/test", headers=bearer(keys["admin"][1])).json()
        assert auth["authenticated"] is True and auth["key_id"] == keys["admin"][0]

    status, rest = demo.stop()
    assert status == 0, demo.out
    assert "Traceback" not in demo.out
    assert "stopped" in rest
    assert not store.exists() and not store.parent.exists(), "the demo left its temporary store behind"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", demo.port), timeout=1).close()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_printed_curl_lines_work_as_printed(demo: Demo) -> None:
    lines = [line.strip() for line in demo.out.splitlines() if line.strip().startswith("curl ")]
    assert len(lines) >= 5, demo.out
    results = [subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=20) for line in lines]
    for line, res in zip(lines, results, strict=True):
        assert res.returncode == 0, (line, res.stderr)
        body = res.stdout.split("\n\n", 1)[-1]  # curl -si prints the headers first (text mode: \r\n -> \n)
        doc = json.loads(body)
        assert isinstance(doc, dict), (line, res.stdout)
    # The first line has no key (401); the debug line shows the debug headers.
    assert json.loads(results[0].stdout)["error"]["code"] == "authentication_required"
    debug = next(r.stdout for line, r in zip(lines, results, strict=True) if "X-Debug-Auth" in line)
    assert re.search(r"^x-auth-ip-check: ", debug, re.M | re.I), debug
    assert demo.stop()[0] == 0


def test_demo_sigterm_cleans_up_too(demo: Demo) -> None:
    """`kill`, a closed terminal or `docker stop`: the temporary store and its server secret must still go."""
    store = _store(demo.out)
    assert (store.parent / "gateway.secret").exists()
    status, rest = demo.stop(signal.SIGTERM)
    assert status == 0, demo.out
    assert "Traceback" not in demo.out
    assert not store.parent.exists(), "SIGTERM left the demo's store and server secret behind"


def test_demo_port_taken_fails_plainly() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        res = subprocess.run([PYTHON, "-m", "gateway", "demo", "--port", str(port)], capture_output=True, text=True,
                             env=env, timeout=30)
    assert res.returncode != 0
    assert str(port) in res.stderr and "--port" in res.stderr
    assert "Traceback" not in res.stderr
    assert "dep_live_" not in res.stdout  # no keys printed for a demo that cannot run


SPOOFED = "203.0.113.9"  # TEST-NET-3 (RFC 5737): an address no loopback client has


def test_demo_client_address_is_the_socket_peer_not_x_forwarded_for(demo: Demo) -> None:
    """The demo trusts no proxy (as `gateway serve` with its default ``trusted_proxies: []``), so a client's
    X-Forwarded-For says nothing about where it is: RFC 7239 section 8.1, a forwarding header is only as
    trustworthy as the proxy that added it. The deployment key is allowed from 127.0.0.0/8 and ::1 only: from
    loopback it works whatever address the header claims, and the upstream is told the real peer."""
    keys = _keys(demo.out)
    base = f"http://127.0.0.1:{demo.port}"
    claim = {"X-Forwarded-For": SPOOFED, "X-Debug-Auth": "true"}
    with httpx.Client(base_url=base, timeout=10, verify=False) as c:
        deploy = c.get("/v1/servers", headers={**bearer(keys["deployment"][1]), **claim})
        assert deploy.status_code == 200, deploy.text
        assert deploy.headers["x-auth-ip-check"] == "passed"
        assert deploy.json()["echo"]["forwarded_for"] == "127.0.0.1"
        # A key without an allowlist: the upstream still hears of the peer, not of the claim.
        plain = c.get("/v1/servers", headers={**bearer(keys["read-only"][1]), **claim})
        assert plain.status_code == 200, plain.text
        assert plain.headers["x-auth-ip-check"] == "not_configured"
        assert plain.json()["echo"]["forwarded_for"] == "127.0.0.1"
    assert demo.stop()[0] == 0


def test_demo_failed_auth_lockout_counts_the_peer_whatever_x_forwarded_for_claims(demo: Demo) -> None:
    """limits.auth_failures_per_minute (30) bad keys from loopback, each claiming another X-Forwarded-For
    address: they are all failures of 127.0.0.1, so the 31st request is refused with 429 and Retry-After
    (RFC 6585 section 4), and so is a good key from the same address until the cool-down ends."""
    keys = _keys(demo.out)
    base = f"http://127.0.0.1:{demo.port}"
    with httpx.Client(base_url=base, timeout=10, verify=False) as c:
        for i in range(30):
            bad = c.get("/v1/servers", headers={"Authorization": f"Bearer dep_live_{i:032d}",
                                                "X-Forwarded-For": f"198.51.100.{i + 1}"})
            assert_deployerp_error(bad, "invalid_token")
        locked = c.get("/v1/servers", headers={"Authorization": f"Bearer dep_live_{99:032d}",
                                               "X-Forwarded-For": "198.51.100.99"})
        assert locked.status_code == 429, locked.text
        assert locked.json()["error"]["code"] == "too_many_failed_attempts"
        assert int(locked.headers["retry-after"]) >= 1
        good = c.get("/v1/servers", headers={**bearer(keys["read-only"][1]), "X-Forwarded-For": SPOOFED})
        assert good.status_code == 429, good.text
    assert demo.stop()[0] == 0


def test_demo_refuses_malformed_framing_like_serve(demo: Demo) -> None:
    """The demo runs the gateway's guarded HTTP protocol: an absolute-form target (RFC 9112 section 3.2.2,
    which only a proxy must accept) gets the gateway's JSON 400 and a closed connection, as from `gateway
    serve` (tests/security/test_server_parsers.py), not the upstream's answer for the path inside it; so does
    a request head past limits.max_headers."""
    raw = raw_request(demo.port, b"GET http://x/v1/servers HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(raw) == 400, raw[:300]
    assert body_json(raw)["error"]["code"] == "invalid_request", raw[:300]
    assert b"\r\nconnection: close\r\n" in raw.lower(), raw[:300]
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(101))
    raw = raw_request(demo.port, b"GET /v1/servers HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
    assert status_of(raw) == 431, raw[:300]
    assert body_json(raw)["error"]["code"] == "headers_too_large", raw[:300]
    assert demo.stop()[0] == 0


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_demo_store_is_private_whatever_the_umask(umask: int) -> None:
    """The demo's temporary store is the same SQLite store and server secret as `gateway serve`'s: its directory
    0700, the database, its -wal and -shm files and the secret 0600, even under a permissive umask."""
    d = Demo(free_port(), umask=umask)
    try:
        store = _store(d.out)
        with httpx.Client(base_url=f"http://127.0.0.1:{d.port}", timeout=10, verify=False) as c:
            assert c.get("/v1/servers", headers=bearer(_keys(d.out)["read-only"][1])).status_code == 200
        modes = {p.name: f"{stat.S_IMODE(p.stat().st_mode):o}"
                 for p in (store.parent, store, Path(f"{store}-wal"), Path(f"{store}-shm"),
                           store.parent / "gateway.secret")}
        assert modes == {store.parent.name: "700", "keys.db": "600", "keys.db-wal": "600", "keys.db-shm": "600",
                         "gateway.secret": "600"}
        assert d.stop()[0] == 0
    finally:
        end_demo(d)


def test_demo_prints_a_dashboard_login_that_works(demo: Demo) -> None:
    """The deployERP guide starts in the dashboard: the demo makes an admin with a fresh password, prints it once,
    and that login gets a JWT from the gateway and a dashboard session in the browser's way (a form post)."""
    found = re.search(r"dashboard in a browser: (\S+), log in as (\S+) with the password (\S+)", demo.out)
    assert found, demo.out
    page, email, password = found.groups()
    assert page == f"{demo.base}/dashboard"
    answer = httpx.post(f"{demo.base}/v1/auth/login", json={"email": email, "password": password})
    assert answer.status_code == 200, answer.text
    assert answer.json()["token"].startswith("eyJ")  # deployERP's format: the fields themselves, no envelope
    wrong = httpx.post(f"{demo.base}/v1/auth/login", json={"email": email, "password": password + "x"})
    assert wrong.status_code == 401
    assert httpx.get(page, follow_redirects=True).status_code == 200
