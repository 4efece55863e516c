"""Graceful shutdown: uvicorn's server, with a drain before the listener closes and a clean exit status.

On SIGTERM (or a first Ctrl-C):

1. readiness answers 503 ``draining`` at once (within one 0.1 s tick), so load balancers stop sending;
2. for ``ops.drain_seconds`` (default 0: the Kubernetes manifest's preStop hook already waits) the gateway
   keeps accepting and serving as usual;
3. then uvicorn's shutdown: the listener closes (new connections are refused), idle keep-alive connections
   close, and in-flight requests, long streams included, get ``ops.shutdown_timeout_seconds`` to finish
   before they are cancelled;
4. the application's lifespan shutdown flushes batched usage writes and closes the upstream sessions, the
   key store and Redis (gateway/app.py).

uvicorn re-raises the signal it caught once it is done, so the process would die *by* SIGTERM (exit status
-15) after a clean shutdown; this server does not, and exits 0. A second Ctrl-C still forces the exit.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from types import FrameType

import uvicorn


class GracefulServer(uvicorn.Server):
    """``uvicorn.Server`` with ``on_draining`` called first and the listener kept open ``drain_seconds``."""

    def __init__(self, config: uvicorn.Config, on_draining: Callable[[], None], drain_seconds: float = 0.0) -> None:
        super().__init__(config)
        self._on_draining = on_draining
        self._drain = drain_seconds
        self._term_at: float | None = None
        self._draining = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: only set flags here; the loop acts on them in on_tick (every 0.1 s).
        if self._term_at is not None:
            if sig == signal.SIGINT:
                self.force_exit = True
            return
        self._term_at = time.monotonic()
        if self._drain <= 0:
            self.should_exit = True

    async def on_tick(self, counter: int) -> bool:
        if self._term_at is not None:
            if not self._draining:
                self._draining = True
                self._on_draining()
            if time.monotonic() - self._term_at >= self._drain:
                self.should_exit = True
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list | None = None) -> None:  # type: ignore[type-arg]
        if not self._draining:  # should_exit was set before a tick saw the signal
            self._draining = True
            self._on_draining()
        await super().shutdown(sockets)
