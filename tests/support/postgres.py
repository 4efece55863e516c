"""A real PostgreSQL server for the tests, made with ``initdb`` in a temporary directory and run with ``pg_ctl``
on a free loopback port (trust authentication, its socket in its own directory), never the machine's own
server on 5432.

PostgreSQL refuses to run as root. When the tests run as root (CI containers), ``initdb`` and ``pg_ctl`` run as
the ``postgres`` user (``runuser -u postgres --``; Debian's postgresql package makes that user) in a directory
under /tmp owned by that user: pytest's own temporary directories are mode 700 under root's, where that user
cannot reach. The directory is removed when the server stops.

:func:`fresh_db` gives each test a database of its own on the session's server.
"""

from __future__ import annotations

import asyncio
import glob
import itertools
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import asyncpg

from tests.support.procs import free_port

USER = "gateway"  # the database superuser initdb makes (trust auth on loopback: no password)
_numbers = itertools.count(1)


def _binary(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)),
                                       None)
    if found is None:
        raise RuntimeError(f"{name} is not installed (.ci/run installs PostgreSQL from Debian's packages)")
    return found


class PostgresServer:
    """initdb into a fresh directory, then ``start()``/``stop()`` on one free port (the data survives a stop)."""

    def __init__(self) -> None:
        self._as_root = os.geteuid() == 0
        self.work = Path(tempfile.mkdtemp(prefix="gateway-pg-"))
        self.data = self.work / "data"
        if self._as_root:
            shutil.chown(self.work, "postgres", "postgres")
        self.port = free_port()
        self.url = f"postgresql://{USER}@127.0.0.1:{self.port}/postgres"
        self._run(_binary("initdb"), "-D", str(self.data), "-U", USER, "-A", "trust", "-E", "UTF8", "--no-sync",
                  "--locale=C")
        self.running = False
        self.start()

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", "postgres", "--"] if self._as_root else []
        return subprocess.run([*prefix, *argv], capture_output=True, text=True, check=check, timeout=60,
                              cwd=self.work)

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.work} -c listen_addresses=127.0.0.1 -c fsync=on "
                   "-c max_connections=200 -c shared_buffers=16MB")
        self._run(_binary("pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.work / "server.log"),
                  "-w", "-t", "30", "start")
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: sessions are ended; ``immediate``: as if it crashed)."""
        if self.running:
            self._run(_binary("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop", check=False)
            self.running = False

    def _pids(self) -> list[int]:
        """The postmaster and its children (every backend): the processes this server is made of."""
        postmaster = int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        pids = [postmaster]
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # ended meanwhile
            if int(fields[1]) == postmaster:
                pids.append(int(stat.parent.name))
        return pids

    def pause(self) -> None:
        """SIGSTOP the whole server: connections stay open and nothing answers (a hung server)."""
        for pid in self._pids():
            os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        for pid in self._pids():
            os.kill(pid, signal.SIGCONT)

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.work, ignore_errors=True)

    def log(self) -> str:
        path = self.work / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def database_url(self, name: str) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{name}"


def sql(url: str, *statements: str) -> None:
    """Run ``statements`` on ``url`` (one connection, autocommit)."""

    async def main() -> None:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(main())


def settings_for(url: str, **store: object) -> dict[str, object]:
    """Gateway settings for a PostgreSQL store at ``url`` (a generous timeout: the test machine is shared)."""
    return {"store": {"url": url, "timeout_ms": 2000, **store}}


def fresh_db(server: PostgresServer, migrate: bool = True) -> str:
    """The URL of a new, empty database on ``server``; with the gateway's schema unless ``migrate`` is False."""
    name = f"gw_{os.getpid()}_{next(_numbers)}"
    sql(server.url, f"CREATE DATABASE {name}")
    url = server.database_url(name)
    if migrate:
        from gateway.keys.postgres.store import PostgresStore

        async def main() -> None:
            await PostgresStore(url, timeout_ms=5000).migrate()

        asyncio.run(main())
    return url
