"""``gateway demo`` run as a real process, as a user starts it (tests/e2e/test_core_demo.py,
tests/e2e/test_seed_examples.py)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

from tests.support.procs import PYTHON, wait_port


class Demo:
    """``gateway demo`` (``--platform``: deployerp or deployally) as a user starts it, its output read until it
    says how to stop it; ``out`` holds what it printed (the keys, the curl lines)."""

    def __init__(self, port: int, umask: int = -1, platform: str | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        args = [PYTHON, "-m", "gateway", "demo", "--port", str(port)]
        if platform is not None:
            args += ["--platform", platform]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                     umask=umask)
        assert self.proc.stdout is not None
        self.out = ""
        deadline = time.monotonic() + 30
        while "Press Ctrl-C" not in self.out:
            line = self.proc.stdout.readline()
            if not line or time.monotonic() > deadline:
                raise AssertionError(f"the demo did not start:\n{self.out}")
            self.out += line
        wait_port(port, self.proc)

    def stop(self, sig: int = signal.SIGINT) -> tuple[int, str]:
        """SIGINT, as Ctrl-C sends (or ``sig``): returns the exit status and the rest of the output."""
        self.proc.send_signal(sig)
        try:
            rest, _ = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rest, _ = self.proc.communicate()
            raise AssertionError(f"the demo did not stop on SIGINT:\n{self.out}{rest}") from None
        self.out += rest
        return self.proc.returncode, rest


def end_demo(d: Demo) -> None:
    if d.proc.poll() is None:
        # A test failed before stopping it: SIGTERM, so the demo still removes its temporary store.
        d.proc.terminate()
        try:
            d.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            d.proc.kill()
            d.proc.communicate()


def demo_keys(out: str) -> dict[str, tuple[str, str]]:
    """``{kind: (key id, value)}`` of the keys a demo printed (read-only, deployment, admin; or ci-cd, server,
    admin, test)."""
    found = re.findall(r"^\s+([a-z-]+)\s+(key_[0-9A-Za-z]{12})\s+((?:dep|da)_[0-9A-Za-z_]+)\s", out, re.M)
    return {kind: (key_id, value) for kind, key_id, value in found}
