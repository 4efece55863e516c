"""``gateway serve --workers N``: several uvicorn worker processes on one port, and what drifts between them.

uvicorn starts each worker as a fresh interpreter (multiprocessing "spawn") and can only hand it import
strings, so the app and the HTTP protocol class are named here (:func:`app_factory`, :data:`HttpProtocol`)
and each worker rebuilds them from the same configuration: the file named by ``GATEWAY_SERVE_CONFIG`` (set
by ``gateway serve`` for its workers), the ``GATEWAY_*`` environment, and the command-line flags passed on
as ``GATEWAY_LISTEN__*`` variables. Every worker opens its own store connection, cache and limiter.

What is per process, and so drifts between workers unless it lives in Redis:

* in-memory rate limits (``rate_limits.url: memory://``, the default with a SQLite store): each worker
  counts on its own, so a key gets up to N times its limit;
* the key cache: with a SQLite store there is no invalidation channel, so a revoked, rotated or changed key
  keeps working in the other workers until ``cache.ttl_seconds`` runs out.

:func:`drift_warnings` says so at start-up. The fix is ``store.url: redis://host:port/db`` (keys, limits and
invalidation shared), or at least ``rate_limits.url: redis://...`` for the limits.
"""

from __future__ import annotations

import os
from typing import Any

from gateway.config.settings import Settings, load_settings
from gateway.keys.backends import is_redis_url
from gateway.ratelimit.stage import limiter_url

CONFIG_ENV = "GATEWAY_SERVE_CONFIG"


def drift_warnings(settings: Settings) -> list[str]:
    """One message per thing that will differ between workers (empty with one worker, or all in Redis)."""
    workers = settings.listen.workers
    if workers <= 1:
        return []
    out = []
    if settings.rate_limits.enabled and limiter_url(settings).startswith("memory:"):
        out.append(
            f"listen.workers is {workers} but rate limits are kept in each worker's memory: every worker counts "
            f"on its own, so a key can make up to {workers} times its limit. Set rate_limits.url (or store.url) "
            "to redis://host:port/db to share one exact count."
        )
    if not is_redis_url(settings.store.url):
        out.append(
            f"listen.workers is {workers} with a SQLite store: a key revoked, rotated or changed through one "
            f"worker (or the CLI) keeps working in the others for up to cache.ttl_seconds "
            f"({settings.cache.ttl_seconds:g} s). Use store.url: redis://host:port/db for revocation in every "
            "worker within 1 s, or lower cache.ttl_seconds."
        )
    return out


def worker_environment(config_path: str | None, overrides: dict[str, Any]) -> dict[str, str]:
    """The variables that let a worker load exactly the settings the parent loaded."""
    env = {}
    if config_path is not None:
        env[CONFIG_ENV] = os.path.abspath(config_path)
    for name, value in overrides.get("listen", {}).items():
        env[f"GATEWAY_LISTEN__{name.upper()}"] = str(value)
    return env


def _worker_settings() -> Settings:
    path = os.environ.get(CONFIG_ENV)
    return load_settings(path)


def app_factory() -> Any:
    """The ASGI app of one worker (uvicorn ``factory=True``)."""
    import logging

    from gateway.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return create_app(_worker_settings())


def __getattr__(name: str) -> Any:
    # uvicorn imports the HTTP protocol by name in each worker: built here from that worker's settings.
    if name == "HttpProtocol":
        from gateway.doors.proxy.protocol import http_protocol

        return http_protocol(_worker_settings())
    raise AttributeError(name)
