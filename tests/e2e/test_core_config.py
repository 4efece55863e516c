"""Core behaviour, end to end: `gateway serve --config` refuses bad configuration with exit 2 and a message naming the
field, honours GATEWAY_<SECTION>__<FIELD> overrides, and runs from the shipped config.yaml.

Clients pass ``verify=False``: everything is plain HTTP on loopback, and it spares loading the CA bundle for
every client (about 0.1 s each on a busy machine).
"""

from __future__ import annotations

import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.support.core import assert_no_secret, bearer, header
from tests.support.procs import PYTHON, ROOT, SECRET, Gateway, Upstream, free_port, run_cli, wait_port

BAD_CONFIGS = [
    ("listen:\n  port: 99999\n", "listen.port"),
    ("error_format: xml\n", "error_format"),
    ("colour: blue\n", "colour"),
    ("upstream:\n  url: ftp://example.test\n", "upstream.url"),
    ("cache:\n  ttl_seconds: -1\n", "cache.ttl_seconds"),
    ("trusted_proxies: [10.0.0.0/40]\n", "trusted_proxies[0]"),
    ("listen: [1\n", "not valid YAML"),
    ("policies: /nonexistent/policy.yaml\n", "policy.yaml"),
]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["GATEWAY_SECRET"] = SECRET
    return env


def _serve(config: Path, env: dict[str, str], timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """`gateway serve` that is expected to refuse to start: it must exit by itself, quickly."""
    return subprocess.run([PYTHON, "-m", "gateway", "serve", "--config", str(config)], capture_output=True,
                          text=True, env=env, cwd=config.parent, timeout=timeout)


def test_bad_configuration_exits_2_naming_the_field(tmp_path: Path) -> None:
    def attempt(i: int) -> subprocess.CompletedProcess[str]:
        text, _ = BAD_CONFIGS[i]
        config = tmp_path / f"bad{i}.yaml"
        # Everything else valid, so the one bad value is the only reason to refuse.
        config.write_text(f"store:\n  url: sqlite:///{tmp_path / f'k{i}.db'}\n" + text
                          if not text.startswith(("store:", "- ")) else text)
        return _serve(config, _env())

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(attempt, range(len(BAD_CONFIGS))))
    for (text, named), out in zip(BAD_CONFIGS, results, strict=True):
        assert out.returncode == 2, (text, out.returncode, out.stderr[-2000:])
        assert named in out.stderr, (text, out.stderr)
        assert "Traceback" not in out.stderr, out.stderr


def test_missing_config_file_and_bad_environment_value(tmp_path: Path) -> None:
    missing = _serve(tmp_path / "nope.yaml", _env())
    assert missing.returncode == 2 and "nope.yaml" in missing.stderr and "not found" in missing.stderr
    config = tmp_path / "ok.yaml"
    config.write_text(f"store:\n  url: sqlite:///{tmp_path / 'keys.db'}\n")
    bad_port = _serve(config, {**_env(), "GATEWAY_LISTEN__PORT": "70000"})
    assert bad_port.returncode == 2 and "listen.port" in bad_port.stderr
    typo = _serve(config, {**_env(), "GATEWAY_LISTEN__PROT": "8080"})
    assert typo.returncode == 2 and "listen.prot" in typo.stderr
    for out in (missing, bad_port, typo):
        assert "Traceback" not in out.stderr


def test_every_mistake_is_named_at_once_and_no_secret_is_printed(tmp_path: Path) -> None:
    """Three mistakes in three sections of the file and a short secret in the environment: `gateway serve`
    exits 2 naming all four, one line each, without a traceback and without the secret's value."""
    config = tmp_path / "three.yaml"
    config.write_text("listen:\n  port: 70000\nstore:\n  url: ftp://x\nrate_limits:\n  on_store_error: maybe\n")
    out = _serve(config, {**_env(), "GATEWAY_SECRET": "hush-0123456"})
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    for named in ("listen.port", "store.url", "rate_limits.on_store_error", "secret"):
        assert sum(f"configuration error: {named}: " in line for line in lines) == 1, (named, out.stderr)
    assert "GATEWAY_SECRET" in out.stderr  # the value came from the environment: the variable is named
    assert "hush-0123456" not in out.stderr  # 12 characters: too short, and never shown
    assert "Traceback" not in out.stderr and "pydantic" not in out.stderr.lower(), out.stderr


