"""The Node.js SDK (sdk/node, ``@deployerp/sdk``) against real `gateway serve` processes.

Two gateways are started here: one with the default settings and a ``sdk_fast`` tier (60 a minute, so a refused
request gets ``Retry-After: 1``), and one whose rate limiter's Redis is not there (every request gets 503 with
``Retry-After: 1``, as it would during an outage). Then:

* ``node --test sdk/node/test/`` runs the SDK's own tests with the addresses and keys in its environment; its
  exit status and TAP summary are asserted, so a failing or skipped Node test fails this one;
* ``npm pack`` makes the tarball a user would install; it is installed into an empty project offline (the
  package has no dependencies) and the deployERP guide's Node.js snippet runs there, through ``require`` and
  through ``import``.

Needs ``node`` (18 or newer) and ``npm`` on PATH; .ci/run installs them when they are missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.procs import ROOT, Gateway, Upstream, free_port

NODE_SDK = ROOT / "sdk" / "node"
NODE = shutil.which("node")
NPM = shutil.which("npm")


@pytest.fixture(scope="module", autouse=True)
def node_present() -> None:
    assert NODE is not None and NPM is not None, "node and npm are needed (.ci/run installs them)"
    major = int(subprocess.run([NODE, "-v"], capture_output=True, text=True).stdout.lstrip("v").split(".")[0])
    assert major >= 18, f"Node {major}: the SDK needs 18 or newer (the global fetch)"


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    u = Upstream(tmp_path_factory.mktemp("node-sdk-upstream"))
    yield u
    u.stop()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, up: Upstream) -> Iterator[Gateway]:
    g = Gateway(tmp_path_factory.mktemp("node-sdk-gw"), up.url, {
        "cache": {"ttl_seconds": 0.5},
        "rate_limits": {"tiers": {"sdk_fast": {"per_minute": 60}}},
    })
    yield g
    g.stop()


@pytest.fixture(scope="module")
def down(tmp_path_factory: pytest.TempPathFactory, up: Upstream) -> Iterator[Gateway]:
    """Rate limits in a Redis nobody runs, ``on_store_error: deny``: a real 503 ``rate_limit_unavailable``."""
    g = Gateway(tmp_path_factory.mktemp("node-sdk-down"), up.url, {
        "rate_limits": {"url": f"redis://127.0.0.1:{free_port()}/0", "on_store_error": "deny"},
    })
    yield g
    g.stop()


@pytest.fixture(scope="module")
def admin(gw: Gateway) -> str:
    return str(gw.create_key("node-admin", "api-keys:read,api-keys:write,servers:read,instances:*")["value"])


def _node_env(gw: Gateway, down: Gateway, admin: str) -> dict[str, str]:
    fast = [gw.create_key(f"node-fast-{i}", "api-keys:read", "--tier", "sdk_fast")["value"] for i in range(3)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEPLOYERP_")}
    env.update({
        "DEPLOYERP_TEST_BASE_URL": gw.url,
        "DEPLOYERP_TEST_ADMIN_KEY": admin,
        "DEPLOYERP_TEST_READER_KEY": gw.create_key("node-reader", "api-keys:read,servers:read")["value"],
        "DEPLOYERP_TEST_FAST_KEYS": ",".join(fast),
        "DEPLOYERP_TEST_DOWN_URL": down.url,
        "DEPLOYERP_TEST_DOWN_KEY": down.create_key("node-down", "api-keys:read,api-keys:write")["value"],
    })
    return env


def _summary(tap: str) -> dict[str, int]:
    return {name: int(n) for name, n in re.findall(r"^# (tests|pass|fail|cancelled|skipped|todo) (\d+)$", tap, re.M)}


def _node_tests(env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    assert NODE is not None
    return subprocess.run([NODE, "--test", "--test-reporter=tap", *extra, "sdk/node/test/"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180)


def test_the_node_sdk_tests_pass_against_a_real_gateway(gw: Gateway, down: Gateway, admin: str) -> None:
    """The seed snippet (a key that works, a bad key), the variables, 403, 429 retried after Retry-After then
    RateLimitError once the retries are spent, 503 retried only for idempotent calls, every apiKeys method."""
    done = _node_tests(_node_env(gw, down, admin))
    summary = _summary(done.stdout)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr
    written = len(re.findall(r"^test\(", (NODE_SDK / "test" / "client.test.js").read_text(), re.M))
    assert summary == {"tests": written, "pass": written, "fail": 0, "cancelled": 0, "skipped": 0, "todo": 0}, (
        done.stdout[-4000:])
    for name in ("seed snippet: auth.test() succeeds with a key", "429: waits the Retry-After, then the retry succeeds",
                 "429: RateLimitError with retryAfter once maxRetries retries are refused too"):
        assert re.search(rf"^ok \d+ - {re.escape(name)}$", done.stdout, re.M), name


def test_the_node_runner_reports_a_failure(gw: Gateway, down: Gateway, admin: str) -> None:
    """The runner's status is what the assertion above relies on: with a refused admin key the snippet's first
    test fails, and node exits non-zero."""
    env = _node_env(gw, down, admin)
    env["DEPLOYERP_TEST_ADMIN_KEY"] = "dep_live_" + "A" * 32
    done = _node_tests(env, "--test-name-pattern=auth.test\\(\\) succeeds")
    assert done.returncode != 0
    assert _summary(done.stdout)["fail"] == 1, done.stdout[-3000:]


# --- the tarball a user installs -------------------------------------------------------------------------------

# The deployERP guide's "Node.js SDK" snippet. As printed it does not run: it declares `const client` twice in one
# scope (a SyntaxError) and uses `await` at the top level of a CommonJS file (another). So it is run as its two
# alternatives, each with one `const client`, and the try block inside an async function; the host comes from
# DEPLOYERP_BASE_URL and the key placeholder is replaced, nothing else changes.
SNIPPET_WITH_KEY = """\
const { DeployERPClient } = require('@deployerp/sdk');

