"""Shared pieces of the process-level load scripts (soak_memory.py, bulk_transfer.py).

A real `gateway serve` process started from a config file in a temp directory, optionally pinned to a CPU with
``taskset``; its resident set size read from ``/proc/<pid>/status`` (VmRSS); a background sampler that records
it at a fixed interval. Everything binds to 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.procs import free_port, wait_port  # noqa: E402,F401 - the suite's own; re-exported here

PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable
# The bench tier of serve_for_bench.sh: checked on every request, never reached (one per 36 us / 6 us).
BENCH_TIER = {"per_hour": 100_000_000, "per_minute": 10_000_000}


def pinned(cpu: str | None, argv: Sequence[str]) -> list[str]:
    """``argv`` under ``taskset -c cpu`` (taskset execs, so the pid is the program's own)."""
    if cpu is None or shutil.which("taskset") is None:
        return list(argv)
    return ["taskset", "-c", cpu, *argv]


def clean_env() -> dict[str, str]:
    """This environment without GATEWAY_* variables, so only the config file configures the gateway."""
    return {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}


def rss_kb(pid: int) -> int:
    """VmRSS of one process in kB (0 once it has gone)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:
        return []


def tree_rss_mb(pid: int) -> float:
    """RSS of a process and its children in MiB (VmRSS kB / 1024; "MB" in the scripts' reports)."""
    return (rss_kb(pid) + sum(rss_kb(c) for c in children(pid))) / 1024


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}, {five:.2f}, {fifteen:.2f}"


class GatewayProcess:
    """`python -m gateway serve --config CONFIG`, stderr (its JSON log) to ``log``, pinned to ``cpu``."""

    def __init__(self, config: Path, port: int, log: Path, cpu: str | None = "0") -> None:
        self.port = port
        self.log_path = log
        self._log: IO[bytes] = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            pinned(cpu, [PYTHON, "-m", "gateway", "serve", "--config", str(config)]),
            stdout=self._log, stderr=subprocess.STDOUT, env=clean_env(), cwd=config.parent,
        )
        try:
            wait_port(port, self.proc)
        except Exception:
            self.stop()
            raise RuntimeError(f"the gateway did not start; its log:\n{self.tail()}") from None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_mb(self) -> float:
        return tree_rss_mb(self.proc.pid)

    def tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(max(0, os.path.getsize(self.log_path) - 200 * lines))
                return "\n".join(fh.read().decode(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


class RssSampler:
    """Samples a process's RSS (MB) every ``interval`` seconds in a thread: ``samples`` is [(t, mb), ...]."""

    def __init__(self, pid: int, interval: float) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.monotonic()

    def start(self) -> RssSampler:
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            self.samples.append((time.monotonic() - self._t0, tree_rss_mb(self.pid)))
            if self._stop.wait(self.interval):
                return

    def stop(self) -> list[tuple[float, float]]:
        self._stop.set()
        self._thread.join()
        self.samples.append((time.monotonic() - self._t0, tree_rss_mb(self.pid)))
        return self.samples

    @property
    def peak(self) -> float:
        return max((mb for _, mb in self.samples), default=0.0)