def test_environment_overrides_upstream_url_and_listen_port(tmp_path: Path, fresh_upstream: Upstream) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    g = Gateway(tmp_path / "gw", dead, start=False)  # the file says: a dead upstream on g.port
    port = free_port()
    g.env["GATEWAY_UPSTREAM__URL"] = fresh_upstream.url
    g.env["GATEWAY_LISTEN__PORT"] = str(port)
    g.env["GATEWAY_ERROR_FORMAT"] = "deployally"
    g.port, g.url = port, f"http://127.0.0.1:{port}"
    g.start()
    try:
        made = g.create_key("env", "servers:read")
        with g.client(verify=False) as c:
            ok = c.get("/v1/servers", headers=bearer(made["value"]))
            denied = c.get("/v1/servers")
        assert ok.status_code == 200  # reached the upstream named by the environment, not the file's
        assert header(ok.json(), "x-auth-key-id") == [made["id"]]
        assert denied.json() == {"success": False, "error": {"code": "UNAUTHORIZED",
                                                              "message": denied.json()["error"]["message"]}}
    finally:
        g.stop()
    assert_no_secret(g.log(), [made["value"]])


def test_shipped_config_runs(tmp_path: Path, fresh_upstream: Upstream) -> None:
    for policy in ("deployerp.yaml", "deployally.yaml"):
        out = run_cli("policy", "check", str(ROOT / "policies" / policy))
        assert "OK" in out.stdout
    assert "billing:read" in run_cli("policy", "check", str(ROOT / "policies" / "deployerp.yaml")).stdout

    port = free_port()
    env = {**_env(), "GATEWAY_STORE__URL": f"sqlite:///{tmp_path / 'keys.db'}", "GATEWAY_LISTEN__PORT": str(port),
           "GATEWAY_UPSTREAM__URL": fresh_upstream.url}
    config = str(ROOT / "config.yaml")
    made = run_cli("keys", "create", "--name", "shipped", "--permissions", "servers:read", "--json",
                   "--config", config, env=env, cwd=tmp_path)
    value = made.stdout.split('"value": "')[1].split('"')[0]
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([PYTHON, "-m", "gateway", "serve", "--config", config], stdout=log,
                                stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
        try:
            wait_port(port, proc)
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10, verify=False) as c:
                assert c.get("/v1/servers", headers=bearer(value)).status_code == 200
                assert c.get("/v1/servers").status_code == 401
        finally:
            proc.terminate()
            proc.wait(10)
    # uvicorn drains, runs the shutdown, then re-raises SIGTERM: -15 after a clean shutdown is expected.
    assert proc.returncode in (0, -15)
    text = log_path.read_text()
    assert "Application shutdown complete" in text
    assert "Traceback" not in text
    assert_no_secret(text, [value])
    assert (tmp_path / "keys.db").exists()  # the store went where the environment said


def test_serve_port_flag_overrides_file(tmp_path: Path, fresh_upstream: Upstream) -> None:
    g = Gateway(tmp_path / "gw", fresh_upstream.url, start=False)
    port = free_port()
    proc = subprocess.Popen([PYTHON, "-m", "gateway", "serve", "--config", str(g.config), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=g.env, cwd=g.work)
    try:
        wait_port(port, proc)
        assert httpx.get(f"http://127.0.0.1:{port}/v1/servers", timeout=10, verify=False).status_code == 401
    finally:
        proc.terminate()
        proc.wait(10)
