"""The two platform guides' own examples, run against ``gateway demo`` as a user would run them.

Every ``curl`` line of the DeployAlly guide ("Autenticação") and of the deployERP guide ("Authentication") is
kept below exactly as the guide prints it, and run with the real ``curl`` binary against a real demo process
(``gateway demo`` for deployERP, ``gateway demo --platform deployally`` for DeployAlly), adapted only in host
and key: the guide's host becomes the demo's, its example keys (``da_xxx``, ``YOUR_API_KEY``, ``eyJ...``) the
demo's printed keys or the JWT its login hands out, and ``{id}`` / ``{key_id}`` a key's id. curl reads a
private ``.curlrc`` (``include``, ``silent``) so the status line and headers come back with the body without a
flag added to the command. Each answer must be what the guide says: status, body shape (DeployAlly's
``{"success": ..., "data"|"error": ...}``, deployERP's plain bodies), the guide's own error bodies word for
word, and the ``X-Auth-*`` debug headers. The deployERP guide's ``requests`` error-handling snippet runs as a
script with a good, a bad and an unprivileged key. The SDK snippets are run by tests/e2e/test_sdk*.py.

When the guides themselves are at hand (``shared/seeds`` beside the checkout), the lines below are checked to
be every ``curl`` line they hold.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from tests.support.demo import Demo, demo_keys, end_demo
from tests.support.procs import ROOT, free_port

CURL = shutil.which("curl")
pytestmark = pytest.mark.skipif(CURL is None, reason="curl is not installed (apt-get install curl)")

# --- the guides' curl lines, as printed ------------------------------------------------------------------------

ALLY_TEMPLATES = '''curl -X GET "https://sys.deployally.com/api/v1/templates" \\
  -H "Authorization: Bearer da_k8s9f7d6a5s4d3f2g1h0j9k8l7m6n5o4"'''
ALLY_CREATE = '''curl -X POST "https://sys.deployally.com/api/v1/api-keys" \\
  -H "Authorization: Bearer da_xxx" \\
  -d '{"name": "nova-key"}\''''
ALLY_REVOKE = '''curl -X DELETE "https://sys.deployally.com/api/v1/api-keys/{id}" \\
  -H "Authorization: Bearer da_xxx"'''
ALLY_TEST_KEY = '''curl -X GET "https://dev.sys.deployally.com/api/v1/templates" \\
  -H "Authorization: Bearer da_test_xxx"'''
ALLY_LOGIN = '''curl -X POST "https://sys.deployally.com/api/v1/auth/login" \\
  -H "Content-Type: application/json" \\
  -d '{
    "email": "usuario@exemplo.com",
    "password": "senha"
  }\''''
ALLY_PROFILE = '''curl -X GET "https://sys.deployally.com/api/v1/user/profile" \\
  -H "Authorization: Bearer eyJ..."'''
ALLY_LINES = (ALLY_TEMPLATES, ALLY_CREATE, ALLY_REVOKE, ALLY_TEST_KEY, ALLY_LOGIN, ALLY_PROFILE)

ERP_SERVERS = '''curl -X GET https://api.deployerp.com/v1/servers \\
-H "Authorization: Bearer dep_live_a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6" \\
-H "Content-Type: application/json"'''
ERP_ROTATE = '''curl -X POST https://api.deployerp.com/v1/api-keys/{key_id}/rotate \\
-H "Authorization: Bearer CURRENT_API_KEY" \\
-H "Content-Type: application/json"'''
ERP_AUTH_TEST = '''curl -X GET https://api.deployerp.com/v1/auth/test \\
-H "Authorization: Bearer YOUR_API_KEY"'''
ERP_DEBUG = '''curl -X GET https://api.deployerp.com/v1/servers \\
-H "Authorization: Bearer YOUR_API_KEY" \\
-H "X-Debug-Auth: true"'''
ERP_LINES = (ERP_SERVERS, ERP_ROTATE, ERP_AUTH_TEST, ERP_DEBUG)

# The deployERP guide's "Error Handling" snippet (its code as written; only the host is the demo's).
REQUESTS_SNIPPET = '''
import requests
from requests.exceptions import RequestException
def make_api_request(endpoint, api_key):
    headers = {
        'Authorization': f'Bearer {api_key}',
        'Content-Type': 'application/json'
    }
    try:
        response = requests.get(
            f'https://api.deployerp.com/v1/{endpoint}',
            headers=headers
        )
        response.raise_for_status()
        return response.json()
    except requests.exceptions.HTTPError as e:
        if e.response.status_code == 401:
            print("Authentication failed. Check your API key.")
        elif e.response.status_code == 403:
            print("Permission denied. Check key permissions.")
        else:
            print(f"HTTP error: {e}")
        return None
    except RequestException as e:
        print(f"Request failed: {e}")
        return None
'''

# The guides' error bodies, word for word.
ALLY_401 = {"success": False, "error": {"code": "UNAUTHORIZED", "message": "API Key inválida ou não fornecida"}}
ALLY_403 = {"success": False, "error": {"code": "FORBIDDEN", "message": "API Key não tem permissão para este recurso"}}
ERP_MISSING = {"error": {"code": "authentication_required", "message": "No authentication token provided",
                         "status": 401}}


# --- running them ----------------------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    text: str

    def json(self) -> object:
        return json.loads(self.text)


def adapt(line: str, base: str, values: dict[str, str]) -> list[str]:
    """The guide's line as argv: the shell's line continuations joined, the guide's host replaced by the demo's
    and each placeholder (``da_xxx``, ``{id}``...) by its value; the rest untouched."""
    for host in ("https://dev.sys.deployally.com", "https://sys.deployally.com", "https://api.deployerp.com"):
        line = line.replace(host, base)
    for placeholder, value in sorted(values.items(), key=lambda kv: -len(kv[0])):  # da_test_xxx before da_xxx
        line = line.replace(placeholder, value)
    argv = shlex.split(line.replace("\\\n", " "))
    assert argv[0] == "curl"
    return [str(CURL), *argv[1:]]


def run_curl(line: str, base: str, values: dict[str, str], home: Path) -> Answer:
    res = subprocess.run(adapt(line, base, values), capture_output=True, timeout=30,
                         env={**os.environ, "CURL_HOME": str(home), "HOME": str(home)})
    assert res.returncode == 0, (line, res.stderr)
    head, _, body = res.stdout.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for h in lines:
        name, _, value = h.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(int(status_line.split()[1]), headers, body.decode("utf-8"))


@pytest.fixture(scope="module")
def curl_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private .curlrc: every answer with its status line and headers, no progress meter."""
    home = tmp_path_factory.mktemp("curl-home")
    (home / ".curlrc").write_text("include\nsilent\nshow-error\n", encoding="utf-8")
    return home


