"""gateway/paths.py: which raw request paths the gateway accepts, and the segments the policy then sees.

Table-driven: every row is a raw path as it arrives on the wire (bytes, before any decoding)."""

from __future__ import annotations

import pytest

from gateway.errors import BadRequest
from gateway.paths import PathError, split_path

ACCEPTED: list[tuple[bytes, list[str]]] = [
    (b"/", []),
    (b"/v1", ["v1"]),
    (b"/v1/servers", ["v1", "servers"]),
    (b"/v1/servers/", ["v1", "servers"]),  # one trailing slash is ignored for matching
    (b"/v1/servers/srv_123", ["v1", "servers", "srv_123"]),
    (b"/v1/%73ervers", ["v1", "servers"]),  # an encoded unreserved character means the character itself
    (b"/v1/%73%65rvers", ["v1", "servers"]),
    (b"/v1/servers/a%20b", ["v1", "servers", "a b"]),
    (b"/v1/servers/a%3Bb", ["v1", "servers", "a;b"]),  # encoded ';' is data, not a parameter separator
    (b"/v1/servers/%E2%82%AC", ["v1", "servers", "\u20ac"]),  # valid UTF-8
    (b"/v1/servers/%e2%82%ac", ["v1", "servers", "\u20ac"]),
    (b"/v1/servers/a.b", ["v1", "servers", "a.b"]),
    (b"/v1/servers/...", ["v1", "servers", "..."]),  # three dots are a name, not a dot segment
    (b"/v1/servers/.hidden", ["v1", "servers", ".hidden"]),
    (b"/v1/servers/a*b", ["v1", "servers", "a*b"]),
    (b"/v1/servers/~user", ["v1", "servers", "~user"]),
    (b"/v1/servers/a:b@c", ["v1", "servers", "a:b@c"]),
    (b"/v1/servers/!$&'()+,=-_", ["v1", "servers", "!$&'()+,=-_"]),
    (b"/v1/servers/100%25", ["v1", "servers", "100%"]),  # a lone encoded '%' is data
    (b"/v1/servers/%25zz", ["v1", "servers", "%zz"]),
    (b"/V1/Servers", ["V1", "Servers"]),  # case is kept: matching is case-sensitive
]

REFUSED: list[tuple[bytes, str]] = [
    (b"", "empty"),
    (b"v1/servers", "no leading slash"),
    (b"*", "asterisk-form"),
    (b"http://evil.example/v1/servers", "absolute-form"),
    (b"evil.example:443", "authority-form"),
    (b"//v1/servers", "leading empty segment"),
    (b"/v1//servers", "empty segment"),
    (b"/v1/servers//", "two trailing slashes"),
    (b"/.", "dot segment"),
    (b"/..", "dot-dot segment"),
    (b"/v1/./servers", "dot segment"),
    (b"/v1/servers/../invoices", "dot-dot segment"),
    (b"/v1/servers/..", "trailing dot-dot"),
    (b"/v1/servers/.", "trailing dot"),
    (b"/v1/servers/%2e%2e/invoices", "encoded dot-dot"),
    (b"/v1/servers/%2E%2E/invoices", "encoded dot-dot, upper case"),
    (b"/v1/servers/%2E%2e/invoices", "encoded dot-dot, mixed case"),
    (b"/v1/servers/.%2e/invoices", "half-encoded dot-dot"),
    (b"/v1/servers/%2e./invoices", "half-encoded dot-dot"),
    (b"/v1/servers/%2e", "encoded dot"),
    (b"/v1/servers%2f..%2finvoices", "encoded slash"),
    (b"/v1/servers/a%2Fb", "encoded slash, upper case"),
    (b"/v1/servers/a%5cb", "encoded backslash"),
    (b"/v1/servers/a%5Cb", "encoded backslash, upper case"),
    (b"/v1/servers\\..\\invoices", "raw backslash"),
    (b"/v1/servers/a\\b", "raw backslash"),
    (b"/v1/servers;x=1", "path parameter"),
    (b"/v1/servers/..;/invoices", "Tomcat-style path parameter"),
    (b"/v1/servers/a;b", "semicolon"),
    (b"/v1/servers/a%00b", "encoded NUL"),
    (b"/v1/servers/a\x00b", "raw NUL"),
    (b"/v1/servers/a%0ab", "encoded LF"),
    (b"/v1/servers/a%0D%0Ab", "encoded CRLF"),
    (b"/v1/servers/a%09b", "encoded tab"),
    (b"/v1/servers/a%7fb", "encoded DEL"),
    (b"/v1/servers/a\tb", "raw tab"),
    (b"/v1/servers/a b", "raw space"),
    (b"/v1/servers/a\x7fb", "raw DEL"),
    (b"/v1/servers/\xc3\xa9", "raw non-ASCII"),
    (b"/v1/servers/a%", "truncated escape"),
    (b"/v1/servers/a%2", "truncated escape"),
    (b"/v1/servers/a%zz", "non-hex escape"),
    (b"/v1/servers/a%%2e", "stray percent"),
    (b"/v1/servers/%C0%AE%C0%AE/invoices", "overlong UTF-8 dot"),
    (b"/v1/servers/%C0%AF", "overlong UTF-8 slash"),
    (b"/v1/servers/%E0%80%AF", "3-byte overlong slash"),
    (b"/v1/servers/%ED%A0%80", "UTF-16 surrogate"),
    (b"/v1/servers/%FF", "invalid UTF-8 byte"),
    (b"/v1/servers/%E2%82", "truncated UTF-8 sequence"),
    (b"/v1/servers/%252e%252e/invoices", "double-encoded dot-dot"),
    (b"/v1/servers/%252F", "double-encoded slash"),
    (b"/v1/servers?x=1", "query in path"),
    (b"/v1/servers#frag", "fragment"),
    (b"/v1/servers/<script>", "angle brackets"),
    (b"/v1/servers/{id}", "braces"),
    (b"/v1/servers/a|b", "pipe"),
    (b'/v1/servers/a"b', "double quote"),
    (b"/v1/servers/a`b", "backtick"),
    (b"/v1/servers/a^b", "caret"),
    (b"/v1/servers/[::1]", "brackets"),
]


@pytest.mark.parametrize(("raw", "segments"), ACCEPTED, ids=[r.decode("latin-1") for r, _ in ACCEPTED])
def test_accepted_paths_give_decoded_segments(raw: bytes, segments: list[str]) -> None:
    assert split_path(raw) == segments


@pytest.mark.parametrize(("raw", "why"), REFUSED, ids=[w for _, w in REFUSED])
def test_refused_paths_raise_a_400_path_error(raw: bytes, why: str) -> None:
    with pytest.raises(PathError) as info:
        split_path(raw)
    err = info.value
    assert isinstance(err, BadRequest)
    assert err.status == 400
    assert err.code == "invalid_request"
    # The message is fixed: no client input is echoed back.
    assert err.message == PathError.message
    assert b'"status":400' in err.body("deployerp")


def test_the_error_body_is_json_in_both_formats() -> None:
    import json

    with pytest.raises(PathError) as info:
        split_path(b"/v1/servers/%2e%2e/invoices")
    erp = json.loads(info.value.body("deployerp"))
    ally = json.loads(info.value.body("deployally"))
    assert erp["error"]["code"] == "invalid_request" and erp["error"]["status"] == 400
    assert ally["success"] is False and ally["error"]["code"] == "BAD_REQUEST"
    assert "%2e" not in json.dumps(erp) and "invoices" not in json.dumps(ally)
