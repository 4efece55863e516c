"""Real processes for the tests: the recording upstream, `gateway serve`, the `gateway` CLI, redis-server and nginx.

Nothing here is mocked: every helper starts a real process on a free loopback port and stops it at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
SECRET = "test-secret-0123456789abcdef0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[Any] | None = None, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


def _stop(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class Upstream:
    """tests/support/upstream.py in its own process."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log_dir / f"upstream-{self.port}.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [PYTHON, str(ROOT / "tests" / "support" / "upstream.py"), "--port", str(self.port)],
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        wait_port(self.port, self.proc)

    def records(self) -> list[dict[str, Any]]:
        return httpx.get(f"{self.url}/__records", timeout=5).json()  # type: ignore[no-any-return]

    def clear(self) -> None:
        httpx.delete(f"{self.url}/__records", timeout=5)

    def stop(self) -> None:
        _stop(self.proc)
        self._log.close()


class Gateway:
    """A real `gateway serve` process with its own config file, SQLite store and log file.

    ``settings`` is merged over a minimal config (listen port, upstream, store in ``work``); ``env`` adds
    environment variables. The server secret is given as GATEWAY_SECRET unless ``env`` says otherwise.
    ``umask`` is the file-creation mask of the server and of the CLI commands run through it (default: this
    process's).
    """

    def __init__(
        self,
        work: Path,
        upstream_url: str,
        settings: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        start: bool = True,
        umask: int = -1,
    ) -> None:
        self.work = work
        self.umask = umask
        work.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config: dict[str, Any] = {
            "listen": {"host": "127.0.0.1", "port": self.port},
            "upstream": {"url": upstream_url},
            "store": {"url": f"sqlite:///{work / 'keys.db'}"},
            "policies": str(ROOT / "policies" / "deployerp.yaml"),
        }
        for k, v in (settings or {}).items():
            if isinstance(v, Mapping) and isinstance(config.get(k), dict):
                config[k] = {**config[k], **v}
            else:
                config[k] = v
        self.config = work / "config.yaml"
        self.config.write_text(yaml.safe_dump(config))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        self.env["GATEWAY_SECRET"] = SECRET
        self.env.update(env or {})
        self.log_path = work / f"gateway-{self.port}.log"
        self.proc: subprocess.Popen[Any] | None = None
        if start:
            self.start()

    def start(self) -> None:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "gateway", "serve", "--config", str(self.config)],
            stdout=self._log, stderr=subprocess.STDOUT, env=self.env, cwd=self.work, umask=self.umask,
        )
        try:
            wait_port(self.port, self.proc)
        except Exception:
            self._log.close()
            raise RuntimeError(f"gateway did not start:\n{self.log()}") from None

    def cli(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``gateway <args> --config <this config>`` against this gateway's store."""
        return run_cli(*args, "--config", str(self.config), env=self.env, check=check, cwd=self.work, input=input,
                       umask=self.umask)

    def create_key(self, name: str = "k", permissions: str = "servers:read", *extra: str) -> dict[str, Any]:
        out = self.cli("keys", "create", "--name", name, "--permissions", permissions, "--json", *extra)
        return json.loads(out.stdout)  # type: ignore[no-any-return]

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 10), **kwargs)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            _stop(self.proc, sig)
            self.proc = None
            self._log.close()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


def run_cli(
    *args: str,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    cwd: Path | None = None,
    input: str | None = None,
    timeout: float = 60,
    umask: int = -1,
) -> subprocess.CompletedProcess[str]:
    if env is None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        env["GATEWAY_SECRET"] = SECRET
    proc = subprocess.run(
        [PYTHON, "-m", "gateway", *args], capture_output=True, text=True, env=dict(env), cwd=cwd,
        input=input, timeout=timeout, umask=umask,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"gateway {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


class RedisServer:
    """A real redis-server on a free port, no persistence. Can be stopped and started again (same port)."""

    def __init__(self, work: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (.ci/run installs it from Debian's packages)")
        self.binary = binary
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[Any] | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.work), "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_port(self.port, self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None

    def pause(self) -> None:
        """SIGSTOP: Redis keeps its socket but answers nothing (a hung server)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


class Nginx:
    """A real nginx on a free loopback port, in the foreground, with ``server_config`` (what goes in its ``http``
    block; ``{port}`` is replaced by the port) written to ``work``. Workers run as root when the tests do (the
    temp directory is the test's, mode 700)."""

    def __init__(self, work: Path, server_config: str) -> None:
        binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
        if binary is None:
            raise RuntimeError("nginx is not installed (.ci/run installs it from Debian's packages)")
        work.mkdir(parents=True, exist_ok=True)
        (work / "logs").mkdir(exist_ok=True)  # where nginx looks before it has read the config
        self.work = work
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        user = "user root;\n" if os.geteuid() == 0 else ""
        (work / "nginx.conf").write_text(
            f"{user}worker_processes 1;\nevents {{ worker_connections 256; }}\n"
            f"http {{\n    access_log off;\n{server_config.replace('{port}', str(self.port))}\n}}\n")
        self._log = open(work / "nginx.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc: subprocess.Popen[Any] | None = subprocess.Popen(
            [binary, "-p", str(work), "-c", "nginx.conf", "-g", f"daemon off; pid {work / 'nginx.pid'}; "
             "error_log stderr;"],
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        try:
            wait_port(self.port, self.proc)
        except Exception:
            self.stop()
            raise RuntimeError(f"nginx did not start:\n{self.log()}") from None

    def log(self) -> str:
        return (self.work / "nginx.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc, signal.SIGQUIT)  # graceful: the workers finish, then the master exits
            self.proc = None
            self._log.close()


def raw_request(port: int, data: bytes, timeout: float = 5.0, read_all: bool = True) -> bytes:
    """Send raw bytes on a fresh socket and return everything the server sends until it closes (or timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks: list[bytes] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            if not read_all:
                break
        return b"".join(chunks)


def status_of(raw: bytes) -> int:
    """The status code of the first response in ``raw`` (0 when there is none)."""
    if not raw.startswith(b"HTTP/"):
        return 0
    return int(raw.split(b" ", 2)[1])


def body_json(raw: bytes) -> Any:
    head, _, body = raw.partition(b"\r\n\r\n")
    return json.loads(body)


def all_output(paths: Sequence[Path]) -> str:
    return "\n".join(p.read_text(errors="replace") for p in paths if p.exists())
