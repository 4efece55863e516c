"""A background task owned by a component: started with the app, cancelled and awaited when it stops.

The key-invalidation listeners (Redis, PostgreSQL), the usage flusher, the rotation scheduler and the metrics
publisher of the workers each run one loop beside the requests; :class:`Background` is how each holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any


class Background:
    """At most one task, named ``name``: :meth:`start` makes it (again only after :meth:`stop`), :meth:`stop`
    cancels it and waits until it has ended."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._task: asyncio.Task[Any] | None = None

    def start(self, run: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(run(), name=self.name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
