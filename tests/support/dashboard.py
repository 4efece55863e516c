"""Helpers for the dashboard's tests (tests/e2e/test_dashboard*.py): a real `gateway serve` with user accounts
and the dashboard on, users made with the real CLI, and a plain-HTTP browser stand-in that keeps cookies and
reads each page's CSRF token the way a form would send it."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx

from tests.support.procs import Gateway

PASSWORD = "correct horse battery staple"
USERS = {"admin": "admin@example.com", "developer": "dev@example.com", "viewer": "viewer@example.com"}
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
_VALUE = re.compile(r'id="key-value"[^>]*value="([^"]+)"')
_ALERT = re.compile(r'role="alert"[^>]*>(.*?)</p>', re.S)


def dashboard_gateway(work: Path, upstream_url: str, settings: dict[str, Any] | None = None) -> Gateway:
    """A gateway with accounts (and so the dashboard) on and one user per role of the policy (:data:`USERS`).
    The key cache holds entries 1 s: the revocation bound the tests hold the dashboard to."""
    base: dict[str, Any] = {"accounts": {"enabled": True}, "usage": {"flush_seconds": 0.2},
                            "cache": {"ttl_seconds": 1}}
    for k, v in (settings or {}).items():
        base[k] = {**base[k], **v} if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    gw = Gateway(work, upstream_url, base)
    for role, email in USERS.items():
        gw.cli("users", "create", email, "--role", role, "--password-stdin", input=PASSWORD + "\n")
    return gw


def csrf_of(html: str) -> str:
    found = _CSRF.search(html)
    assert found, "the page has no form with a CSRF token"
    return found.group(1)


def value_of(html: str) -> str | None:
    found = _VALUE.search(html)
    return found.group(1) if found else None


def alerts(html: str) -> list[str]:
    return [re.sub(r"<[^>]+>", "", a).strip() for a in _ALERT.findall(html)]


class Browser:
    """Cookies kept, redirects not followed (the tests look at each answer)."""

    def __init__(self, gw: Gateway, path: str = "/dashboard") -> None:
        self.gw = gw
        self.path = path
        self.http = httpx.Client(base_url=gw.url, timeout=10)

    def get(self, page: str, **kw: Any) -> httpx.Response:
        return self.http.get(self.path + page, **kw)

    def post(self, page: str, data: dict[str, Any], **kw: Any) -> httpx.Response:
        return self.http.post(self.path + page, data=data, **kw)

    def token(self, page: str = "/login") -> str:
        return csrf_of(self.get(page).text)

    def login(self, email: str = USERS["admin"], password: str = PASSWORD) -> httpx.Response:
        return self.post("/login", {"email": email, "password": password, "csrf_token": self.token()})

    def create(self, **fields: Any) -> httpx.Response:
        return self.post("/keys", {"csrf_token": self.token("/keys/new"), **fields})

    def close(self) -> None:
        self.http.close()


class Assets(HTMLParser):
    """Every URL a page loads or links to: script src, link href, img src, form action, a href."""

    def __init__(self) -> None:
        super().__init__()
        self.loaded: list[str] = []
        self.linked: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        for name in ("src", "href", "action"):
            url = a.get(name)
            if url is None:
                continue
            (self.linked if tag in ("a", "form") else self.loaded).append(url)
