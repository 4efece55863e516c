"""deploy/docker-compose.yaml: parsed with PyYAML and checked against the gateway it configures.

No Docker engine here, so the file is not run by Compose; instead its promises are checked field by field: the
services, their health checks and start order, every ``GATEWAY_*`` variable and the mounted configuration
validated by the settings model (with the image's own ``ENV`` under them, as in the container), the secret kept
out of the file, and both replicas on the same Redis and secret. Then two real `gateway serve` processes run
that configuration against a real redis-server (host names moved to loopback with ``GATEWAY_*`` variables, the
only change), so a key created through one is accepted by the other.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.config.settings import load_settings
from tests.support.procs import ROOT, SECRET, RedisServer, Upstream, free_port, run_cli, wait_port

COMPOSE = ROOT / "deploy" / "docker-compose.yaml"
REPLICAS = ("gateway-1", "gateway-2")
MOUNT = "/etc/gateway/config.yaml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict)
    return doc


def _image_env() -> dict[str, str]:
    """The GATEWAY_* values the Dockerfile's runtime stage sets with ENV (the container starts with them)."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    runtime = text.split("AS runtime", 1)[1]
    env: dict[str, str] = {}
    for line in runtime.splitlines():
        if line.startswith("ENV "):
            for item in shlex.split(line[4:]):
                name, _, value = item.partition("=")
                env[name] = value
    return {k: v for k, v in env.items() if k.startswith("GATEWAY_")}


