"""Keys from the identity provider's JWKS URL (``jwt.jwks_url``), for :class:`gateway.gate.jwt.JWTVerifier`.

The verifier is called on the hot path and never waits for the network: it reads the key set this fetcher last
handed it (:meth:`JWTVerifier.set_remote_keys`, one assignment). The fetcher

* fetches the URL at start-up (a provider away then is logged; tokens are refused until a fetch lands), then
  every ``jwt.jwks_refresh_seconds`` in the background (every ``jwt.jwks_min_refresh_seconds`` while fetches
  fail), so keys the provider rotates in are known before the first token signed with them, usually;
* fetches again when a token names a ``kid`` the set does not hold (:meth:`refresh`, which the gate awaits for
  that request only), but never twice within ``jwt.jwks_min_refresh_seconds``: a flood of tokens with made-up
  key ids costs the provider at most one request per interval, and requests arriving during a fetch wait for
  that one;
* bounds each fetch (``jwt.jwks_timeout_seconds`` for connect and read together, 1 MiB of body) and, when a
  fetch fails (provider down, an error status, a document with no usable key), keeps serving the keys it has:
  the failure is logged as a ``jwks_fetch_failed`` event and counted in
  ``gateway_jwks_fetches_total{result="failure"}``.

Only this module talks HTTP; the gate has no transport (the import contracts in pyproject.toml).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable

import aiohttp

from gateway.config.settings import JWTSettings
from gateway.gate.jwt import JWKSError, JWTVerifier, parse_jwks
from gateway.observability.logging import event
from gateway.observability.metrics import Metrics

log = logging.getLogger("gateway.jwks")

MAX_DOCUMENT = 1 << 20  # a JWKS is a few kilobytes; more is not a key set


class JWKSFetcher:
    """Fetches ``jwt.jwks_url`` for one verifier (or, after a reload that kept the URL, its successor)."""

    def __init__(self, verifier: JWTVerifier, settings: JWTSettings, metrics: Metrics | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        assert settings.jwks_url is not None
        self.url = settings.jwks_url
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.verifier = verifier
        self.fetches = 0  # attempts, whatever their result
        self._last_attempt: float | None = None
        self._inflight: asyncio.Task[bool] | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._last_ok = False
        if metrics is not None:
            metrics.jwks.setdefault("success", 0)
            metrics.jwks.setdefault("failure", 0)
        verifier.set_refresh(self.refresh)

    def same_source(self, settings: JWTSettings) -> bool:
        """Whether a reload to ``settings`` can keep this fetcher (and the keys it fetched)."""
        s = self.settings
        return (settings.jwks_url, settings.jwks_refresh_seconds, settings.jwks_min_refresh_seconds,
                settings.jwks_timeout_seconds) == (s.jwks_url, s.jwks_refresh_seconds, s.jwks_min_refresh_seconds,
                                                   s.jwks_timeout_seconds)

    def adopt(self, verifier: JWTVerifier) -> None:
        """Serve ``verifier`` (a reload's) from now on, with the keys already fetched."""
        verifier.set_remote_keys(self.verifier.remote_keys)
        self.verifier.set_refresh(None)
        verifier.set_refresh(self.refresh)
        self.verifier = verifier

    # --- lifecycle -------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """The first fetch (bounded by the timeout; a failure is logged, not raised), then the background loop."""
        await self._fetch_once()
        self._loop_task = asyncio.create_task(self._every_interval(), name="jwks-refresh")

    async def stop(self) -> None:
        for task in (self._loop_task, self._inflight):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._loop_task = self._inflight = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        self.verifier.set_refresh(None)

    async def _every_interval(self) -> None:
        while True:
            wait = self.settings.jwks_refresh_seconds if self._last_ok else self.settings.jwks_min_refresh_seconds
            await asyncio.sleep(wait)
            await self._fetch_once()

    # --- fetching --------------------------------------------------------------------------------------------------

    async def refresh(self) -> bool:
        """One fetch for a token with an unknown ``kid``: joins a fetch in progress, starts one when the last
        attempt is at least ``jwks_min_refresh_seconds`` old, else does nothing. True when the key set changed."""
        if self._inflight is None or self._inflight.done():
            last = self._last_attempt
            if last is not None and self.clock() - last < self.settings.jwks_min_refresh_seconds:
                return False
            self._inflight = asyncio.ensure_future(self._fetch())
        # shield: a client that goes away does not cancel the fetch other requests wait for
        return await asyncio.shield(self._inflight)

    async def _fetch_once(self) -> None:
        if self._inflight is not None and not self._inflight.done():
            await asyncio.shield(self._inflight)
            return
        self._inflight = asyncio.ensure_future(self._fetch())
        await asyncio.shield(self._inflight)

    async def _fetch(self) -> bool:
        self._last_attempt = self.clock()
        self.fetches += 1
        try:
            keys = parse_jwks(await self._download(), strict=False)
        except (aiohttp.ClientError, TimeoutError, JWKSError, ValueError, UnicodeDecodeError) as exc:
            self._last_ok = False
            self._count("failure")
            name = exc.__class__.__name__
            reason = str(exc) if isinstance(exc, JWKSError | _Refused) else f"{name}: {exc}" if str(exc) else name
            event(log, "jwks_fetch_failed", f"JWKS fetch from {self.url} failed ({reason}); serving the "
                  f"{len(self.verifier.remote_keys)} keys fetched before", logging.WARNING, url=self.url,
                  reason=reason, keys=len(self.verifier.remote_keys))
            return False
        self._last_ok = True
        self._count("success")
        changed = self.verifier.set_remote_keys(keys)
        if changed:
            event(log, "jwks_keys", f"JWKS from {self.url}: {len(keys)} keys", url=self.url,
                  kids=[kid for kid, _, _ in keys])
        return changed

    async def _download(self) -> object:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=self.settings.jwks_timeout_seconds)
            self._session = aiohttp.ClientSession(timeout=timeout, headers={"Accept": "application/json"})
        async with self._session.get(self.url, allow_redirects=False) as resp:
            if resp.status != 200:
                raise _Refused(f"HTTP {resp.status}")
            body = await resp.content.read(MAX_DOCUMENT + 1)
            if len(body) > MAX_DOCUMENT:
                raise _Refused(f"document larger than {MAX_DOCUMENT} bytes")
        try:
            return json.loads(body.decode("utf-8"))
        except ValueError:
            raise _Refused("not JSON") from None

    def _count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.jwks[result] = self.metrics.jwks.get(result, 0) + 1


class _Refused(ValueError):
    """The provider answered, but not with a JWKS document."""
