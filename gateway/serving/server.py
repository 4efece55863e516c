"""The one uvicorn configuration of the gateway: ``gateway serve`` (one process or workers) and ``gateway demo``.

Every server the gateway runs is set up by :func:`server_options`, so none of them can fall back to one of
uvicorn's defaults that the gateway must not have:

* ``proxy_headers=False``: uvicorn's default rewrites the client address from ``X-Forwarded-For`` for any
  peer in ``forwarded_allow_ips`` (127.0.0.1 unless set), which would let anyone on the host claim any address
  past a key's IP allowlist and the failed-authentication lockout. The gateway resolves the client itself,
  trusting only ``trusted_proxies`` (gateway/network.py);
* the guarded httptools protocol with the ``limits`` section (gateway/doors/proxy/protocol.py), which also caps
  concurrency, so ``limit_concurrency`` stays unset;
* ``limits.keep_alive_seconds`` and ``ops.shutdown_timeout_seconds``; no ``Server`` or ``Date`` header, no
  access log of uvicorn's (the gateway writes its own), uvicorn's logging left to the caller.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.config.settings import Settings
from gateway.doors.proxy.protocol import http_protocol

if TYPE_CHECKING:
    import uvicorn


def server_options(settings: Settings, **changes: Any) -> dict[str, Any]:
    """uvicorn's keyword arguments (``uvicorn.Config`` and ``uvicorn.run`` take the same) for ``settings``.

    ``changes`` replaces single options where a caller differs in how it runs, never in what it allows: the
    demo's quieter logging, the workers' import strings for the app and the protocol."""
    options: dict[str, Any] = {
        "host": settings.listen.host,
        "port": settings.listen.port,
        "http": http_protocol(settings),
        "proxy_headers": False,
        "lifespan": "on",
        "access_log": False,
        "server_header": False,
        "date_header": False,
        "log_level": "info",
        "log_config": None,  # keep the handlers the command configured (JSON lines for serve)
        "timeout_keep_alive": settings.limits.keep_alive_seconds,  # a float: uvicorn passes it to call_later
        "timeout_graceful_shutdown": settings.ops.shutdown_timeout_seconds,  # a float: asyncio.wait_for
    }
    unknown = changes.keys() - _CHANGEABLE
    if unknown:
        raise TypeError(f"server_options: {', '.join(sorted(unknown))} cannot be changed per command")
    options.update(changes)
    return options


# What a command may set for itself; proxy_headers, limits and the rest are the same for every server.
_CHANGEABLE = frozenset({"http", "log_level", "log_config", "factory", "workers"})


def server_config(settings: Settings, app: Any, **changes: Any) -> uvicorn.Config:
    """The ``uvicorn.Config`` that serves ``app`` with :func:`server_options`."""
    import uvicorn

    return uvicorn.Config(app, **server_options(settings, **changes))
