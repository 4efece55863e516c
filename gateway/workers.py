"""``gateway serve --workers N``: several uvicorn worker processes on one port, and what drifts between them.

uvicorn starts each worker as a fresh interpreter (multiprocessing "spawn") and can only hand it import
strings, so the app and the HTTP protocol class are named here (:func:`app_factory`, :data:`HttpProtocol`)
and each worker rebuilds them from the same configuration: the file named by ``GATEWAY_SERVE_CONFIG`` (set
by ``gateway serve`` for its workers), the ``GATEWAY_*`` environment, and the command-line flags passed on
as ``GATEWAY_LISTEN__*`` variables. Every worker opens its own store connection, cache and limiter.

:func:`serve` runs uvicorn's supervisor (:class:`Supervisor`) with the gateway's own worker process
(:class:`WorkerProcess`), so that the workers behave as one ``gateway serve`` does:

* logging: each worker sets up ``ops.log_format`` (JSON lines by default, with the ``pid``) before it logs
  anything;
* SIGTERM to the supervisor: each worker drains as one process does (gateway/serving/shutdown.py): readiness 503,
  ``ops.drain_seconds`` of serving, in-flight requests finish, exit 0;
* SIGHUP to the supervisor: passed on to every worker, which reloads the policy where it runs
  (gateway/serving/reload.py). uvicorn's own answer to SIGHUP is a rolling restart (a new worker per old one);
  a reload in place keeps the caches, the in-memory limits and the connections, refuses a bad file the way
  one process does (the old policy keeps serving, ``gateway_config_reloads_total{result="failure"}``), and
  has nothing to drop;
* metrics: one ``/metrics`` over every worker (gateway/observability/multiprocess.py), through files in a private
  directory the supervisor makes before the workers start and removes when it exits.

What is per process, and so drifts between workers unless it lives in Redis:

* in-memory rate limits (``rate_limits.url: memory://``, the default with a SQLite store): each worker
  counts on its own, so a key gets up to N times its limit;
* the key cache: with a SQLite store there is no invalidation channel, so a revoked, rotated or changed key
  keeps working in the other workers until ``cache.ttl_seconds`` runs out.

:func:`drift_warnings` says so at start-up. The fix is ``store.url: redis://host:port/db`` (keys, limits and
invalidation shared), or ``store.url: postgresql://...`` (keys and invalidation shared) with
``rate_limits.url: redis://...`` for the limits.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import tempfile
from types import FrameType
from typing import TYPE_CHECKING, Any

from uvicorn.supervisors.multiprocess import Multiprocess, Process

from gateway.config.settings import ConfigError, Settings, load_settings
from gateway.keys.backends import is_postgres_url, is_redis_url
from gateway.ratelimit.stage import limiter_url
from gateway.serving.shutdown import GracefulServer

if TYPE_CHECKING:
    from socket import socket

    from uvicorn.server import Server

    from gateway.app import GatewayApp

CONFIG_ENV = "GATEWAY_SERVE_CONFIG"
# prometheus_client's own variable: set before a worker starts, it puts the worker's metric values in files
# there (gateway/observability/multiprocess.py).
METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"

log = logging.getLogger("uvicorn.error")


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
    if not (is_redis_url(settings.store.url) or is_postgres_url(settings.store.url)):
        out.append(
            f"listen.workers is {workers} with a SQLite store: a key revoked, rotated or changed through one "
            f"worker (or the CLI) keeps working in the others for up to cache.ttl_seconds "
            f"({settings.cache.ttl_seconds:g} s). Use store.url: redis://host:port/db or "
            "postgresql://user@host:5432/db for revocation in every worker within 1 s, or lower cache.ttl_seconds."
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


# --- in a worker ---------------------------------------------------------------------------------------------

_settings: Settings | None = None
_app: GatewayApp | None = None
_hup_early = False


def _worker_settings() -> Settings:
    """The settings of this worker, loaded once (the logging, the protocol and the app all need them)."""
    global _settings
    if _settings is None:
        _settings = _reload_settings()
    return _settings


def _reload_settings() -> Settings:
    """The configuration as it is on disk now: what a reload re-reads, as ``gateway serve`` in one process."""
    return load_settings(os.environ.get(CONFIG_ENV))


def app_factory() -> Any:
    """The ASGI app of one worker (uvicorn ``factory=True``)."""
    global _app
    from gateway.app import create_app

    _app = create_app(_worker_settings(), reload_settings=_reload_settings,
                      metrics_dir=os.environ.get(METRICS_ENV) or None)
    return _app


def __getattr__(name: str) -> Any:
    # uvicorn imports the HTTP protocol by name in each worker: built here from that worker's settings.
    if name == "HttpProtocol":
        from gateway.doors.proxy.protocol import http_protocol

        return http_protocol(_worker_settings())
    raise AttributeError(name)


def _start_draining() -> None:
    if _app is not None:
        _app.health.start_draining()


def _early_sighup(signum: int, frame: FrameType | None) -> None:
    # A SIGHUP that comes while the worker starts, before its app listens for one: remembered, applied once
    # the app is up (and not the default action, which would end the process).
    global _hup_early
    _hup_early = True


class WorkerServer(GracefulServer):
    """A worker's server: it drains on SIGTERM as ``gateway serve`` in one process does, and applies a SIGHUP
    that arrived while it was starting."""

    async def startup(self, sockets: list[socket] | None = None) -> None:
        await super().startup(sockets)
        if _hup_early and _app is not None:
            _app.reloader.reload("SIGHUP")


class WorkerProcess(Process):
    """uvicorn's worker process with the gateway's logging set up first and :class:`WorkerServer` inside."""

    @property
    def server(self) -> Server:
        if self._server is None:
            self._server = WorkerServer(self.config, _start_draining, _worker_settings().ops.drain_seconds)
        return self._server

    def target(self, sockets: list[socket] | None = None) -> None:  # in the worker
        from uvicorn.config import STARTUP_FAILURE

        from gateway.observability.logging import configure_logging

        signal.signal(signal.SIGHUP, _early_sighup)
        try:
            settings = _worker_settings()
        except ConfigError as exc:  # the file changed into a bad one since the supervisor read it
            configure_logging()
            log.error("worker not started: configuration error: %s", exc)
            sys.exit(STARTUP_FAILURE)  # the supervisor stops: every new worker would fail the same way
        configure_logging(settings.ops.log_format)
        super().target(sockets)


# --- in the supervisor ----------------------------------------------------------------------------------------


class Supervisor(Multiprocess):
    """uvicorn's supervisor (worker health checks, restarts, SIGTTIN/SIGTTOU) starting :class:`WorkerProcess`
    workers, and passing SIGHUP on to each of them instead of restarting them."""

    startup_failed = False  # a worker failed before it served: the supervisor stopped, serve() says so

    def _spawn(self) -> WorkerProcess:
        process = WorkerProcess(self.config, self.sockets)
        process.start()
        return process

    def init_processes(self) -> None:
        self.processes.extend(self._spawn() for _ in range(self.processes_num))

    def handle_ttin(self) -> None:
        log.info("Received SIGTTIN, increasing the number of processes.")
        self.processes_num += 1
        self.processes.append(self._spawn())

    def handle_hup(self) -> None:
        log.info("Received SIGHUP, passing it on to every worker: each reloads the policy in place.")
        for process in self.processes:
            if process.pid is not None and process.exitcode is None:
                try:
                    os.kill(process.pid, signal.SIGHUP)
                except ProcessLookupError:  # ended since: keep_subprocess_alive replaces it
                    pass

    def keep_subprocess_alive(self) -> None:
        """uvicorn's own policy: a worker that died or hangs is replaced; one that failed to start stops all."""
        from uvicorn.config import STARTUP_FAILURE

        if self.should_exit.is_set():
            return
        for idx, process in enumerate(self.processes):
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            process.kill()
            process.join()
            if process.exitcode == STARTUP_FAILURE:
                log.error(f"Child process [{process.pid}] failed to start, stopping the parent process.")
                self.startup_failed = True
                self.should_exit.set()
                return
            if self.should_exit.is_set():
                return
            log.info(f"Child process [{process.pid}] died")
            self.processes[idx] = self._spawn()


