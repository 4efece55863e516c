"""Helpers for the end-to-end tests of the gateway core (tests/e2e/test_core_*.py).

Everything here works on real processes started by tests/support/procs.py: module-scoped gateways (so the
slow part, starting ``gateway serve``, is paid once per module), error-shape checks for both platforms'
formats, the memory of a process read from /proc, and the check that no key value reached a log.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import httpx

from tests.support.procs import PYTHON, Gateway

DEPLOYERP_MESSAGES = {
    "authentication_required": 401,
    "invalid_token": 401,
    "expired_token": 401,
    "insufficient_permissions": 403,
    "ip_restricted": 403,
    "upstream_unavailable": 502,
    "upstream_timeout": 504,
}


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def header(record: Mapping[str, Any], name: str) -> list[str]:
    """Every value of header ``name`` (any case) in an upstream record, in wire order."""
    low = name.lower()
    return [v for k, v in record["headers"] if k.lower() == low]


def assert_deployerp_error(resp: httpx.Response, code: str) -> None:
    """The deployERP error body, exactly: {"error": {"code", "message", "status"}} and nothing else."""
    status = DEPLOYERP_MESSAGES[code]
    assert resp.status_code == status, (resp.status_code, resp.text)
    assert resp.headers["content-type"].startswith("application/json")
    doc = resp.json()
    assert set(doc) == {"error"}, doc
    assert set(doc["error"]) == {"code", "message", "status"}, doc
    assert doc["error"]["code"] == code
    assert doc["error"]["status"] == status
    assert isinstance(doc["error"]["message"], str) and doc["error"]["message"]
    if status == 401:
        assert resp.headers["www-authenticate"].startswith("Bearer")
    else:
        assert "www-authenticate" not in resp.headers


def assert_deployally_error(resp: httpx.Response, status: int) -> None:
    """The DeployAlly error body, exactly: {"success": false, "error": {"code", "message"}}."""
    code = {401: "UNAUTHORIZED", 403: "FORBIDDEN"}[status]
    assert resp.status_code == status, (resp.status_code, resp.text)
    assert resp.headers["content-type"].startswith("application/json")
    doc = resp.json()
    assert set(doc) == {"success", "error"}, doc
    assert doc["success"] is False
    assert set(doc["error"]) == {"code", "message"}, doc
    assert doc["error"]["code"] == code
    assert isinstance(doc["error"]["message"], str) and doc["error"]["message"]


def bearer_error(resp: httpx.Response) -> str | None:
    """The RFC 6750 ``error`` attribute of the WWW-Authenticate challenge, or None when it has none."""
    challenge = resp.headers["www-authenticate"]
    assert challenge.split(" ", 1)[0] == "Bearer", challenge
    for part in challenge[len("Bearer"):].split(","):
        name, _, value = part.strip().partition("=")
        if name == "error":
            return value.strip('"')
    return None


def assert_no_secret(text: str, values: Iterable[str]) -> None:
    """No key value (nor its random body) appears in ``text``."""
    for value in values:
        assert value not in text, "a key value leaked"
        body = value.split("_")[-1]
        assert body not in text, "the random part of a key value leaked"


def rss_kb(pid: int) -> int:
    """Resident set size of a process in KiB, from /proc/<pid>/status (psutil is not installed here)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


class RSSSampler:
    """Samples a process's RSS every ``interval`` seconds in a thread, to catch a peak while a body streams."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(rss_kb(self.pid))
            except (OSError, AssertionError):
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> RSSSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    @property
    def peak(self) -> int:
        return max(self.samples)


def ipv6_loopback() -> bool:
    """Whether ::1 can be bound here (containers sometimes have IPv6 disabled)."""
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def free_port6() -> int:
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        return int(s.getsockname()[1])


def wait_port6(port: int, proc: subprocess.Popen[Any], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on [::1]:{port}")
        try:
            with socket.create_connection(("::1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on [::1]:{port} after {timeout} s")


class Gateway6(Gateway):
    """A real `gateway serve` listening on the IPv6 loopback ::1 only."""

    def __init__(self, work: Path, upstream_url: str, settings: Mapping[str, Any] | None = None) -> None:
        port = free_port6()
        merged = {**(settings or {}), "listen": {"host": "::1", "port": port}}
        super().__init__(work, upstream_url, merged, start=False)
        self.port = port
        self.url = f"http://[::1]:{port}"
        self.start()

    def start(self) -> None:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "gateway", "serve", "--config", str(self.config)],
            stdout=self._log, stderr=subprocess.STDOUT, env=self.env, cwd=self.work,
        )
        try:
            wait_port6(self.port, self.proc)
        except Exception:
            self._log.close()
            raise RuntimeError(f"gateway did not start:\n{self.log()}") from None


def store_key(g: Gateway, name: str = "k", permissions: str = "servers:read", *extra: str) -> dict[str, Any]:
    """Create a key straight in ``g``'s real SQLite store, as ``g.create_key`` does through the CLI.

    Same store file, same server secret, same validation (the options as a gateway.admin.models.KeyCreate, then
    gateway.keys.service.create_key), same answer (the key as the API shows it, plus ``value``), but without
    starting a CLI process (~0.5 s each). Tests whose
    subject is the CLI use ``g.create_key``; tests that only need keys use this. ``extra`` takes the CLI's
    ``--allow-ip CIDR`` (repeatable), ``--expires-at ISO`` and ``--env live|test``.
    """
    import asyncio
    import json

    from gateway.admin.models import key_models
    from gateway.config.settings import load_settings, resolve_path
    from gateway.keys.backends import open_store
    from gateway.keys.hashing import load_pepper
    from gateway.keys.record import utcnow
    from gateway.keys.service import create_key
    from gateway.policy.rules import load_policy

    allow: list[str] = []
    opts: dict[str, str] = {}
    for flag, value in zip(extra[::2], extra[1::2], strict=True):
        if flag == "--allow-ip":
            allow.append(value)
        elif flag in ("--expires-at", "--env"):
            opts[flag] = value
        else:
            raise AssertionError(f"store_key does not take {flag}")
    settings = load_settings(g.config, environ=g.env, required=True)
    pepper, _ = load_pepper(settings)
    policy = load_policy(resolve_path(settings, settings.policies))

    models = key_models(tuple(settings.rate_limits.tiers))
    options = {"name": name, "permissions": [p for p in permissions.split(",") if p], "ip_whitelist": allow,
               "environment": opts.get("--env", "live"), "expires_at": opts.get("--expires-at")}
    body = models.create.model_validate_json(json.dumps(options))

    async def make() -> dict[str, Any]:
        store = open_store(settings)
        try:
            value, record = await create_key(store, pepper, settings.key_format, **body.model_dump(exclude_unset=True),
                                             policy=policy)
        finally:
            await store.close()
        return {**models.key.of(record, utcnow()).doc(), "value": value}

    return asyncio.run(make())
