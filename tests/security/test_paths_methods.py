"""One path, checked and forwarded; methods are case-sensitive and unknown ones denied.

Every attack is sent with a key that *would* be allowed on the path the attacker pretends to ask for
(``servers:read``), aiming at a path it must not reach (``/v1/invoices``, ``billing:read``) or at the
upstream's parser. The gateway must refuse it itself (400 / 405, JSON body) and the recording upstream must
have received nothing.
"""

from __future__ import annotations

import pytest

from tests.security.conftest import Env
from tests.support.attack import exchange, request

AMBIGUOUS_TARGETS = [
    # dot segments, raw and encoded (an upstream that normalises would serve /v1/invoices)
    b"/v1/servers/../invoices",
    b"/v1/servers/./1",
    b"/v1/servers/%2e%2e/invoices",
    b"/v1/servers/%2E%2E/invoices",
    b"/v1/servers/.%2e/invoices",
    b"/v1/servers/%2e/1",
    b"/v1/servers/%252e%252e/invoices",  # double-encoded: a twice-decoding upstream sees ..
    # encoded slash and backslash, raw backslash
    b"/v1/servers%2f..%2finvoices",
    b"/v1/servers/1%2F2",
    b"/v1/servers/%5C..%5Cinvoices",
    b"/v1/servers/1%5c2",
    b"/v1/servers/\\..\\invoices",
    # ;path parameters (Tomcat and friends drop them: /v1/servers;/../invoices is /v1/invoices there)
    b"/v1/servers;/../invoices",
    b"/v1/servers/1;jsessionid=x",
    # NUL and control bytes, encoded (raw ones are below: the HTTP parser refuses them)
    b"/v1/servers/1%00.json",
    b"/v1/servers/1%0d%0aX-Injected:%20yes",
    b"/v1/servers/1%09",
    b"/v1/servers/1%7f",
    # overlong and invalid UTF-8 (%c0%ae is an overlong '.', %c0%af an overlong '/')
    b"/v1/servers/%c0%ae%c0%ae/invoices",
    b"/v1/servers/%c0%af",
    b"/v1/servers/%e0%80%ae%e0%80%ae/invoices",
    b"/v1/servers/%ff",
    b"/v1/servers/%ed%a0%80",  # a UTF-16 surrogate
    # empty segments, malformed escapes
    b"//v1/servers",
    b"/v1//servers",
    b"/v1/servers/%zz",
    b"/v1/servers/%2",
    # not origin-form: absolute-form, authority-form, asterisk, a fragment
    b"http://evil.example/v1/invoices",
    b"http://127.0.0.1/v1/servers",
    b"HTTPS://evil.example/v1/servers",
    b"//evil.example/v1/servers",
    b"evil.example:443",
    b"*",
    b"/v1/servers#/../../invoices",
]


def test_control_request_is_forwarded_byte_for_byte(env: Env) -> None:
    """The positive control: the same key and a clean path pass, so every refusal below is the attack's."""
    ex = exchange(env.port, request("GET", "/v1/servers/srv-1?x=%2F", env.auth()))
    assert ex.status == 200
    seen = env.seen()
    assert [r["target"] for r in seen] == ["/v1/servers/srv-1?x=%2F"]


@pytest.mark.parametrize("target", AMBIGUOUS_TARGETS, ids=lambda t: t.decode("latin-1"))
def test_ambiguous_target_is_refused(env: Env, target: bytes) -> None:
    ex = exchange(env.port, request("GET", target, env.auth()))
    assert ex.status == 400, ex.raw[:300]
    doc = ex.first.json()
    assert doc["error"]["code"] == "invalid_request"
    assert env.seen() == []


@pytest.mark.parametrize("target", [b"/v1/servers/a\x00b", b"/v1/servers/a\x01b", b"/v1/servers/a\x7fb",
                                    b"/v1/servers/\xc3\xa9", b"/v1/servers/\xc0\xae\xc0\xae/invoices",
                                    b"/v1/servers/a b"], ids=repr)
def test_raw_control_and_non_ascii_bytes_in_target_are_refused(env: Env, target: bytes) -> None:
    ex = exchange(env.port, request("GET", target, env.auth()))
    assert ex.status == 400, ex.raw[:300]
    assert ex.first.json()["error"]["code"] == "invalid_request"
    assert ex.closed
    assert env.seen() == []


