"""deploy/kubernetes/sidecar.yaml: parsed with PyYAML and checked against the gateway it configures.

No cluster here, so the manifest is not applied; instead its promises are checked field by field, and its
ConfigMap (config.yaml + policy.yaml) is loaded and served by a real `gateway serve` process, so the probes
the Deployment declares are known to answer on the paths and port it names.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from gateway.config.settings import load_settings
from gateway.policy.rules import load_policy
from tests.support.procs import ROOT, SECRET, Upstream, free_port, run_cli, wait_port

MANIFEST = ROOT / "deploy" / "kubernetes" / "sidecar.yaml"


@pytest.fixture(scope="module")
def docs() -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in yaml.safe_load_all(MANIFEST.read_text()) if d}


def _pod(docs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return docs["Deployment"]["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def _gateway(pod: dict[str, Any]) -> dict[str, Any]:
    (gw,) = [c for c in pod.get("initContainers", []) if c["name"] == "gateway"]
    return gw


def _config(docs: dict[str, dict[str, Any]], tmp_path: Path) -> Path:
    """The ConfigMap's files written out the way the pod mounts them (one directory)."""
    for name, text in docs["ConfigMap"]["data"].items():
        (tmp_path / name).write_text(text)
    return tmp_path / "config.yaml"


def test_gateway_is_a_native_sidecar_in_front_of_a_loopback_app(docs: dict[str, dict[str, Any]],
                                                                tmp_path: Path) -> None:
    pod = _pod(docs)
    gw = _gateway(pod)
    assert gw["restartPolicy"] == "Always"  # native sidecar: an init container that keeps running
    assert gw["name"] not in [c["name"] for c in pod["containers"]]
    (app,) = pod["containers"]
    assert "ports" not in app, "the app must not expose a port of its own"
    cmd = " ".join(app.get("command", []) + app.get("args", []))
    assert "--host 127.0.0.1" in cmd
    app_port = int(cmd.split("--port", 1)[1].split()[0])

    settings = load_settings(_config(docs, tmp_path), environ={})
    upstream = urlsplit(settings.upstream.url)
    assert (upstream.hostname, upstream.port) == ("127.0.0.1", app_port)
    assert settings.listen.host == "0.0.0.0"
    (port,) = gw["ports"]
    assert port["containerPort"] == settings.listen.port and port["name"] == "http"
    service_port = docs["Service"]["spec"]["ports"][0]
    assert service_port["targetPort"] in ("http", settings.listen.port)
    assert docs["Service"]["spec"]["selector"] == docs["Deployment"]["spec"]["selector"]["matchLabels"]


def test_probes_and_drain(docs: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    pod = _pod(docs)
    gw = _gateway(pod)
    settings = load_settings(_config(docs, tmp_path), environ={})
    assert gw["livenessProbe"]["httpGet"] == {"path": settings.ops.healthz_path, "port": "http"}
    assert gw["readinessProbe"]["httpGet"] == {"path": settings.ops.readyz_path, "port": "http"}
    assert settings.ops.healthz_path == "/healthz" and settings.ops.readyz_path == "/readyz"
    grace = pod["terminationGracePeriodSeconds"]
    for container in (gw, *pod["containers"]):
        command = container["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep"
        assert 0 < int(command[1]) < grace, f"{container['name']}: the drain must fit in the grace period"


def test_config_from_configmap_secret_from_secret_data_on_a_volume(docs: dict[str, dict[str, Any]],
                                                                   tmp_path: Path) -> None:
    pod = _pod(docs)
    gw = _gateway(pod)
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in gw["volumeMounts"]}
    config_path = gw["args"][gw["args"].index("--config") + 1]
    config_dir = str(Path(config_path).parent)
    assert volumes[mounts[config_dir]]["configMap"]["name"] == docs["ConfigMap"]["metadata"]["name"]
    assert not any("subPath" in m for m in gw["volumeMounts"]), "subPath mounts never see ConfigMap updates"

    (secret,) = [e for e in gw["env"] if e["name"] == "GATEWAY_SECRET"]
    assert "value" not in secret and secret["valueFrom"]["secretKeyRef"]["key"] == "GATEWAY_SECRET"
    assert "secret" not in yaml.safe_load(docs["ConfigMap"]["data"]["config.yaml"])

    settings = load_settings(_config(docs, tmp_path), environ={})
    store_dir = str(Path(settings.store.url[len("sqlite:///"):]).parent)
    data = volumes[mounts[store_dir]]
    assert "emptyDir" in data or "persistentVolumeClaim" in data
    assert "emptyDir" in MANIFEST.read_text() and "PersistentVolumeClaim" in MANIFEST.read_text()  # the note
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001


def test_the_configmap_serves_the_probes(docs: dict[str, dict[str, Any]], tmp_path: Path,
                                         upstream: Upstream) -> None:
    """The ConfigMap's config and policy, loaded by a real gateway (host, port and store moved to this test's
    loopback port and directory with GATEWAY_* variables, as the pod could too)."""
    config = _config(docs, tmp_path)
    policy = load_policy(tmp_path / "policy.yaml")
    assert policy.routes
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update({"GATEWAY_SECRET": SECRET, "GATEWAY_LISTEN__HOST": "127.0.0.1", "GATEWAY_LISTEN__PORT": str(port),
                "GATEWAY_STORE__URL": f"sqlite:///{tmp_path / 'data' / 'keys.db'}",
                "GATEWAY_UPSTREAM__URL": upstream.url})
    with open(tmp_path / "serve.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(config)], env=env,
                                cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(port, proc)
        gw = _gateway(_pod(docs))
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
            assert c.get(gw["livenessProbe"]["httpGet"]["path"]).status_code == 200
            assert c.get(gw["readinessProbe"]["httpGet"]["path"]).status_code == 200
            key = run_cli("keys", "create", "--name", "k8s", "--permissions", "servers:read", "--json",
                          "--config", str(config), env=env, cwd=tmp_path).stdout
            value = yaml.safe_load(key)["value"]
            ok = c.get("/v1/servers", headers={"Authorization": f"Bearer {value}"})
            assert ok.status_code == 200 and ok.json()["path"] == "/v1/servers"
    finally:
        proc.terminate()
        proc.wait(15)
