"""Malformed credentials always get 401 with the JSON error body, never 500, never the key echoed.

``K`` is the shared gateway's real ``servers:read`` key: every malformed form below is built from it, so a
parser that "helpfully" repaired one (trimmed a space inside, split a comma, dropped a quote) would let it
through and the upstream would see the request. What RFC 9110 11 itself allows is not a repair: the scheme is
case-insensitive (11.1) and one or more spaces separate it from the token (11.4), so ``bearer K``, ``BEARER K``
and ``Bearer   K`` are the key. Control bytes other than tab never get that far: the HTTP parser refuses the
header line itself with a JSON 400.
"""

from __future__ import annotations

import base64
import json

import pytest

from tests.security.conftest import Env
from tests.support.attack import exchange, request

EXPECTED = "Authorization: Bearer <key>"
# What a 401 message names, per problem; "unknown" is a well-formed token that is no valid key.
PROBLEM = {
    "missing": "No authentication token provided",
    "scheme": "scheme is not Bearer",
    "separator": "Bearer must be followed by a space",
    "one-token": "one key after Bearer",
    "characters": "characters",
    "length": "longer than 8192 bytes",
    "unknown": "The authentication token is invalid",
}

# name -> (Authorization value as a function of the real key value, the problem the answer must name)
MALFORMED = {
    "bearer-no-key": (lambda k: b"Bearer", "missing"),
    "bearer-spaces-only": (lambda k: b"Bearer    ", "missing"),
    "empty": (lambda k: b"", "missing"),
    "basic": (lambda k: b"Basic " + base64.b64encode(k + b":"), "scheme"),
    "basic-key-as-password": (lambda k: b"Basic " + base64.b64encode(b"user:" + k), "scheme"),
    "token-scheme": (lambda k: b"Token " + k, "scheme"),
    "apikey-scheme": (lambda k: b"ApiKey " + k, "scheme"),
    "no-scheme": (lambda k: k, "scheme"),
    "scheme-no-space": (lambda k: b"Bearer" + k, "separator"),
    "scheme-colon": (lambda k: b"Bearer: " + k, "separator"),
    "tab-before-key": (lambda k: b"Bearer\t" + k, "separator"),  # 1*SP: a tab is not a separator
    "tab-in-key": (lambda k: b"Bearer " + k[:12] + b"\t" + k[12:], "one-token"),
    "space-in-key": (lambda k: b"Bearer " + k[:12] + b" " + k[12:], "one-token"),
    "trailing-word": (lambda k: b"Bearer " + k + b" extra", "one-token"),
    "two-tokens-after-spaces": (lambda k: b"bearer   " + k + b" " + k, "one-token"),
    "comma-joined": (lambda k: b"Bearer " + k + b"," + k, "one-token"),
    "comma-space-joined": (lambda k: b"Bearer " + k + b", " + k, "one-token"),
    "two-bearers": (lambda k: b"Bearer " + k + b", Bearer " + k, "one-token"),
    "semicolon-joined": (lambda k: b"Bearer " + k + b";" + k, "characters"),
    "quoted": (lambda k: b'Bearer "' + k + b'"', "characters"),
    "auth-param": (lambda k: b"Bearer key=" + k, "characters"),
    "non-ascii-utf8": (lambda k: b"Bearer " + k[:-1] + "é".encode(), "characters"),
    "non-ascii-latin1": (lambda k: b"Bearer " + k[:-1] + b"\xe9", "characters"),
    "non-ascii-appended": (lambda k: b"Bearer " + k + "\u200b".encode(), "characters"),
    "non-ascii-lowercase-scheme": (lambda k: b"bearer " + k[:-1] + b"\xe9", "characters"),
    "ten-kb": (lambda k: b"Bearer " + k + b"A" * 10_240, "length"),
    "ten-kb-junk": (lambda k: b"Bearer " + b"dep_live_" + b"A" * 10_240, "length"),
    "truncated": (lambda k: b"Bearer " + k[:-1], "unknown"),
    "extended": (lambda k: b"Bearer " + k + b"0", "unknown"),
    "bad-checksum": (lambda k: b"Bearer " + k[:-1] + (b"A" if k[-1:] != b"A" else b"B"), "unknown"),
    "case-flipped": (lambda k: b"Bearer " + k.swapcase(), "unknown"),
    "other-platform-prefix": (lambda k: b"Bearer da_" + k[len(b"dep_live_"):], "unknown"),
    "test-prefix": (lambda k: b"Bearer dep_test_" + k[len(b"dep_live_"):], "unknown"),
    "jwt-shaped": (lambda k: b"Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.", "unknown"),
    "url-encoded": (lambda k: b"Bearer " + k.replace(b"_", b"%5F"), "characters"),
    "base64-of-key": (lambda k: b"Bearer " + base64.b64encode(k), "unknown"),
}

# RFC 9110 11.1 (the scheme is case-insensitive) and 11.4 (1*SP before the token): each of these is the key.
SPELLINGS = {
    "canonical": b"Bearer ",
    "lowercase": b"bearer ",
    "uppercase": b"BEARER ",
    "mixed-case": b"bEaReR ",
    "two-spaces": b"Bearer  ",
    "many-spaces": b"Bearer     ",
    "lowercase-many-spaces": b"bearer   ",
}

