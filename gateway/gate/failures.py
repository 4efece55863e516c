"""Failed authentications per client address: past a threshold, the address cools down (429).

:class:`FailureGuard` counts them per address and in total, in bounded memory; the gate asks it before
authenticating and tells it of each failure.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from typing import Any

log = logging.getLogger("gateway.security")


class FailureGuard:
    """Failed authentications per client address, in one-minute windows, in bounded memory.

    Past ``per_minute`` failures in a window an address is refused (429) for ``cooldown`` seconds and one
    structured log event is written; past ``global_per_minute`` failures from all addresses together in a
    window one alert event is written (nobody is blocked for it: that would let an attacker lock everyone
    out). ``failures_total`` and ``blocks_total`` are counters for the metrics endpoint.

    Memory: at most ``max_tracked`` windows and as many blocks; the least recently failing address is
    forgotten first. Single-threaded (the event loop), so no locking.
    """

    WINDOW = 60.0

    def __init__(self, per_minute: int, cooldown: float, global_per_minute: int, max_tracked: int) -> None:
        self.enabled = per_minute > 0
        self.per_minute = per_minute
        self.cooldown = cooldown
        self.global_per_minute = global_per_minute
        self.max_tracked = max_tracked
        self.failures_total = 0
        self.blocks_total = 0
        self.refused_total = 0
        self.blocked: dict[str, float] = {}  # address -> time the block ends
        self._windows: OrderedDict[str, list[float]] = OrderedDict()  # address -> [window start, count]
        self._global = [0.0, 0]

    def retry_after(self, address: str, now: float) -> float | None:
        """Seconds left of the address's block, or None when it is not blocked."""
        until = self.blocked.get(address)
        if until is None:
            return None
        if until <= now:
            del self.blocked[address]
            return None
        self.refused_total += 1
        return until - now

    def failure(self, address: str, now: float) -> None:
        """Count one failed authentication from ``address``."""
        self.failures_total += 1
        g = self._global
        if now - g[0] >= self.WINDOW:
            g[0], g[1] = now, 0
        g[1] += 1
        if g[1] == self.global_per_minute:
            _event("auth_failures_global", failures=g[1], window_seconds=int(self.WINDOW))
        if not self.enabled:
            return
        window = self._windows.get(address)
        if window is None or now - window[0] >= self.WINDOW:
            window = [now, 0]
        self._windows[address] = window
        self._windows.move_to_end(address)
        while len(self._windows) > self.max_tracked:
            self._windows.popitem(last=False)
        window[1] += 1
        if window[1] >= self.per_minute and address not in self.blocked:
            if len(self.blocked) >= self.max_tracked:
                self.blocked.pop(next(iter(self.blocked)))
            self.blocked[address] = now + self.cooldown
            self.blocks_total += 1
            del self._windows[address]
            _event("auth_failures_blocked", client=address, failures=int(window[1]),
                   cooldown_seconds=self.cooldown)


def _event(name: str, **fields: Any) -> None:
    """One JSON object per line: what log shippers parse. Never carries a credential."""
    log.warning(json.dumps({"event": name, **fields}, separators=(",", ":")))
