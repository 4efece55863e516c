"""Core behaviour, end to end: `gateway demo` as a user runs it: it starts, prints three keys and curl lines that work
as printed, and Ctrl-C (SIGINT) stops it cleanly and removes its temporary store.

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
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.core import bearer
from tests.support.procs import PYTHON, free_port, wait_port


class Demo:
    def __init__(self, port: int) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        self.port = port
        self.proc = subprocess.Popen([PYTHON, "-m", "gateway", "demo", "--port", str(port)], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=env)
        assert self.proc.stdout is not None
        self.out = ""
        deadline = time.monotonic() + 30
        while "Press Ctrl-C" not in self.out:
            line = self.proc.stdout.readline()
            if not line or time.monotonic() > deadline:
                raise AssertionError(f"the demo did not start:\n{self.out}")
            self.out += line
        wait_port(port, self.proc)

    def stop(self, sig: int = signal.SIGINT) -> tuple[int, str]:
        """SIGINT, as Ctrl-C sends (or ``sig``): returns the exit status and the rest of the output."""
        self.proc.send_signal(sig)
        try:
            rest, _ = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rest, _ = self.proc.communicate()
            raise AssertionError(f"the demo did not stop on SIGINT:\n{self.out}{rest}") from None
        self.out += rest
        return self.proc.returncode, rest


@pytest.fixture
def demo() -> Iterator[Demo]:
    d = Demo(free_port())
    yield d
    if d.proc.poll() is None:
        # A test failed before stopping it: SIGTERM, so the demo still removes its temporary store.
        d.proc.terminate()
        try:
            d.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            d.proc.kill()
            d.proc.communicate()


def _keys(out: str) -> dict[str, tuple[str, str]]:
    found = re.findall(r"^\s+(read-only|deployment|admin)\s+(key_[0-9A-Za-z]{12})\s+(dep_live_[0-9A-Za-z]{32})\s",
                       out, re.M)
    return {kind: (key_id, value) for kind, key_id, value in found}


def test_demo_keys_work_and_ctrl_c_stops_cleanly(demo: Demo) -> None:
    keys = _keys(demo.out)
    assert set(keys) == {"read-only", "deployment", "admin"}, demo.out
    store = Path(re.search(r"^store: (\S+)", demo.out, re.M).group(1))  # type: ignore[union-attr]
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
    store = Path(re.search(r"^store: (\S+)", demo.out, re.M).group(1))  # type: ignore[union-attr]
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