CONTROL_BYTES = [b"\x00", b"\x01", b"\x08", b"\x0b", b"\x0c", b"\x1b", b"\x7f"]


def _assert_refused_without_echo(env: Env, raw: bytes, statuses: tuple[int, ...] = (401,)) -> dict[str, str]:
    """The error of a refusal, after checking it is a complete JSON answer that echoes no part of the key."""
    key = env.reader["value"].encode()
    assert raw.startswith(b"HTTP/1.1 "), raw[:100]
    status = int(raw.split(b" ", 2)[1])
    assert status in statuses, raw[:300]
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower()
    doc = json.loads(body)
    assert doc["error"]["code"] in ("authentication_required", "invalid_token", "invalid_request")
    assert doc["error"]["status"] == status
    if status == 401:
        assert b"www-authenticate: bearer" in head.lower()
    for piece in (key, key[len(b"dep_live_"):], key[9:21], b"A" * 64):
        assert piece not in raw
    return doc["error"]  # type: ignore[no-any-return]


def test_control_the_key_itself_works(env: Env) -> None:
    ex = exchange(env.port, request("GET", "/v1/servers", env.auth()))
    assert ex.status == 200
    assert len(env.seen()) == 1


def test_trailing_whitespace_is_not_part_of_the_field(env: Env) -> None:
    """RFC 9110 5.5: whitespace around a field value is not part of it, so this is the key, accepted."""
    ex = exchange(env.port, request("GET", "/v1/servers", env.auth() + b"  \t"))
    assert ex.status == 200


@pytest.mark.parametrize("name", sorted(SPELLINGS))
def test_scheme_in_any_case_and_one_or_more_spaces_is_the_key(env: Env, name: str) -> None:
    """RFC 9110 11.1: the auth-scheme is case-insensitive. 11.4: ``credentials = auth-scheme [ 1*SP ( token68 /
    #auth-param ) ]``, one or more spaces. Each spelling authenticates the key and reaches the upstream once."""
    value = SPELLINGS[name] + env.reader["value"].encode()
    ex = exchange(env.port, request("GET", "/v1/servers", b"Authorization: " + value + b" \t"))
    assert ex.status == 200, ex.raw[:300]
    assert [r["target"] for r in env.seen()] == ["/v1/servers"]


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_credential_is_401(env: Env, name: str) -> None:
    """Anything else is 401; a header that is not ``Bearer <one token68>`` (RFC 9110 11.4) is ``invalid_token``
    with a message naming what is wrong and the form expected, a well-formed token that is no valid key the
    plain ``invalid_token``, and no token at all ``authentication_required`` (RFC 6750 3.1)."""
    make, problem = MALFORMED[name]
    ex = exchange(env.port, request("GET", "/v1/servers", b"Authorization: " + make(env.reader["value"].encode())))
    error = _assert_refused_without_echo(env, ex.raw)
    assert error["code"] == ("authentication_required" if problem == "missing" else "invalid_token")
    assert PROBLEM[problem] in error["message"], error
    if problem not in ("missing", "unknown"):
        assert EXPECTED in error["message"]
        # The challenge carries the same description (RFC 6750 3: error_description).
        challenge = ex.first.header("www-authenticate") or ""
        assert 'error="invalid_token"' in challenge and PROBLEM[problem] in challenge
    assert env.seen() == []


@pytest.mark.parametrize("byte", CONTROL_BYTES, ids=lambda b: f"0x{b[0]:02x}")
def test_control_bytes_in_the_credential_never_pass(env: Env, byte: bytes) -> None:
    key = env.reader["value"].encode()
    ex = exchange(env.port, request("GET", "/v1/servers", b"Authorization: Bearer " + key[:12] + byte + key[12:]))
    _assert_refused_without_echo(env, ex.raw, (400, 401))
    assert env.seen() == []


@pytest.mark.parametrize("param", ["api_key", "apikey", "key", "access_token", "token", "Authorization"])
def test_key_in_the_query_string_is_not_a_credential(env: Env, param: str) -> None:
    key = env.reader["value"]
    ex = exchange(env.port, request("GET", f"/v1/servers?{param}={key}"))
    _assert_refused_without_echo(env, ex.raw)
    assert ex.first.json()["error"]["code"] == "authentication_required"
    assert env.seen() == []


def test_key_in_other_headers_is_not_a_credential(env: Env) -> None:
    key = env.reader["value"].encode()
    ex = exchange(env.port, request("GET", "/v1/servers", b"X-API-Key: " + key, b"Api-Key: " + key,
                                    b"Cookie: api_key=" + key, b"Proxy-Authorization: Bearer " + key))
    _assert_refused_without_echo(env, ex.raw)
    assert env.seen() == []


def test_no_credential_ever_reached_the_log(env: Env) -> None:
    """After everything above (and every other test on the shared gateway): the key is not in its log."""
    exchange(env.port, request("GET", "/v1/servers", b"Authorization: Bearer " + env.reader["value"].encode()[:-1]))
    log = env.gateway.log()
    assert "Traceback" not in log
    for key in (env.reader, env.writer, env.office):
        assert key["value"] not in log
        assert key["value"][len("dep_live_"):] not in log