def _environment(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("environment", {})
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {str(k): str(v) for k, v in raw.items()}


def _config_source(service: dict[str, Any]) -> Path:
    (mount,) = [v for v in service["volumes"] if isinstance(v, dict) and v["target"] == MOUNT]
    assert mount["read_only"] is True, "the configuration must be mounted read-only"
    return (COMPOSE.parent / mount["source"]).resolve()


def test_services_start_in_order_on_healthy_dependencies(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"redis", "upstream", *REPLICAS}
    for name in REPLICAS:
        gw = services[name]
        assert gw["command"][:3] == ["serve", "--config", MOUNT]
        assert gw["depends_on"] == {"redis": {"condition": "service_healthy"},
                                    "upstream": {"condition": "service_healthy"}}
        (port,) = gw["ports"]
        assert port.endswith(":8080")
    assert len({services[n]["ports"][0].split(":")[0] for n in REPLICAS}) == 2, "each replica its own host port"
    # The demo upstream runs from the gateway's own image (its package ships gateway.demo).
    up = services["upstream"]
    assert up["entrypoint"] == ["python", "-m", "gateway.demo.upstream"]
    assert up["command"] == ["--host", "0.0.0.0", "--port", "9000"]
    assert up["image"] == services["gateway-1"]["image"]


def test_health_checks_probe_healthz_and_readyz(compose: dict[str, Any]) -> None:
    """Exec-form checks with the image's interpreter (as the Dockerfile's HEALTHCHECK), on the configured paths."""
    services = compose["services"]
    for name in REPLICAS:
        gw = services[name]
        settings = load_settings(_config_source(gw), environ={**_image_env(), **_environment(gw)})
        check = gw["healthcheck"]
        assert check["test"][:3] == ["CMD", "python", "-c"]
        script = check["test"][3]
        assert settings.ops.healthz_path in script and settings.ops.readyz_path in script
        assert f"127.0.0.1:{settings.listen.port}" in script
        for key in ("interval", "timeout", "start_period", "retries"):
            assert key in check
        grace = int(gw["stop_grace_period"].rstrip("s"))
        assert settings.ops.shutdown_timeout_seconds < grace, "the drain must fit in the stop grace period"
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert "9000/v1/servers" in services["upstream"]["healthcheck"]["test"][3]


def test_environment_and_mounted_config_validate(compose: dict[str, Any]) -> None:
    """Every GATEWAY_* variable names a real setting with a valid value (load_settings refuses unknown ones)."""
    for name in REPLICAS:
        gw = compose["services"][name]
        env = _environment(gw)
        assert env and all(k.startswith("GATEWAY_") for k in env)
        settings = load_settings(_config_source(gw), environ={**_image_env(), **env}, required=True)
        assert settings.store.url == "redis://redis:6379/0"
        assert settings.rate_limits.url == "redis://redis:6379/0"
        assert settings.upstream.url == "http://upstream:9000"
        assert settings.listen.host == "0.0.0.0"
        # Relative to the mounted file's directory: /etc/gateway/policies, which the image bakes in.
        assert settings.policies == "policies/deployerp.yaml" and (ROOT / settings.policies).is_file()
        assert "COPY policies /etc/gateway/policies" in (ROOT / "Dockerfile").read_text()


def test_unknown_variable_would_be_refused(compose: dict[str, Any]) -> None:
    """The check above can fail: a misspelt variable is an error, not ignored."""
    gw = compose["services"]["gateway-1"]
    with pytest.raises(Exception, match="GATEWAY_STORE__URI"):
        load_settings(_config_source(gw), environ={**_environment(gw), "GATEWAY_STORE__URI": "redis://x"})


def _env_file(service: dict[str, Any]) -> Path:
    (entry,) = service["env_file"]
    assert entry["required"] is True, "a replica without the secret must not start"
    return (COMPOSE.parent / entry["path"]).resolve()


def test_secret_from_an_env_file_never_in_the_file(compose: dict[str, Any]) -> None:
    """The server secret reaches the replicas from an env file kept out of git, never from the compose file or
    the mounted config."""
    text = COMPOSE.read_text()
    assert "GATEWAY_SECRET" not in {k for s in compose["services"].values() for k in _environment(s)}
    assert not re.search(r"^\s*GATEWAY_SECRET\s*[:=]", text, re.M), "the secret's value must not be in the file"
    assert "secret" not in yaml.safe_load((COMPOSE.parent / "compose" / "config.yaml").read_text())
    env_file = _env_file(compose["services"]["gateway-1"])
    assert env_file.parent == COMPOSE.parent / "compose"
    assert env_file.name in (env_file.parent / ".gitignore").read_text().split()
    ignored = subprocess.run(["git", "check-ignore", "-q", str(env_file)], cwd=ROOT)
    assert ignored.returncode == 0, "git must ignore the env file"
    for name in ("redis", "upstream"):
        assert "env_file" not in compose["services"][name], "only the gateways get the secret"


def test_replicas_share_redis_and_secret(compose: dict[str, Any]) -> None:
    seen = []
    for name in REPLICAS:
        gw = compose["services"][name]
        s = load_settings(_config_source(gw), environ={**_image_env(), **_environment(gw)})
        seen.append((s.store.url, s.rate_limits.url, _config_source(gw), _env_file(gw)))
    assert seen[0] == seen[1]


def test_two_replicas_of_the_mounted_config_share_keys(compose: dict[str, Any], tmp_path: Path,
                                                       own_redis: RedisServer, upstream: Upstream) -> None:
    """Both replicas, as real processes: the mounted config and the compose environment, with only the service
    host names (redis, upstream) and the listen port moved to this machine's loopback."""
    # The env file as `docker compose` reads it: NAME=value lines.
    (env_file := tmp_path / "gateway.env").write_text(f"GATEWAY_SECRET={SECRET}\n")
    from_file = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
    procs: list[subprocess.Popen[bytes]] = []
    ports: list[int] = []
    try:
        for name in REPLICAS:
            gw = compose["services"][name]
            env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
            env.update(_image_env())
            env.update({k: v.replace("redis://redis:6379/0", own_redis.url) for k, v in _environment(gw).items()})
            port = free_port()
            env.update(from_file)
            env.update({"GATEWAY_LISTEN__HOST": "127.0.0.1",
                        "GATEWAY_LISTEN__PORT": str(port), "GATEWAY_UPSTREAM__URL": upstream.url})
            config = tmp_path / name / "config.yaml"  # the mount, with the image's policies beside it
            config.parent.mkdir()
            config.write_text(_config_source(gw).read_text())
            (config.parent / "policies").symlink_to(ROOT / "policies")
            with open(tmp_path / f"{name}.log", "wb") as log:
                procs.append(subprocess.Popen([sys.executable, "-m", "gateway", *gw["command"][:1], "--config",
                                               str(config)], env=env, cwd=tmp_path, stdout=log,
                                              stderr=subprocess.STDOUT))
            ports.append(port)
            wait_port(port, procs[-1])
        key = run_cli("keys", "create", "--name", "compose", "--permissions", "servers:read", "--json",
                      "--config", str(tmp_path / "gateway-1" / "config.yaml"), env=env, cwd=tmp_path).stdout
        value = yaml.safe_load(key)["value"]
        for port in ports:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
                assert c.get("/healthz").status_code == 200
                assert c.get("/readyz").status_code == 200
                ok = c.get("/v1/servers", headers={"Authorization": f"Bearer {value}"})
                assert ok.status_code == 200, ok.text
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(15)