# Characters that Unicode compatibility normalisation (NFKC) turns into ".", "/" or "\\": an upstream that
# normalises the decoded path (Python's unicodedata, Java's Normalizer, .NET's string.Normalize) would read
# ．． as .. and ／ as /, and serve /v1/invoices to a key that may only read /v1/servers.
NFKC_TARGETS = {
    "fullwidth-dot-dot": b"/v1/servers/%EF%BC%8E%EF%BC%8E/invoices",
    "fullwidth-solidus": b"/v1/servers%EF%BC%8F..%EF%BC%8Finvoices",
    "fullwidth-reverse-solidus": b"/v1/servers/%EF%BC%BC..%EF%BC%BCinvoices",
    "one-dot-leaders": b"/v1/servers/%E2%80%A4%E2%80%A4/invoices",
    "two-dot-leader": b"/v1/servers/%E2%80%A5/invoices",
    "small-full-stops": b"/v1/servers/%EF%B9%92%EF%B9%92/invoices",
    "lower-case-hex": b"/v1/servers/%ef%bc%8e%ef%bc%8e/invoices",
    "raw-utf8-fullwidth-dot-dot": "/v1/servers/\uff0e\uff0e/invoices".encode(),
    "raw-utf8-fullwidth-solidus": "/v1/servers\uff0f..\uff0finvoices".encode(),
}


@pytest.mark.parametrize("name", sorted(NFKC_TARGETS))
def test_nfkc_forms_of_dot_and_slash_are_refused(env: Env, name: str) -> None:
    """RFC 3986 6.2.2 leaves normalisation beyond case and escapes to the scheme, and servers differ: a path
    that Unicode compatibility normalisation (NFKC, Unicode Standard Annex 15) turns into a dot segment or
    separator is refused (400), raw or percent-encoded, and the upstream receives nothing."""
    ex = exchange(env.port, request("GET", NFKC_TARGETS[name], env.auth()))
    assert ex.status == 400, ex.raw[:300]
    assert ex.first.json()["error"]["code"] == "invalid_request"
    assert env.seen() == []


def test_ordinary_non_ascii_letters_percent_encoded_are_forwarded(env: Env) -> None:
    """The control for the test above: é, ü, € and ½ (NFKC: 1⁄2, a fraction slash) are data and pass."""
    target = b"/v1/servers/caf%C3%A9-%C3%BC-%E2%82%AC-%C2%BD"
    ex = exchange(env.port, request("GET", target, env.auth()))
    assert ex.status == 200, ex.raw[:300]
    assert [r["target"] for r in env.seen()] == [target.decode()]


@pytest.mark.parametrize("target", [b"evil.example:443", b"127.0.0.1:22", b"/v1/servers"])
def test_connect_is_405_never_a_tunnel(env: Env, target: bytes) -> None:
    ex = exchange(env.port, request("CONNECT", target, env.auth(), host=b"evil.example:443"))
    assert ex.status == 405, ex.raw[:300]
    assert ex.first.json()["error"]["code"] == "method_not_allowed"
    assert ex.closed  # never switched to a tunnel
    assert env.seen() == []


@pytest.mark.parametrize("method", ["get", "Get", "gEt", "post", "FOO", "GETS", "G-ET", "TRACE", "TRACK",
                                    "PROPFIND", "MOVE", "PURGE", "SEARCH", "QUERY", "LINK", "PRI"])
def test_lowercase_and_unknown_methods_are_denied(env: Env, method: str) -> None:
    """Methods are case-sensitive (RFC 9110 9.1): ``get`` is not GET. Unknown ones never reach the upstream,
    whether the HTTP parser refuses the token (400) or the gateway does (405)."""
    ex = exchange(env.port, request(method, "/v1/servers", env.auth()))
    assert ex.status in (400, 405), ex.raw[:300]
    assert ex.first.json()["error"]["code"] in ("invalid_request", "method_not_allowed")
    assert env.seen() == []


def test_http09_and_unknown_versions_are_refused(env: Env) -> None:
    for raw in (b"GET /v1/servers\r\n\r\n", request("GET", "/v1/servers", env.auth(), version=b"HTTP/2.0"),
                request("GET", "/v1/servers", env.auth(), version=b"HTTP/1.2"),
                request("GET", "/v1/servers", env.auth(), version=b"http/1.1")):
        ex = exchange(env.port, raw)
        assert ex.status == 400, (raw, ex.raw[:300])
        assert ex.closed
    assert env.seen() == []
