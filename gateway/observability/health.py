"""Liveness and readiness probes: answered before the auth gate, without a credential.

``GET {ops.healthz_path}`` (default ``/healthz``): 200 ``{"status": "ok"}`` while the process serves at all.
It checks nothing else on purpose: a liveness probe that fails because Redis is down gets a healthy process
restarted, which cures nothing.

``GET {ops.readyz_path}`` (default ``/readyz``): can this process do its job? 200 ``{"status": "ready",
"checks": {...}}`` when every readiness check passes: the key store answers (and, for a SQLite store, its
database file is still the one that was opened), a policy is loaded, and the rate limiter's Redis answers when
one is used. A check the gateway can serve without is *soft*: when only soft checks fail the answer is still
200, with ``{"status": "degraded", "reason": "...", "checks": {...}}``. That is the rate limiter's Redis under
``rate_limits.on_store_error: allow`` or ``local`` (requests go on, unlimited or limited in memory); under
``deny`` every limited request would get a 503, so there it is a hard check. Any hard check failing: 503
``{"status": "unavailable", "reason": "...", "checks": {...}}``; and 503 ``{"status": "draining"}`` from the
moment shutdown begins, so a load balancer stops sending new requests while the in-flight ones finish.

A Redis *key store* that does not answer is always a hard failure: keys still in the cache keep working for
the rest of their ``cache.ttl_seconds``, but a key not in it cannot be checked (503 ``store_unavailable``),
so the gateway cannot serve new callers and a load balancer should prefer another instance.

:attr:`Health.state` keeps the last answer (``ready``, ``degraded``, ``unavailable`` or ``draining``) for the
``gateway_readiness`` gauge (gateway/observability/metrics.py).

Each check is bounded by ``ops.readyz_timeout_seconds``. Reasons are short and fixed (no path, no key); the
detail goes to the log, once per change of state.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger("gateway.health")

# A check returns None when all is well, else a short reason for the probe's answer.
Check = Callable[[], Awaitable[str | None]]

_JSON_HEADERS = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
_METHODS = frozenset({"GET", "HEAD"})


def _body(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


async def _answer(scope: Scope, send: Send, status: int, body: bytes,
                  extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


class Health:
    """The two probe endpoints, as pure-ASGI callables in :attr:`routes` (path -> app)."""

    def __init__(self, healthz_path: str, readyz_path: str, checks: Mapping[str, Check],
                 timeout: float = 2.0, soft: frozenset[str] = frozenset()) -> None:
        self._checks = dict(checks)
        self._soft = soft  # the checks whose failure leaves the gateway serving: "degraded", not "unavailable"
        self._timeout = timeout
        self._draining = False
        self._last: tuple[str, str | None] = ("ready", None)
        self.state: str | None = None  # the last answer's status; None before the first
        self.routes: dict[str, ASGIApp] = {healthz_path: self.healthz, readyz_path: self.readyz}
        # Precomputed: the liveness answer never changes.
        self._ok = _body({"status": "ok"})
        self._draining_body = _body({"status": "draining", "reason": "the gateway is shutting down"})
        self._not_allowed = _body({"status": "error", "reason": "use GET or HEAD"})

    @property
    def draining(self) -> bool:
        return self._draining

    def start_draining(self) -> None:
        """From now on readiness answers 503 ``draining`` (called when shutdown begins)."""
        if not self._draining:
            log.info("draining: readiness now answers 503")
        self._draining = True
        self.state = "draining"

    async def healthz(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] not in _METHODS:
            await _answer(scope, send, 405, self._not_allowed, [(b"allow", b"GET, HEAD")])
            return
        await _answer(scope, send, 200, self._ok)

    async def readyz(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] not in _METHODS:
            await _answer(scope, send, 405, self._not_allowed, [(b"allow", b"GET, HEAD")])
            return
        if self._draining:
            await _answer(scope, send, 503, self._draining_body)
            return
        status, doc = await self.readiness()
        await _answer(scope, send, status, _body(doc))

    async def readiness(self) -> tuple[int, dict[str, Any]]:
        """Run every check (concurrently, each bounded in time): the status code and the JSON document."""
        names = list(self._checks)
        results = await asyncio.gather(*(self._run(n) for n in names))
        checks = {n: (r or "ok") for n, r in zip(names, results, strict=True)}
        failed = [(n, r) for n, r in zip(names, results, strict=True) if r is not None]
        if self._draining:  # shutdown began while the checks ran
            self.state = "draining"
            return 503, {"status": "draining", "reason": "the gateway is shutting down", "checks": checks}
        reason = "; ".join(f"{n}: {r}" for n, r in failed) or None
        state = "ready" if not failed else "degraded" if all(n in self._soft for n, _ in failed) else "unavailable"
        if (state, reason) != self._last:
            if state == "ready":
                log.info("ready again")
            elif state == "degraded":
                log.warning("degraded: %s (still serving)", reason)
            else:
                log.warning("not ready: %s", reason)
            self._last = (state, reason)
        self.state = state
        if state == "ready":
            return 200, {"status": "ready", "checks": checks}
        return (200 if state == "degraded" else 503), {"status": state, "reason": reason, "checks": checks}

    async def _run(self, name: str) -> str | None:
        try:
            return await asyncio.wait_for(self._checks[name](), self._timeout)
        except TimeoutError:
            return f"no answer within {self._timeout:g} s"
        except Exception as exc:  # noqa: BLE001 - a failing check is an answer, never a 500
            log.warning("readiness check %s raised %s", name, exc.__class__.__name__)
            return "check failed"


# --- the checks --------------------------------------------------------------------------------------------------


def _file_identity(path: os.PathLike[str] | str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def store_check(store: Any) -> Check:
    """The key store answers ``ping()``; a file-backed store's file is still the one it opened.

    The second part matters for SQLite: a connection keeps reading and writing a database whose file (or
    directory) was deleted, so a ping passes while every change is written to a file no restart will see.
    """
    path = getattr(store, "path", None)
    opened = _file_identity(path) if path is not None else None

    async def check() -> str | None:
        try:
            await store.ping()
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready"; the detail is logged
            log.warning("readiness: the key store does not answer: %s", exc)
            return "the key store does not answer"
        if opened is not None:
            now = _file_identity(path)  # type: ignore[arg-type]
            if now is None:
                return "the key store's database file is gone"
            if now != opened:
                return "the key store's database file was replaced"
        return None

    return check


def policy_check(current: Callable[[], Any]) -> Check:
    """A policy with at least one route is loaded (``current`` returns the one in use now)."""

    async def check() -> str | None:
        policy = current()
        if policy is None or not getattr(policy, "routes", None):
            return "no policy is loaded"
        return None

    return check


def limiter_check(limiter: Any) -> Check | None:
    """The rate limiter's backend answers, for limiters that have one to ask (Redis); else no check."""
    ping = getattr(limiter, "ping", None)
    if ping is None:
        return None

    async def check() -> str | None:
        try:
            await ping()
        except Exception as exc:  # noqa: BLE001
            log.warning("readiness: the rate limiter's Redis does not answer: %s", exc.__class__.__name__)
            return "the rate limiter's Redis does not answer"
        return None

    return check


def readiness_checks(store: Any, policy: Callable[[], Any], limiter: Any = None) -> dict[str, Check]:
    """The gateway's readiness checks, by name: ``store``, ``policy`` and, with Redis, ``rate_limiter``."""
    checks: dict[str, Check] = {"store": store_check(store), "policy": policy_check(policy)}
    rl = limiter_check(limiter) if limiter is not None else None
    if rl is not None:
        checks["rate_limiter"] = rl
    return checks


def soft_checks(on_store_error: str) -> frozenset[str]:
    """The checks the gateway serves without: the rate limiter's Redis, unless ``on_store_error`` is ``deny``
    (then every limited request would be refused while it is away)."""
    return frozenset() if on_store_error == "deny" else frozenset({"rate_limiter"})
