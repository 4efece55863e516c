"""Hot reload: on SIGHUP, and when the policy file changes, re-read, validate and swap.

What is reloaded:

* the policy file (``policies``), compiled exactly as at start-up (the management API's internal routes are
  added again);
* when the gateway was started from a configuration file: which policy file to use (``policies``),
  ``debug_headers``, ``ops.access_log`` and the ``jwt`` section (a new verifier is built and swapped in; a
  JWKS URL that did not change keeps the keys fetched). Other settings differ only after a restart; a reload
  that finds them changed says so in its log event and keeps the running values.

The swap is one attribute assignment per holder (the pipeline and the management API), made between two
awaits on the event loop: a request that already matched its route finishes under the old policy (it holds
the :class:`~gateway.policy.rules.Route`), every later request sees the new one. A file that does not load or
validate changes nothing: the old policy keeps serving, the reason is logged as a ``reload_failed`` event and
``gateway_config_reloads_total{result="failure"}`` counts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from gateway.admin.api import build_policy
from gateway.config.settings import ConfigError, Settings
from gateway.doors.assembly import build_verifier
from gateway.gate import Verifier
from gateway.observability.logging import event
from gateway.observability.metrics import Metrics
from gateway.policy.rules import Policy, PolicyError, policy_path

log = logging.getLogger("gateway.reload")

# The settings a reload applies; any other change is reported and waits for a restart.
RELOADABLE = ("policies", "debug_headers", "ops.access_log", "jwt")


def _restart_only(old: Settings, new: Settings) -> list[str]:
    """Settings (sections, or ``ops`` fields) that differ outside :data:`RELOADABLE`."""
    changed: list[str] = []
    for name in type(old).model_fields:
        if name in ("base_dir", "policies", "debug_headers", "secret", "jwt"):
            continue
        if name == "ops":
            changed += [f"ops.{f}" for f in type(old.ops).model_fields
                        if f != "access_log" and getattr(old.ops, f) != getattr(new.ops, f)]
        elif getattr(old, name) != getattr(new, name):
            changed.append(name)
    return changed


class Reloadable(Protocol):
    """What a reload needs of the app it reloads (gateway.app.GatewayApp)."""

    settings: Settings
    metrics: Metrics | None

    def swap_policy(self, policy: Policy, settings: Settings) -> None:
        """Serve ``policy`` and the reloadable ``settings`` from now on."""

    def swap_jwt(self, verifier: Verifier | None, settings: Settings) -> None:
        """Serve ``verifier``, built from the reloaded ``settings.jwt``, from now on."""


class Reloader:
    """Reloads the policy (and the reloadable settings) of one :class:`~gateway.app.GatewayApp`."""

    def __init__(self, app: Reloadable, load_settings: Callable[[], Settings] | None = None) -> None:
        self.app = app
        self.settings = app.settings
        # What the management handlers and the pipeline were built for: it changes only at a restart.
        self._management = app.settings.management
        self._load_settings = load_settings
        self._task: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None
        self._sighup = False
        self.reloads = 0

    def reload(self, trigger: str) -> bool:
        """Re-read and swap; True when the new policy is in use. Never raises for a bad file."""
        metrics = self.app.metrics
        try:
            settings = self._load_settings() if self._load_settings is not None else self.settings
            policy = build_policy(settings, self._management)
            # A bad jwt section refuses the whole reload, before anything is swapped.
            jwt_changed = settings.jwt != self.settings.jwt
            verifier = build_verifier(settings) if jwt_changed else None
        except (PolicyError, ConfigError, OSError, ValueError) as exc:
            event(log, "reload_failed", f"reload refused, the running policy stays: {exc}", logging.ERROR,
                  trigger=trigger, reason=str(exc))
            if metrics is not None:
                metrics.reload(False)
            return False
        restart = _restart_only(self.settings, settings)
        self.app.swap_policy(policy, settings)
        if jwt_changed:
            self.app.swap_jwt(verifier, settings)
        self.settings = settings
        self.reloads += 1
        if metrics is not None:
            metrics.reload(True)
        event(log, "reload", f"policy reloaded from {policy.source} ({len(policy.routes)} routes)",
              trigger=trigger, source=str(policy.source), routes=len(policy.routes),
              restart_needed_for=restart or None, jwt_reloaded=jwt_changed or None)
        return True

    # --- triggers ------------------------------------------------------------------------------------------------

    def start(self) -> None:
        """SIGHUP handler (main thread only) and, with ``ops.watch_policy``, the file watcher task."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
            self._sighup = True
        if self.settings.ops.watch_policy:
            self._stop = asyncio.Event()
            self._task = asyncio.create_task(self._watch(), name="policy-watcher")

    def _on_sighup(self) -> None:
        self.reload("SIGHUP")

    async def _watch(self) -> None:
        from watchfiles import Change, awatch

        assert self._stop is not None
        while not self._stop.is_set():
            path = Path(policy_path(self.settings)).resolve()
            watched = self.settings.policies

            def only_policy(change: Change, changed: str, target: Path = path) -> bool:
                return Path(changed).resolve() == target and change != Change.deleted

            try:
                # The directory is watched, not the file: editors and `kubectl` ConfigMap updates replace
                # the file (a new inode), which a watch on the file itself would miss.
                async for _changes in awatch(path.parent, watch_filter=only_policy, stop_event=self._stop,
                                             debounce=300, step=50, recursive=False):
                    self.reload("file changed")
                    if self.settings.policies != watched:
                        break  # the configuration now names another file: watch that one
            except Exception as exc:  # noqa: BLE001 - the watcher is a convenience; SIGHUP still works
                event(log, "reload_watch_failed", f"policy file watcher stopped: {exc.__class__.__name__}: {exc}",
                      logging.WARNING)
                return

    async def stop(self) -> None:
        if self._sighup:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            self._sighup = False
        if self._stop is not None:
            self._stop.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 2.0)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
            self._task = None

