"""Hot reload with a real `gateway serve` process: SIGHUP after editing the policy file, the file watcher
(watchfiles) on its own, an invalid file that keeps the old policy, and a request in flight across a reload.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

from gateway.admin.api import internal_routes
from tests.support.metrics import scrape, value
from tests.support.procs import Gateway, Upstream

OLD = {"routes": [{"path": "/v1/servers/**", "methods": ["GET"], "scopes": ["servers:read"]}],
       "scopes": ["api-keys:read", "api-keys:write", "teams:read"]}
NEW = {"routes": [{"path": "/v1/teams/**", "methods": ["GET"], "scopes": ["servers:read"]}],
       "scopes": ["api-keys:read", "api-keys:write", "teams:read"]}


def write_policy(path: Path, doc: Any) -> None:
    """Replace the file the way editors and ConfigMap updates do: a new file renamed over the old one."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    os.replace(tmp, path)


def start(make_gateway: Callable[..., Gateway], up: Upstream, tmp_path: Path, watch: bool) -> tuple[Gateway, Path,
                                                                                                      str]:
    policy = tmp_path / "policy.yaml"
    write_policy(policy, OLD)
    gw = make_gateway(up.url, settings={"policies": str(policy), "ops": {"watch_policy": watch}})
    key = gw.create_key("reader", "servers:read")["value"]
    return gw, policy, key


def status(gw: Gateway, path: str, key: str) -> int:
    with gw.client() as c:
        return c.get(path, headers={"Authorization": f"Bearer {key}"}).status_code


def wait_for(check: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def events(gw: Gateway, name: str) -> list[dict[str, Any]]:
    out = []
    for line in gw.log().splitlines():
        if line.startswith("{"):
            doc = json.loads(line)
            if doc.get("event") == name:
                out.append(doc)
    return out


def test_sighup_swaps_the_policy(make_gateway: Callable[..., Gateway], fresh_upstream: Upstream,
                                 tmp_path: Path) -> None:
    gw, policy, key = start(make_gateway, fresh_upstream, tmp_path, watch=False)
    assert status(gw, "/v1/servers/1", key) == 200
    assert status(gw, "/v1/teams/1", key) == 403
    write_policy(policy, NEW)
    time.sleep(0.5)  # without the watcher nothing changes until the signal
    assert status(gw, "/v1/servers/1", key) == 200
    assert gw.proc is not None
    gw.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: status(gw, "/v1/teams/1", key) == 200)
    assert status(gw, "/v1/servers/1", key) == 403
    # the management API's routes were added again, as at start-up
    assert status(gw, "/v1/auth/test", key) == 200
    assert value(scrape(gw), "gateway_config_reloads_total", result="success") == 1
    assert gw.proc.poll() is None  # SIGHUP did not kill it
    [reload] = events(gw, "reload")
    # The file's one rule, and the management API's routes added again.
    assert reload["trigger"] == "SIGHUP" and reload["routes"] == 1 + len(internal_routes("/v1"))


def test_the_watcher_reloads_a_changed_file(make_gateway: Callable[..., Gateway], fresh_upstream: Upstream,
                                            tmp_path: Path) -> None:
    gw, policy, key = start(make_gateway, fresh_upstream, tmp_path, watch=True)
    assert status(gw, "/v1/teams/1", key) == 403
    time.sleep(0.3)  # let the watcher start
    write_policy(policy, NEW)
    assert wait_for(lambda: status(gw, "/v1/teams/1", key) == 200)
    assert status(gw, "/v1/servers/1", key) == 403
    # an edit in place (same inode) is seen too
    policy.write_text(yaml.safe_dump(OLD))
    assert wait_for(lambda: status(gw, "/v1/servers/1", key) == 200)
    assert any(e["trigger"] == "file changed" for e in events(gw, "reload"))


def test_an_invalid_file_keeps_the_old_policy(make_gateway: Callable[..., Gateway], fresh_upstream: Upstream,
                                              tmp_path: Path) -> None:
    gw, policy, key = start(make_gateway, fresh_upstream, tmp_path, watch=True)
    time.sleep(0.3)
    write_policy(policy, "routes: [ {path: /v1/x, methods: [GET], scopes: [nope:read]")  # broken YAML
    assert wait_for(lambda: value(scrape(gw), "gateway_config_reloads_total", result="failure") >= 1)
    assert status(gw, "/v1/servers/1", key) == 200  # still the old policy
    assert gw.proc is not None
    write_policy(policy, {"routes": [{"path": "v1/no-slash", "methods": ["GET"]}]})  # valid YAML, bad rule
    assert wait_for(lambda: value(scrape(gw), "gateway_config_reloads_total", result="failure") >= 2)
    gw.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: value(scrape(gw), "gateway_config_reloads_total", result="failure") >= 3)
    assert status(gw, "/v1/servers/1", key) == 200
    with gw.client() as c:
        assert c.get("/readyz").status_code == 200
    failures = events(gw, "reload_failed")
    assert len(failures) >= 3 and all(f["level"] == "error" and f["reason"] for f in failures)
    assert value(scrape(gw), "gateway_config_reloads_total", result="success") == 0
    write_policy(policy, NEW)
    assert wait_for(lambda: status(gw, "/v1/teams/1", key) == 200)


def test_a_request_in_flight_finishes_under_the_old_policy(make_gateway: Callable[..., Gateway],
                                                           fresh_upstream: Upstream, tmp_path: Path) -> None:
    gw, policy, key = start(make_gateway, fresh_upstream, tmp_path, watch=False)
    result: dict[str, Any] = {}

    def slow() -> None:
        with httpx.Client(base_url=gw.url, timeout=20) as c:
            r = c.get("/v1/servers/__slow?seconds=2", headers={"Authorization": f"Bearer {key}"})
            result["status"], result["at"] = r.status_code, time.monotonic()

    t = threading.Thread(target=slow)
    t.start()
    assert wait_for(lambda: any(r["path"].endswith("/__slow") for r in fresh_upstream.records()), 10)
    write_policy(policy, NEW)
    assert gw.proc is not None
    gw.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: status(gw, "/v1/servers/1", key) == 403)
    swapped = time.monotonic()
    t.join(20)
    assert result["status"] == 200 and result["at"] > swapped


def test_sighup_rereads_the_settings_and_names_those_that_wait_for_a_restart(
        make_gateway: Callable[..., Gateway], fresh_upstream: Upstream, tmp_path: Path) -> None:
    """The configuration file is re-read too: ``debug_headers`` applies at once; any other change is named in
    the reload event (``restart_needed_for``) and the running value stays."""
    gw, _, key = start(make_gateway, fresh_upstream, tmp_path, watch=False)
    debug = {"Authorization": f"Bearer {key}", "X-Debug-Auth": "true"}
    with gw.client() as c:
        assert "x-auth-key-id" in c.get("/v1/servers/1", headers=debug).headers
    config = yaml.safe_load(gw.config.read_text())
    config["debug_headers"] = False
    config["ops"]["drain_seconds"] = 1
    config["limits"] = {"max_headers": 50}
    gw.config.write_text(yaml.safe_dump(config))
    assert gw.proc is not None
    gw.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: bool(events(gw, "reload")))
    [reload] = events(gw, "reload")
    assert reload["restart_needed_for"] == ["ops.drain_seconds", "limits"]
    with gw.client() as c:
        assert "x-auth-key-id" not in c.get("/v1/servers/1", headers=debug).headers
        headers = {"Authorization": f"Bearer {key}", **{f"x-h{i}": "1" for i in range(60)}}
        assert c.get("/v1/servers/1", headers=headers).status_code == 200  # still the start-up max_headers