@pytest.fixture(scope="module")
def ally() -> Iterator[Demo]:
    d = Demo(free_port(), platform="deployally")
    yield d
    end_demo(d)


@pytest.fixture(scope="module")
def erp() -> Iterator[Demo]:
    d = Demo(free_port())
    yield d
    end_demo(d)


# --- DeployAlly ------------------------------------------------------------------------------------------------


def test_deployally_guide_examples_run_against_the_demo(ally: Demo, curl_home: Path) -> None:
    """Usando a API Key, Rotação, Ambiente de Teste and JWT (Dashboard), in the guide's order."""
    keys = demo_keys(ally.out)
    assert set(keys) == {"ci-cd", "server", "admin", "test"}, ally.out
    assert all(re.fullmatch(r"da_[0-9A-Za-z]{32}", v) for k, (_, v) in keys.items() if k != "test")
    assert re.fullmatch(r"da_test_[0-9A-Za-z]{32}", keys["test"][1])
    values = {"da_k8s9f7d6a5s4d3f2g1h0j9k8l7m6n5o4": keys["ci-cd"][1], "da_xxx": keys["admin"][1],
              "da_test_xxx": keys["test"][1]}

    def curl(line: str) -> Answer:
        return run_curl(line, ally.base, values, curl_home)

    # Usando a API Key: the CI/CD key lists templates; the answer is DeployAlly's success body.
    templates = curl(ALLY_TEMPLATES)
    assert templates.status == 200, templates.text
    doc = templates.json()
    assert isinstance(doc, dict) and doc["success"] is True and isinstance(doc["data"], list) and doc["data"]
    assert doc["echo"]["auth_headers"]["x-auth-key-id"] == keys["ci-cd"][0]

    # Ambiente de Teste: a da_test_ key reaches the test environment, never the live one.
    test = curl(ALLY_TEST_KEY)
    assert test.status == 200, test.text
    assert test.json()["echo"]["auth_headers"]["x-auth-environment"] == "test"  # type: ignore[index]

    # JWT (Dashboard): the gateway's own login answers the guide's body, with the refresh token the guide's note
    # speaks of ("Use refresh tokens para renovar"); the JWT lasts 24 hours and opens the profile.
    login = curl(ALLY_LOGIN)
    assert login.status == 200, login.text
    session = login.json()
    assert isinstance(session, dict) and set(session) == {"success", "data"} and session["success"] is True
    assert set(session["data"]) == {"token", "expires_at", "refresh_token"}
    assert session["data"]["token"].startswith("eyJ")
    lasts = datetime.strptime(session["data"]["expires_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert abs((lasts - datetime.now(UTC)).total_seconds() - 24 * 3600) < 120
    values["eyJ..."] = session["data"]["token"]
    profile = curl(ALLY_PROFILE)
    assert profile.status == 200, profile.text
    assert profile.json()["data"]["email"] == "usuario@exemplo.com"  # type: ignore[index]

    # Rotação: 1. create a new key (the body without a Content-Type, as the guide sends it) ...
    created = curl(ALLY_CREATE)
    assert created.status == 201, created.text
    new = created.json()
    assert isinstance(new, dict) and set(new) == {"success", "data"} and new["success"] is True
    assert new["data"]["name"] == "nova-key" and re.fullmatch(r"da_[0-9A-Za-z]{32}", new["data"]["value"])
    # ... 2. the application moves to it ...
    moved = {**values, "da_k8s9f7d6a5s4d3f2g1h0j9k8l7m6n5o4": new["data"]["value"]}
    assert run_curl(ALLY_TEMPLATES, ally.base, moved, curl_home).status == 200
    # ... 3. the old key is revoked, and refused from then on with the guide's 401.
    values["{id}"] = keys["ci-cd"][0]
    revoked = curl(ALLY_REVOKE)
    assert revoked.status == 200, revoked.text
    gone = revoked.json()
    assert isinstance(gone, dict) and set(gone) == {"success", "data"} and gone["data"]["status"] == "revoked"
    refused = curl(ALLY_TEMPLATES)
    assert refused.status == 401 and refused.headers["www-authenticate"].startswith("Bearer")
    doc = refused.json()
    assert isinstance(doc, dict) and set(doc) == {"success", "error"} and doc["error"]["code"] == "UNAUTHORIZED"
    assert "revogada" in doc["error"]["message"]


def test_deployally_guide_error_bodies_word_for_word(ally: Demo) -> None:
    """Erros de Autenticação: 401 for a key missing or invalid (and "Use Bearer (não Basic)"), 403 for a valid
    key without the permission: the guide's bodies exactly, in Portuguese."""
    keys = demo_keys(ally.out)
    with httpx.Client(base_url=ally.base, timeout=10) as c:
        missing = c.get("/api/v1/templates")
        assert (missing.status_code, missing.json()) == (401, ALLY_401)
        invalid = c.get("/api/v1/templates", headers={"Authorization": "Bearer da_" + "k" * 32})
        assert (invalid.status_code, invalid.json()) == (401, ALLY_401)
        basic = c.get("/api/v1/templates", headers={"Authorization": "Basic dXN1YXJpbzpzZW5oYQ=="})
        assert basic.status_code == 401 and basic.json()["error"]["code"] == "UNAUTHORIZED"
        assert "não é Bearer" in basic.json()["error"]["message"]
        forbidden = c.get("/api/v1/templates", headers={"Authorization": f"Bearer {keys['server'][1]}"})
        assert (forbidden.status_code, forbidden.json()) == (403, ALLY_403)
        # the key API's answers have the same envelope, in the same language
        admin = {"Authorization": f"Bearer {keys['admin'][1]}"}
        page = c.get("/api/v1/api-keys", params={"limit": 2}, headers=admin).json()
        assert set(page) == {"success", "data", "meta"} and len(page["data"]) == 2
        assert page["meta"]["pagination"] == {"limit": 2, "offset": 0, "next_offset": 2}
        me = c.get("/api/v1/auth/test", headers=admin).json()
        assert set(me) == {"success", "data"} and me["data"]["key_id"] == keys["admin"][0]
        bad = c.post("/api/v1/api-keys", headers=admin, json={"name": ""})
        assert bad.json() == {"success": False, "error": {"code": "VALIDATION_ERROR",
                                                          "message": "name: não pode ficar vazio", "field": "name"}}


# --- deployERP -------------------------------------------------------------------------------------------------


def test_deployerp_guide_examples_run_against_the_demo(erp: Demo, curl_home: Path) -> None:
    """Using API Keys, Testing Authentication (the debug headers, then the test endpoint) and Manual Rotation."""
    keys = demo_keys(erp.out)
    assert set(keys) == {"read-only", "deployment", "admin"}, erp.out
    values = {"dep_live_a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6": keys["read-only"][1],
              "YOUR_API_KEY": keys["deployment"][1], "CURRENT_API_KEY": keys["admin"][1],
              "{key_id}": keys["read-only"][0]}

    def curl(line: str) -> Answer:
        return run_curl(line, erp.base, values, curl_home)

    servers = curl(ERP_SERVERS)
    assert servers.status == 200, servers.text
    doc = servers.json()
    assert isinstance(doc, dict) and "success" not in doc and isinstance(doc["data"], list)

    # X-Debug-Auth on the key's first request: the guide's four headers, 999/1000 left of a standard key.
    debug = curl(ERP_DEBUG)
    assert debug.status == 200, debug.text
    assert debug.headers["x-auth-key-id"] == keys["deployment"][0]
    assert debug.headers["x-auth-permissions"] == "servers:read,instances:*,backups:*"
    assert debug.headers["x-auth-ip-check"] == "passed"  # the key has an allowlist (loopback)
    assert debug.headers["x-auth-rate-limit"] == "999/1000"

    # The test endpoint, unwrapped: authenticated, key_id, permissions, rate_limit (limit, remaining, reset).
    me = curl(ERP_AUTH_TEST)
    assert me.status == 200, me.text
    doc = me.json()
    assert isinstance(doc, dict) and "success" not in doc
    assert doc["authenticated"] is True and doc["key_id"] == keys["deployment"][0]
    assert doc["permissions"] == ["servers:read", "instances:*", "backups:*"]
    assert (doc["rate_limit"]["limit"], doc["rate_limit"]["remaining"]) == (1000, 999)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", doc["rate_limit"]["reset"])

    # Manual rotation: old_key and new_key as the guide shows them; both work during the grace period.
    rotated = curl(ERP_ROTATE)
    assert rotated.status == 200, rotated.text
    doc = rotated.json()
    assert isinstance(doc, dict) and set(doc) == {"old_key", "new_key"}
    assert set(doc["old_key"]) == {"id", "expires_at"} and doc["old_key"]["id"] == keys["read-only"][0]
    assert set(doc["new_key"]) == {"id", "value", "created_at"}
    assert re.fullmatch(r"dep_live_[0-9A-Za-z]{32}", doc["new_key"]["value"])
    for value in (keys["read-only"][1], doc["new_key"]["value"]):
        assert run_curl(ERP_SERVERS, erp.base, {**values, "dep_live_a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6": value},
                        curl_home).status == 200


def test_deployerp_guide_missing_authentication_body(erp: Demo) -> None:
    """Common Error Responses, Missing Authentication: the guide's body word for word."""
    with httpx.Client(base_url=erp.base, timeout=10) as c:
        resp = c.get("/v1/servers")
    assert (resp.status_code, resp.json()) == (401, ERP_MISSING)


def test_deployerp_requests_snippet_handles_good_bad_and_unprivileged_keys(erp: Demo, tmp_path: Path) -> None:
    """The guide's error-handling snippet, run as a script: a good key gets the JSON, a bad one the 401 branch,
    a key without the scope the 403 branch; nothing else is printed."""
    keys = demo_keys(erp.out)
    script = tmp_path / "snippet.py"
    script.write_text(REQUESTS_SNIPPET.replace("https://api.deployerp.com", erp.base) + (
        "import json, sys\n"
        "result = make_api_request(sys.argv[1], sys.argv[2])\n"
        "print('RESULT', json.dumps(result))\n"), encoding="utf-8")

    def run(endpoint: str, key: str) -> list[str]:
        res = subprocess.run([sys.executable, str(script), endpoint, key], capture_output=True, text=True,
                             timeout=60, env={**os.environ, "NO_PROXY": "*"})
        assert res.returncode == 0, res.stderr
        return res.stdout.splitlines()

    good = run("servers", keys["deployment"][1])
    assert len(good) == 1 and good[0].startswith("RESULT {") and '"data"' in good[0]
    assert run("servers", "dep_live_" + "0" * 32) == ["Authentication failed. Check your API key.", "RESULT null"]
    assert run("invoices", keys["deployment"][1]) == ["Permission denied. Check key permissions.", "RESULT null"]


# --- the lines above are the guides' ---------------------------------------------------------------------------


def _seeds() -> Path | None:
    for candidate in (ROOT.parent / "shared" / "seeds", ROOT.parents[1] / "shared" / "seeds"):
        if (candidate / "deployerp-authentication.txt").exists():
            return candidate
    return None


def _curl_blocks(text: str) -> list[str]:
    """Every curl command of a guide, its continuation lines (and a quoted body over several lines) included,
    with its whitespace collapsed."""
    out, current = [], None
    for line in text.splitlines():
        stripped = line.strip()
        if current is None:
            if stripped.startswith("curl "):
                current = stripped
            else:
                continue
        else:
            current += " " + stripped
        if current.count("'") % 2 == 0 and not current.endswith("\\"):
            out.append(current)
            current = None
    return [_collapse(b) for b in out]


def _collapse(command: str) -> str:
    return re.sub(r"\s+", " ", command.replace("\\", " ")).strip()


def test_these_are_every_curl_line_of_the_guides() -> None:
    seeds = _seeds()
    if seeds is None:
        pytest.skip("the platform guides (shared/seeds) are not beside this checkout")
    ally = _curl_blocks((seeds / "deployally-autenticacao.md").read_text(encoding="utf-8"))
    erp = _curl_blocks((seeds / "deployerp-authentication.txt").read_text(encoding="utf-8"))
    assert ally == [_collapse(line) for line in ALLY_LINES]
    assert erp == [_collapse(line) for line in ERP_LINES]


def test_the_demo_prints_curl_lines_that_work_as_printed_in_both_formats(ally: Demo) -> None:
    """The DeployAlly demo's own Try: lines, run by a shell as a user pastes them (the deployERP demo's are
    run by tests/e2e/test_core_demo.py)."""
    lines = [line.strip() for line in ally.out.splitlines() if line.strip().startswith("curl ")]
    assert len(lines) >= 6, ally.out
    for line in lines:
        res = subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=20)
        assert res.returncode == 0, (line, res.stderr)
        doc = json.loads(res.stdout.split("\n\n", 1)[-1])
        assert isinstance(doc, dict) and isinstance(doc["success"], bool), (line, res.stdout)
    first = json.loads(subprocess.run(["bash", "-c", lines[0]], capture_output=True, text=True, timeout=20).stdout)
    assert first == ALLY_401
