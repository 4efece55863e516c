"""Defence 6 of docs/security.md: malformed credentials always get 401 with the JSON error body, never 500, never
the key echoed.

``K`` is the shared gateway's real ``servers:read`` key: every malformed form below is built from it, so a
parser that "helpfully" repaired one (trimmed a space, lower-cased a scheme, split a comma) would let it
through and the upstream would see the request. Control bytes other than tab never get that far: the HTTP
parser refuses the header line itself with a JSON 400.
"""

from __future__ import annotations

import base64

import pytest

from tests.security.conftest import Env
from tests.support.attack import exchange, request

# name -> Authorization value as a function of the real key value
MALFORMED = {
    "bearer-no-key": lambda k: b"Bearer",
    "bearer-spaces-only": lambda k: b"Bearer    ",
    "empty": lambda k: b"",
    "basic": lambda k: b"Basic " + base64.b64encode(k + b":"),
    "basic-key-as-password": lambda k: b"Basic " + base64.b64encode(b"user:" + k),
    "token-scheme": lambda k: b"Token " + k,
    "apikey-scheme": lambda k: b"ApiKey " + k,
    "no-scheme": lambda k: k,
    "lowercase-scheme": lambda k: b"bearer " + k,
    "uppercase-scheme": lambda k: b"BEARER " + k,
    "scheme-no-space": lambda k: b"Bearer" + k,
    "scheme-colon": lambda k: b"Bearer: " + k,
    "two-spaces": lambda k: b"Bearer  " + k,
    "tab-before-key": lambda k: b"Bearer\t" + k,
    "tab-in-key": lambda k: b"Bearer " + k[:12] + b"\t" + k[12:],
    "space-in-key": lambda k: b"Bearer " + k[:12] + b" " + k[12:],
    "trailing-word": lambda k: b"Bearer " + k + b" extra",
    "comma-joined": lambda k: b"Bearer " + k + b"," + k,
    "comma-space-joined": lambda k: b"Bearer " + k + b", " + k,
    "two-bearers": lambda k: b"Bearer " + k + b", Bearer " + k,
    "semicolon-joined": lambda k: b"Bearer " + k + b";" + k,
    "quoted": lambda k: b'Bearer "' + k + b'"',
    "non-ascii-utf8": lambda k: b"Bearer " + k[:-1] + "é".encode(),
    "non-ascii-latin1": lambda k: b"Bearer " + k[:-1] + b"\xe9",
    "non-ascii-appended": lambda k: b"Bearer " + k + "\u200b".encode(),
    "ten-kb": lambda k: b"Bearer " + k + b"A" * 10_240,
    "ten-kb-junk": lambda k: b"Bearer " + b"dep_live_" + b"A" * 10_240,
    "truncated": lambda k: b"Bearer " + k[:-1],
    "extended": lambda k: b"Bearer " + k + b"0",
    "bad-checksum": lambda k: b"Bearer " + k[:-1] + (b"A" if k[-1:] != b"A" else b"B"),
    "case-flipped": lambda k: b"Bearer " + k.swapcase(),
    "other-platform-prefix": lambda k: b"Bearer da_" + k[len(b"dep_live_"):],
    "test-prefix": lambda k: b"Bearer dep_test_" + k[len(b"dep_live_"):],
    "jwt-shaped": lambda k: b"Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
    "url-encoded": lambda k: b"Bearer " + k.replace(b"_", b"%5F"),
    "base64-of-key": lambda k: b"Bearer " + base64.b64encode(k),
}

CONTROL_BYTES = [b"\x00", b"\x01", b"\x08", b"\x0b", b"\x0c", b"\x1b", b"\x7f"]


def _assert_refused_without_echo(env: Env, raw: bytes, statuses: tuple[int, ...] = (401,)) -> None:
    key = env.reader["value"].encode()
    assert raw.startswith(b"HTTP/1.1 "), raw[:100]
    status = int(raw.split(b" ", 2)[1])
    assert status in statuses, raw[:300]
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower()
    import json

    doc = json.loads(body)
    assert doc["error"]["code"] in ("authentication_required", "invalid_token", "invalid_request")
    assert doc["error"]["status"] == status
    if status == 401:
        assert b"www-authenticate: bearer" in head.lower()
    for piece in (key, key[len(b"dep_live_"):], key[9:21], b"A" * 64):
        assert piece not in raw


def test_control_the_key_itself_works(env: Env) -> None:
    ex = exchange(env.port, request("GET", "/v1/servers", env.auth()))
    assert ex.status == 200
    assert len(env.seen()) == 1


def test_trailing_whitespace_is_not_part_of_the_field(env: Env) -> None:
    """RFC 9110 5.5: whitespace around a field value is not part of it, so this is the key, accepted."""
    ex = exchange(env.port, request("GET", "/v1/servers", env.auth() + b"  \t"))
    assert ex.status == 200


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_credential_is_401(env: Env, name: str) -> None:
    value = MALFORMED[name](env.reader["value"].encode())
    ex = exchange(env.port, request("GET", "/v1/servers", b"Authorization: " + value))
    _assert_refused_without_echo(env, ex.raw)
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