// Initialize with API key
const client = new DeployERPClient({
  apiKey: 'dep_live_your_api_key'
});

(async () => {
  // Test authentication
  try {
    await client.auth.test();
    console.log('Authentication successful');
  } catch (error) {
    console.error('Authentication failed:', error);
  }
})();
"""
SNIPPET_WITH_ENV = SNIPPET_WITH_KEY.replace("""// Initialize with API key
const client = new DeployERPClient({
  apiKey: 'dep_live_your_api_key'
});""", """// Or use environment variable
const client = new DeployERPClient();
// Reads from process.env.DEPLOYERP_API_KEY""")

PACKED = {"package.json", "README.md", "index.js", "index.mjs", "index.d.ts", "index.d.mts", "lib/client.js",
          "lib/errors.js"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty npm project with the packed SDK installed from its tarball, offline."""
    assert NPM is not None
    work = tmp_path_factory.mktemp("node-app")
    npm_env = {**os.environ, "npm_config_cache": str(work / "npm-cache"), "npm_config_update_notifier": "false"}
    packed = subprocess.run([NPM, "pack", "--json", "--pack-destination", str(work)], cwd=NODE_SDK, env=npm_env,
                            capture_output=True, text=True, timeout=120)
    assert packed.returncode == 0, packed.stderr
    (info,) = json.loads(packed.stdout)
    assert info["name"] == "@deployerp/sdk"
    assert {f["path"] for f in info["files"]} == PACKED  # the tests and nothing else stay out
    app = work / "app"
    app.mkdir()
    (app / "package.json").write_text('{"name": "app", "version": "1.0.0", "private": true}\n')
    done = subprocess.run([NPM, "install", "--offline", "--no-audit", "--no-fund", str(work / info["filename"])],
                          cwd=app, env=npm_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (app / "node_modules" / "@deployerp" / "sdk" / "index.js").is_file()
    assert not (app / "node_modules" / "@deployerp" / "sdk" / "node_modules").exists()  # no dependencies
    return app


def _run_node(app: Path, script: str, env: dict[str, str], *flags: str) -> subprocess.CompletedProcess[str]:
    assert NODE is not None
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DEPLOYERP_")}
    return subprocess.run([NODE, *flags, "-e", script] if flags else [NODE, "-e", script], cwd=app,
                          env={**clean, **env}, capture_output=True, text=True, timeout=60)


def test_seed_snippet_from_the_installed_tarball(installed: Path, gw: Gateway, admin: str) -> None:
    with_key = _run_node(installed, SNIPPET_WITH_KEY.replace("dep_live_your_api_key", admin),
                         {"DEPLOYERP_BASE_URL": gw.url})
    assert (with_key.returncode, with_key.stdout, with_key.stderr) == (0, "Authentication successful\n", "")
    with_env = _run_node(installed, SNIPPET_WITH_ENV, {"DEPLOYERP_API_KEY": admin, "DEPLOYERP_BASE_URL": gw.url})
    assert (with_env.returncode, with_env.stdout, with_env.stderr) == (0, "Authentication successful\n", "")


def test_seed_snippet_reports_a_bad_key_without_printing_it(installed: Path, gw: Gateway, admin: str) -> None:
    """``console.error('Authentication failed:', error)`` prints the error with its own properties: an
    AuthenticationError with the gateway's code, and never the key."""
    bad = admin[:-1] + ("A" if admin[-1] != "A" else "B")
    done = _run_node(installed, SNIPPET_WITH_KEY.replace("dep_live_your_api_key", bad), {"DEPLOYERP_BASE_URL": gw.url})
    assert done.returncode == 0 and done.stdout == "", done.stderr
    assert done.stderr.startswith("Authentication failed: AuthenticationError: 401 invalid_token:"), done.stderr
    assert "status: 401" in done.stderr and "code: 'invalid_token'" in done.stderr
    assert bad not in done.stderr and bad[-8:] not in done.stderr
    missing = _run_node(installed, SNIPPET_WITH_ENV, {"DEPLOYERP_BASE_URL": gw.url})
    assert missing.stderr.startswith("Authentication failed: AuthenticationError: 401 authentication_required: "
                                     "no API key"), missing.stderr


def test_the_esm_entry_gives_the_same_classes(installed: Path, gw: Gateway, admin: str) -> None:
    script = """
import { DeployERPClient, AuthenticationError } from '@deployerp/sdk';
import { createRequire } from 'node:module';
const cjs = createRequire(import.meta.url)('@deployerp/sdk');
const me = await new DeployERPClient().auth.test();
const err = await new DeployERPClient({ apiKey: 'dep_live_' + 'A'.repeat(32) }).auth.test().catch((e) => e);
console.log(JSON.stringify({ key_id: me.key_id, same: DeployERPClient === cjs.DeployERPClient,
  caught: err instanceof AuthenticationError && err instanceof cjs.AuthenticationError }));
"""
    done = _run_node(installed, script, {"DEPLOYERP_API_KEY": admin, "DEPLOYERP_BASE_URL": gw.url},
                     "--input-type=module")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["key_id"].startswith("key_") and result["same"] is True and result["caught"] is True


def test_the_declarations_name_every_export() -> None:
    """index.d.ts declares each name index.js exports (and no other), so TypeScript users see the real API; the
    ESM entry exports the same names. (Compiling the declarations needs TypeScript, which the suite does not
    install; this checks what can drift.)"""
    assert NODE is not None
    listed = subprocess.run(
        [NODE, "--input-type=module", "-e",
         "import * as esm from './index.mjs'; import { createRequire } from 'node:module';"
         "const cjs = createRequire(import.meta.url)('./index.js');"
         "const names = (m) => Object.keys(m).filter((k) => k !== 'default').sort();"
         "console.log(JSON.stringify([names(cjs), names(esm)]))"],
        cwd=NODE_SDK, capture_output=True, text=True, timeout=30)
    assert listed.returncode == 0, listed.stderr
    cjs, esm = json.loads(listed.stdout)
    assert cjs == esm
    dts = (NODE_SDK / "index.d.ts").read_text()
    declared = set(re.findall(r"^export declare (?:class|const|function) (\w+)", dts, re.M))
    declared |= set(re.findall(r"^export \{ \w+ as (\w+) \};", dts, re.M))
    assert declared == set(cjs)