def serve(settings: Settings) -> int:
    """Bind the listening socket, run ``listen.workers`` workers until SIGTERM or SIGINT, then clean up; the
    exit status: 0, or uvicorn's 3 when a worker failed to start (as one process that fails to start).

    The metric files of the workers go to a directory of this run's own (mode 700, from ``mkdtemp``), made
    before the first worker starts and removed when the supervisor exits: counts of an earlier run must never
    be added to this one's."""
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE

    from gateway.serving.server import server_options

    # Each worker rebuilds the app and the guarded protocol from the same settings: uvicorn hands a worker
    # only import strings.
    config = uvicorn.Config("gateway.workers:app_factory", **server_options(
        settings, factory=True, workers=settings.listen.workers, http="gateway.workers:HttpProtocol"))
    metrics_dir = tempfile.mkdtemp(prefix="gateway-metrics-") if settings.ops.metrics_enabled else None
    if metrics_dir is not None:
        os.environ[METRICS_ENV] = metrics_dir
    else:
        os.environ.pop(METRICS_ENV, None)
    try:
        sock = config.bind_socket()
        supervisor = Supervisor(config, sockets=[sock])
        try:
            supervisor.run()
        finally:
            sock.close()
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return STARTUP_FAILURE if supervisor.startup_failed else 0
