"""The dashboard over plain HTTP: a real `gateway serve` (SQLite store, users made with the real CLI) and a real
recording upstream. What a browser is not needed to show: the security headers, the cookies' attributes, CSRF
refusals, the forms validated as the API's bodies, the user's scopes, the languages, where the pages are served
(and that they can be switched off), and that no secret reaches a log or a URL. The browser walk-through is in
test_dashboard_browser.py."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from gateway import messages
from tests.support.core import assert_no_secret, bearer
from tests.support.dashboard import PASSWORD, USERS, Assets, Browser, alerts, csrf_of, dashboard_gateway, value_of
from tests.support.demo import Demo, end_demo
from tests.support.lifecycle import wait_for
from tests.support.procs import Gateway, RedisServer, Upstream, free_port
from tests.support.redisdb import dump, fresh_db


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    u = Upstream(tmp_path_factory.mktemp("dash-up"))
    yield u
    u.stop()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, up: Upstream) -> Iterator[Gateway]:
    # 127.0.0.1 is a trusted proxy, so a request can say it came over TLS (X-Forwarded-Proto: https).
    g = dashboard_gateway(tmp_path_factory.mktemp("dash-gw"), up.url, {"trusted_proxies": ["127.0.0.1/32"]})
    yield g
    g.stop()


@pytest.fixture
def browser(gw: Gateway) -> Iterator[Browser]:
    b = Browser(gw)
    yield b
    b.close()


def keys_in_store(gw: Gateway) -> list[dict[str, object]]:
    return json.loads(gw.cli("keys", "list", "--json").stdout)  # type: ignore[no-any-return]


# --- headers and cookies -----------------------------------------------------------------------------------------


def test_every_page_has_a_strict_content_security_policy_and_cannot_be_framed(browser: Browser) -> None:
    assert browser.login().status_code == 303
    for page in ("/login", "/keys", "/keys/new", "/nothing-here"):
        r = browser.get(page)
        csp = r.headers["content-security-policy"]
        directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
        assert directives["default-src"] == "'none'"
        assert directives["frame-ancestors"] == "'none'"  # CSP Level 2, 7.7.3
        assert directives["script-src"] == directives["style-src"] == "'self'"
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert r.headers["x-frame-options"] == "DENY"  # RFC 7034, for browsers without frame-ancestors
        assert r.headers["cache-control"] == "no-store"
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"


def _cookies(r: httpx.Response) -> dict[str, str]:
    return {c.split("=", 1)[0]: c for c in r.headers.get_list("set-cookie")}


def test_the_session_cookie_is_httponly_samesite_strict_and_secure_only_behind_tls(gw: Gateway) -> None:
    """RFC 6265bis: HttpOnly keeps it from scripts, SameSite=Strict from other sites' requests; Secure is set when
    the browser came over TLS (here: a trusted proxy's X-Forwarded-Proto), and not over plain HTTP, where a
    browser would drop it."""
    for proto, secure in ((None, False), ("https", True)):
        b = Browser(gw)
        try:
            headers = {"x-forwarded-proto": proto} if proto else {}
            page = b.get("/login", headers=headers)
            assert ("secure" in _cookies(page)["gateway_csrf"].lower().split("; ")) is secure
            if secure:
                # httpx keeps a Secure cookie from plain http://; the browser behind the TLS proxy would send it.
                csrf = page.headers["set-cookie"].split(";")[0].split("=", 1)[1]
                b.http.cookies.set("gateway_csrf", csrf, domain="127.0.0.1", path="/dashboard")
            r = b.post("/login", {"email": USERS["admin"], "password": PASSWORD, "csrf_token": csrf_of(page.text)},
                       headers=headers)
            assert r.status_code == 303 and r.headers["location"] == "/dashboard/keys"
            cookies = _cookies(r)
            for name in ("gateway_session", "gateway_refresh"):
                attrs = [a.strip().lower() for a in cookies[name].split(";")]
                assert "httponly" in attrs and "samesite=strict" in attrs and "path=/dashboard" in attrs
                assert ("secure" in attrs) is secure, (proto, attrs)
        finally:
            b.close()


def test_without_a_session_every_page_sends_the_browser_to_the_login(browser: Browser) -> None:
    for page in ("", "/keys", "/keys/new", "/keys/key_abc"):
        r = browser.get(page)
        assert r.status_code == 303 and r.headers["location"] in ("/dashboard/login", "/dashboard/keys")
    browser.http.cookies.set("gateway_session", "not-a-token", domain="127.0.0.1", path="/dashboard")
    assert browser.get("/keys").headers["location"] == "/dashboard/login"


# --- CSRF --------------------------------------------------------------------------------------------------------


def test_a_form_posted_without_its_csrf_token_is_refused_and_changes_nothing(gw: Gateway, browser: Browser) -> None:
    # The login form: without the token, or with a token of another browser's cookie.
    r = browser.post("/login", {"email": USERS["admin"], "password": PASSWORD})
    assert r.status_code == 403 and "gateway_session" not in _cookies(r)
    assert "insufficient_permissions" in r.text
    other = Browser(gw)
    stolen = other.token()
    other.close()
    browser.get("/login")
    r = browser.post("/login", {"email": USERS["admin"], "password": PASSWORD, "csrf_token": stolen})
    assert r.status_code == 403 and "gateway_session" not in _cookies(r)
    # Logged in, a creation, a revocation and a logout without the token are refused too.
    assert browser.login().status_code == 303
    before = len(keys_in_store(gw))
    r = browser.post("/keys", {"name": "csrf-less", "permissions": "servers:read"})
    assert r.status_code == 403
    words = messages.catalogue("deployerp")["insufficient_permissions.csrf"]
    assert alerts(r.text) == [f"insufficient_permissions: {words}"]
    assert len(keys_in_store(gw)) == before
    made = browser.create(name="victim", permissions="servers:read")
    key_id = re.search(r"/keys/(key_[A-Za-z0-9_-]+)", made.text).group(1)  # type: ignore[union-attr]
    assert browser.post(f"/keys/{key_id}/revoke", {"csrf_token": "x" * 64}).status_code == 403
    assert browser.post("/logout", {}).status_code == 403
    assert browser.post("/logout", {"csrf_token": "é" * 64}).status_code == 403  # not ASCII: refused, not a 500
    browser.http.cookies.set("gateway_csrf", "%C3%A9", domain="127.0.0.1", path="/dashboard")
    assert browser.post("/logout", {"csrf_token": "x"}).status_code == 403
    assert httpx.get(f"{gw.url}/v1/servers", headers=bearer(value_of(made.text) or "")).status_code == 200


# --- log in ------------------------------------------------------------------------------------------------------


def test_a_wrong_password_is_refused_with_the_catalogues_words_and_no_session(browser: Browser) -> None:
    r = browser.post("/login", {"email": USERS["admin"], "password": "wrong", "csrf_token": browser.token()})
    assert r.status_code == 401
    assert "gateway_session" not in _cookies(r)
    assert len(alerts(r.text)) == 1 and alerts(r.text)[0]
    assert 'value="admin@example.com"' in r.text and "wrong" not in r.text  # the address kept, never the password


def test_login_replaces_the_csrf_cookie_so_a_token_from_before_it_signs_nothing(browser: Browser) -> None:
    before = browser.token()
    r = browser.post("/login", {"email": USERS["admin"], "password": PASSWORD, "csrf_token": before})
    assert r.status_code == 303 and "gateway_csrf" in _cookies(r)
    assert browser.post("/keys", {"csrf_token": before, "name": "fixed", "permissions": "servers:read"}
                        ).status_code == 403
    assert browser.create(name="after-login", permissions="servers:read").status_code == 201


def test_an_expired_access_token_is_renewed_with_the_refresh_token(tmp_path: Path, up: Upstream) -> None:
    short = dashboard_gateway(tmp_path / "short", up.url, {"accounts": {"token_lifetime": "1s"}})
    b = Browser(short)
    try:
        assert b.login().status_code == 303
        first = b.http.cookies.get("gateway_session", path="/dashboard")
        time.sleep(2.1)  # the access token has expired (accounts.token_lifetime: 1s)
        r = b.get("/keys")
        assert r.status_code == 200  # not sent to the login: renewed
        renewed = _cookies(r)
        assert {"gateway_session", "gateway_refresh"} <= set(renewed)
        assert b.http.cookies.get("gateway_session", path="/dashboard") != first
        # Refresh tokens are single use: the renewed pair works, and keeps working after the next expiry.
        time.sleep(2.1)
        assert b.get("/keys").status_code == 200
    finally:
        b.close()
        short.stop()


def test_too_many_wrong_passwords_are_answered_429_with_retry_after(gw: Gateway, browser: Browser) -> None:
    gw.cli("users", "create", "locked@example.com", "--role", "viewer", "--password-stdin", input=PASSWORD + "\n")
    statuses = []
    for _ in range(7):
        r = browser.post("/login", {"email": "locked@example.com", "password": "guess", "csrf_token": browser.token()})
        statuses.append(r.status_code)
    assert statuses[:5] == [401] * 5 and statuses[-1] == 429  # accounts.login_failures_per_account: 5
    assert int(r.headers["retry-after"]) > 0 and alerts(r.text) and "gateway_session" not in _cookies(r)


def test_logout_ends_the_session_and_its_refresh_token(browser: Browser) -> None:
    assert browser.login().status_code == 303
    refresh = browser.http.cookies.get("gateway_refresh", path="/dashboard")
    assert refresh
    r = browser.post("/logout", {"csrf_token": browser.token("/keys")})
    assert r.status_code == 303 and r.headers["location"] == "/dashboard/login"
    assert browser.get("/keys").headers["location"] == "/dashboard/login"
    # The old refresh token no longer renews anything, even when the browser still sends it.
    browser.http.cookies.set("gateway_refresh", refresh, domain="127.0.0.1", path="/dashboard")
    assert browser.get("/keys").headers["location"] == "/dashboard/login"


# --- keys --------------------------------------------------------------------------------------------------------


def test_a_key_made_on_the_form_works_through_the_proxy_and_its_value_is_shown_only_once(
        gw: Gateway, up: Upstream, browser: Browser) -> None:
    browser.login()
    r = browser.create(name="ci-pipeline", permissions=["servers:read", "instances:read"], environment="live",
                       expires_at="2099-01-31", ip_whitelist="127.0.0.1\n10.0.0.0/8", rate_limit_tier="")
    assert r.status_code == 201, alerts(r.text)
    value = value_of(r.text)
    assert value and value.startswith("dep_live_")
    assert "API keys are shown only once" in r.text  # the deployERP guide's warning
    assert "location" not in r.headers and value not in str(r.url)
    used = httpx.get(f"{gw.url}/v1/servers/1", headers=bearer(value))
    assert used.status_code == 200
    stored = [k for k in keys_in_store(gw) if k["name"] == "ci-pipeline"][0]
    assert stored["permissions"] == ["servers:read", "instances:read"]
    assert stored["ip_whitelist"] == ["127.0.0.1/32", "10.0.0.0/8"]
    assert stored["expires_at"] == "2099-01-31T00:00:00Z"
    assert str(stored["created_by"]).startswith("user:")
    # The list and the key's page never show the value again.
    listing = browser.get("/keys").text
    assert "ci-pipeline" in listing and value not in listing and f"…{value[-4:]}" in listing
    page = browser.get(f"/keys/{stored['id']}").text
    assert value not in page and "create" in page  # the audit trail's first event


def test_the_form_is_validated_as_the_apis_body_with_the_same_words(browser: Browser) -> None:
    browser.login()
    en = messages.catalogue("deployerp")
    cases = [
        ({"name": "x"}, messages.fill(en["validation_error.permissions_empty"], {"where": "permissions"})),
        ({"name": "x", "permissions": "servers:read", "expires_at": "2001-01-01"},
         messages.fill(en["validation_error.in_the_past"], {"where": "expires_at"})),
        ({"name": "x", "permissions": "servers:read", "ip_whitelist": "not-an-ip"}, None),
        ({"name": "x", "permissions": "servers:read", "environment": "prod"}, None),
    ]
    for fields, words in cases:
        r = browser.create(**fields)
        assert r.status_code == 422, (fields, r.status_code)
        found = alerts(r.text)
        assert len(found) == 1 and found[0], fields
        if words is not None:
            assert found[0] == words
        assert 'name="name"' in r.text and 'value="x"' in r.text  # the form again, as it was filled in


def test_a_user_grants_only_scopes_its_role_holds(gw: Gateway) -> None:
    dev = Browser(gw)
    dev.login(USERS["developer"])
    form = dev.get("/keys/new").text
    boxes = re.findall(r'name="permissions" value="([^"]+)"', form)
    assert "servers:read" in boxes and "servers:write" in boxes
    assert "servers:delete" not in boxes and "billing:read" not in boxes  # the developer role does not hold them
    r = dev.create(name="escalate", permissions=["servers:read", "servers:delete"])
    assert r.status_code == 403 and "servers:delete" in alerts(r.text)[0]
    assert not [k for k in keys_in_store(gw) if k["name"] == "escalate"]
    dev.close()
    viewer = Browser(gw)
    viewer.login(USERS["viewer"])
    assert viewer.get("/keys").status_code == 200
    assert "/keys/new" not in viewer.get("/keys").text
    assert viewer.get("/keys/new").status_code == 403
    assert viewer.post("/keys", {"csrf_token": viewer.token("/keys"), "name": "v", "permissions": "servers:read"}
                       ).status_code == 403
    viewer.close()


def test_a_user_who_is_not_an_admin_sees_and_manages_only_the_keys_the_user_made(gw: Gateway) -> None:
    """A developer's list shows only the keys the developer made; another's key page, revocation page, rotation
    and revocation are the "not found" page an unknown id gets (404, never 403: ids do not leak) and change
    nothing. The admin sees every key."""
    admin, dev = Browser(gw), Browser(gw)
    admin.login()
    dev.login(USERS["developer"])
    assert admin.create(name="admins-only-key", permissions="servers:read").status_code == 201
    assert dev.create(name="devs-only-key", permissions="servers:read").status_code == 201
    stored = keys_in_store(gw)
    ids = {str(k["name"]): str(k["id"]) for k in stored}
    theirs, mine = ids["admins-only-key"], ids["devs-only-key"]
    dev_actor = [k["created_by"] for k in stored if k["id"] == mine][0]
    listing = dev.get("/keys").text
    assert "devs-only-key" in listing and mine in listing
    for k in stored:
        if k["created_by"] != dev_actor:
            assert str(k["id"]) not in listing and str(k["name"]) not in listing
    assert dev.get(f"/keys/{mine}").status_code == 200
    unknown = dev.get("/keys/key_0000000000000000")
    assert unknown.status_code == 404
    token = dev.token(f"/keys/{mine}")
    answers = [dev.get(f"/keys/{theirs}"), dev.get(f"/keys/{theirs}/revoke"),
               dev.post(f"/keys/{theirs}/rotate", {"csrf_token": token, "grace_period": "0"}),
               dev.post(f"/keys/{theirs}/revoke", {"csrf_token": token})]
    for r in answers:
        assert r.status_code == 404 and "admins-only-key" not in r.text
        assert alerts(r.text) == alerts(unknown.text)
    after = [k for k in keys_in_store(gw) if k["id"] == theirs][0]
    assert after["status"] == "active" and len(keys_in_store(gw)) == len(stored)  # not revoked, none rotated
    both = admin.get("/keys").text
    assert "devs-only-key" in both and "admins-only-key" in both
    assert admin.get(f"/keys/{mine}").status_code == 200
    done = dev.post(f"/keys/{mine}/revoke", {"csrf_token": dev.token(f"/keys/{mine}/revoke")})
    assert done.status_code == 303
    admin.close()
    dev.close()


def test_rotate_with_a_grace_period_then_revoke(gw: Gateway, browser: Browser) -> None:
    browser.login()
    old = value_of(browser.create(name="rotating", permissions="servers:read").text)
    assert old
    key_id = [k for k in keys_in_store(gw) if k["name"] == "rotating"][0]["id"]
    r = browser.post(f"/keys/{key_id}/rotate", {"csrf_token": browser.token(f"/keys/{key_id}"), "grace_period": "1h"})
    assert r.status_code == 201
    new = value_of(r.text)
    assert new and new != old
    for value in (old, new):  # the old key works through its grace period
        assert httpx.get(f"{gw.url}/v1/servers", headers=bearer(value)).status_code == 200
    bad = browser.post(f"/keys/{key_id}/rotate", {"csrf_token": browser.token(f"/keys/{key_id}"),
                                                   "grace_period": "soon"})
    assert bad.status_code in (409, 422) and alerts(bad.text)
    new_id = [k for k in keys_in_store(gw) if k["name"] == "rotating" and k["id"] != key_id][0]["id"]
    confirm = browser.get(f"/keys/{new_id}/revoke")
    assert confirm.status_code == 200 and f'action="/dashboard/keys/{new_id}/revoke"' in confirm.text
    done = browser.post(f"/keys/{new_id}/revoke", {"csrf_token": csrf_of(confirm.text)})
    assert done.status_code == 303 and done.headers["location"] == f"/dashboard/keys/{new_id}?notice=revoked"
    assert httpx.get(f"{gw.url}/v1/servers", headers=bearer(new)).status_code == 401  # this process: at once
    trail = browser.get(f"/keys/{new_id}").text
    assert "revoke" in trail and "rotate" in browser.get(f"/keys/{key_id}").text


def test_the_usage_chart_counts_the_requests_of_the_day(gw: Gateway, browser: Browser) -> None:
    browser.login()
    value = value_of(browser.create(name="charted", permissions="servers:read").text)
    key_id = [k for k in keys_in_store(gw) if k["name"] == "charted"][0]["id"]
    for _ in range(3):
        assert httpx.get(f"{gw.url}/v1/servers", headers=bearer(value or "")).status_code == 200

    def today_count() -> int:
        page = browser.get(f"/keys/{key_id}").text
        bars = re.findall(r'<rect class="bar"[^>]*data-count="(\d+)"', page)
        assert len(bars) == 30  # dashboard.usage_days
        assert all(b == "0" for b in bars[:-1])  # a key made today was used today only
        return int(bars[-1])

    wait_for(lambda: today_count() >= 3)  # the usage recorder flushes every 0.2 s
    assert today_count() == 3
    assert "3 requests in the last 30 days" in browser.get(f"/keys/{key_id}").text


# --- assets, paths, languages ------------------------------------------------------------------------------------


def test_every_asset_is_served_by_the_gateway(browser: Browser) -> None:
    browser.login()
    seen = set()
    made = browser.create(name="assets", permissions="servers:read").text
    for page in ("/login", "/keys", "/keys/new", made):
        parser = Assets()
        html = page if page.startswith("<") else browser.get(page).text
        assert " object at 0x" not in html and "<built-in" not in html  # every text is a text
        parser.feed(html)
        for url in parser.loaded + parser.linked:
            assert url.startswith(("/dashboard/", "#")), url  # nothing from a CDN or any other host
        seen.update(parser.loaded)
    assert seen == {"/dashboard/static/dashboard.css", "/dashboard/static/dashboard.js"}
    for url in seen:
        r = browser.http.get(url)
        assert r.status_code == 200 and r.content
    assert browser.http.get("/dashboard/static/../app.py").status_code == 404


def test_a_wrong_path_or_method_gets_a_page_with_a_stable_code_never_a_500(browser: Browser) -> None:
    browser.login()
    for method, page, status, code in (("GET", "/static/missing.css", 404, "not_found"),
                                       ("GET", "/no/such/page", 404, "not_found"),
                                       ("GET", "/logout", 405, "method_not_allowed"),
                                       ("POST", "/static/dashboard.css", 405, "method_not_allowed"),
                                       ("DELETE", "/keys", 405, "method_not_allowed")):
        r = browser.http.request(method, "/dashboard" + page)
        assert r.status_code == status, (method, page, r.status_code)
        assert r.headers["content-type"].startswith("text/html")
        assert f"<code>{code}</code>" in r.text and r.headers["content-security-policy"]
        if status == 405:
            assert r.headers["allow"]
    assert browser.get("/keys/new", headers={"content-type": "text/plain"}).status_code == 200
    r = browser.post("/keys", {"csrf_token": browser.token("/keys/new"), **{f"f{i}": "x" for i in range(500)}})
    assert r.status_code == 422 and "validation_error" in r.text  # too many fields: refused, not parsed
    big = browser.http.post("/dashboard/keys", content=b"name=" + b"x" * (70 * 1024),
                            headers={"content-type": "application/x-www-form-urlencoded"})
    assert big.status_code == 422 and "validation_error" in big.text


def test_the_dashboard_can_be_moved_and_switched_off(tmp_path: Path, up: Upstream) -> None:
    moved = dashboard_gateway(tmp_path / "moved", up.url, {"dashboard": {"path": "/console"}})
    try:
        b = Browser(moved, "/console")
        assert b.login().headers["location"] == "/console/keys"
        assert b.get("/keys").status_code == 200
        assert httpx.get(f"{moved.url}/dashboard/login").status_code == 401  # the gate's: no such page
        assert httpx.get(f"{moved.url}/consoles").status_code == 401  # only the path and below it are the pages
        b.close()
    finally:
        moved.stop()
    off = dashboard_gateway(tmp_path / "off", up.url, {"dashboard": {"enabled": False}})
    try:
        r = httpx.get(f"{off.url}/dashboard/login")
        assert r.status_code == 401 and r.json()["error"]["code"] == "authentication_required"
    finally:
        off.stop()


def test_the_deployally_dashboard_is_in_portuguese(tmp_path: Path, up: Upstream) -> None:
    ally = dashboard_gateway(tmp_path / "ally", up.url, {
        "error_format": "deployally", "key_format": "deployally", "management": {"prefix": "/api/v1"},
        "policies": str(Path(__file__).resolve().parents[2] / "policies" / "deployally.yaml")})
    try:
        b = Browser(ally)
        page = b.get("/login").text
        assert '<html lang="pt-BR">' in page and "Entrar" in page
        wrong = b.post("/login", {"email": USERS["admin"], "password": "errada", "csrf_token": b.token()})
        assert wrong.status_code == 401 and alerts(wrong.text)[0] in messages.catalogue("deployally").values()
        b.login()
        made = b.create(name="pt", permissions="templates:read", allowed_ips="127.0.0.1")
        assert made.status_code == 201
        assert (value_of(made.text) or "").startswith("da_")
        assert "não será exibida novamente" in made.text  # the DeployAlly guide's warning
        b.close()
    finally:
        ally.stop()


def test_the_page_texts_have_the_same_ids_in_both_languages() -> None:
    en, pt = messages.page_texts("deployerp"), messages.page_texts("deployally")
    assert set(en) == set(pt)
    for text_id in en:
        assert messages.placeholders(en[text_id]) == messages.placeholders(pt[text_id]), text_id
    templates = Path(__file__).resolve().parents[2] / "gateway" / "admin" / "dashboard" / "templates"
    used = set(re.findall(r"\bt\.([a-z_]+)", "".join(p.read_text() for p in templates.glob("*.html"))))
    assert used - set(en) == set()  # every text a template names exists


def test_no_secret_reaches_the_log(gw: Gateway, browser: Browser) -> None:
    """The key values, the password and the session tokens appear in no log line (access log included)."""
    browser.login()
    session = browser.http.cookies.get("gateway_session", path="/dashboard") or ""
    value = value_of(browser.create(name="secret-check", permissions="servers:read").text) or ""
    browser.post("/login", {"email": USERS["admin"], "password": "wrong-" + PASSWORD, "csrf_token": browser.token()})
    assert session and value
    log = gw.log()
    assert_no_secret(log, [value])
    assert PASSWORD not in log and session not in log


def test_an_installed_wheel_has_every_template_asset_and_text() -> None:
    """Every file the dashboard reads at run time is matched by pyproject's package-data, so a wheel has it."""
    import fnmatch
    import tomllib

    root = Path(__file__).resolve().parents[2]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["gateway"]
    pkg = root / "gateway"
    needed = [*(pkg / "admin" / "dashboard").glob("templates/*"), *(pkg / "admin" / "dashboard").glob("static/*"),
              *(pkg / "messages").glob("*.yaml")]
    assert len(needed) >= 12
    for path in needed:
        rel = path.relative_to(pkg).as_posix()
        assert any(fnmatch.fnmatch(rel, p) for p in patterns), f"{rel} is not package data"


def test_the_deployally_demo_prints_its_dashboard_where_its_user_logs_in() -> None:
    d = Demo(free_port(), platform="deployally")
    try:
        found = re.search(r"dashboard in a browser: (http://\S+)", d.out)
        assert found and found.group(1) == d.base + "/dashboard"
        b = Browser(SimpleNamespace(url=d.base))  # type: ignore[arg-type]
        assert b.login("usuario@exemplo.com", "senha").headers["location"] == "/dashboard/keys"
        listing = b.get("/keys").text
        assert "CI/CD Pipeline" in listing and "Servidor Produção" in listing and "Situação" in listing
        b.close()
    finally:
        end_demo(d)


def test_the_dashboard_over_a_redis_store(tmp_path: Path, up: Upstream, redis_server: RedisServer | str) -> None:
    """The same pages over the Redis store (its users, audit trail and per-day usage): a test key made, used,
    charted and revoked. With Redis, every gateway refuses a revoked key within a second."""
    url = fresh_db(redis_server)
    gw = dashboard_gateway(tmp_path / "redis", up.url, {"store": {"url": url}, "cache": {"ttl_seconds": 60},
                                                        "upstream": {"environments": {"test": up.url}}})
    b = Browser(gw)
    try:
        b.login()
        made = b.create(name="on-redis", permissions="servers:read", environment="test")
        value = value_of(made.text) or ""
        assert made.status_code == 201 and value.startswith("dep_test_")
        assert httpx.get(f"{gw.url}/v1/servers", headers=bearer(value)).status_code == 200
        key_id = re.search(r"/keys/(key_[A-Za-z0-9_-]+)", made.text).group(1)  # type: ignore[union-attr]

        def charted() -> bool:
            return 'data-count="1"' in b.get(f"/keys/{key_id}").text

        assert wait_for(charted)
        page = b.get(f"/keys/{key_id}").text
        assert "<dd>test</dd>" in page and "<td>create</td>" in page
        done = b.post(f"/keys/{key_id}/revoke", {"csrf_token": csrf_of(b.get(f"/keys/{key_id}/revoke").text)})
        assert done.status_code == 303
        assert httpx.get(f"{gw.url}/v1/servers", headers=bearer(value)).status_code == 401
        assert value.encode() not in dump(url)
    finally:
        b.close()
        gw.stop()
