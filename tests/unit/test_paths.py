"""gateway/policy/paths.py: which raw request paths the gateway accepts, and the segments the policy then sees.

Table-driven: every row is a raw path as it arrives on the wire (bytes, before any decoding)."""

from __future__ import annotations

import unicodedata
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import BadRequest
from gateway.policy.paths import NFKC_SEPARATORS, PathError, split_path

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
    (b"/v1/servers/caf%C3%A9", ["v1", "servers", "caf\u00e9"]),  # é: NFKC keeps it a letter
    (b"/v1/servers/%C2%BD", ["v1", "servers", "\u00bd"]),  # ½: NFKC gives 1⁄2, a fraction slash, not "/"
    (b"/v1/servers/%E2%81%84", ["v1", "servers", "\u2044"]),  # ⁄ FRACTION SLASH: NFKC keeps it
    (b"/v1/servers/%E2%88%95", ["v1", "servers", "\u2215"]),  # ∕ DIVISION SLASH: NFKC keeps it
    (b"/v1/servers/%EF%BD%81", ["v1", "servers", "\uff41"]),  # ａ fullwidth letter: NFKC a, harmless
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
    # Characters Unicode compatibility normalisation (NFKC) turns into ".", "/" or "\\", percent-encoded: an
    # upstream that normalises (Python, Java, .NET code often does) would read a dot segment or a separator.
    (b"/v1/servers/%EF%BC%8E%EF%BC%8E/invoices", "fullwidth dot-dot"),
    (b"/v1/servers/%EF%BC%8E", "fullwidth dot"),
    (b"/v1/servers%EF%BC%8F..%EF%BC%8Finvoices", "fullwidth solidus"),
    (b"/v1/servers/a%EF%BC%BCb", "fullwidth reverse solidus"),
    (b"/v1/servers/%E2%80%A4%E2%80%A4/invoices", "one-dot leaders"),
    (b"/v1/servers/%E2%80%A5/invoices", "two-dot leader"),
    (b"/v1/servers/%EF%B9%92%EF%B9%92/invoices", "small full stops"),
    (b"/v1/servers/a%EF%B9%A8b", "small reverse solidus"),
    (b"/v1/servers/%E2%84%80", "account of (a/c)"),
    (b"/v1/servers/caf%C3%A9%EF%BC%8E", "a fullwidth dot after an ordinary letter"),
    (b"/v1/servers/\xef\xbc\x8e\xef\xbc\x8e/invoices", "raw UTF-8 fullwidth dot-dot"),
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
    assert err.message == PathError().message and err.params == {}
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


# --- compatibility forms of ".", "/" and "\\" ---------------------------------------------------------------


def _nfkc_separators_by_definition() -> set[str]:
    """Every code point whose NFKC form contains ".", "/" or "\\" and that is none of them: the definition,
    checked the slow way (a second or so), against the set gateway.policy.paths derives quickly at import."""
    found = set()
    for cp in range(0x110000):
        if 0xD800 <= cp < 0xE000:
            continue  # surrogates are not characters, and never decode from valid UTF-8
        ch = chr(cp)
        form = unicodedata.normalize("NFKC", ch)
        if ch not in "./\\" and ("." in form or "/" in form or "\\" in form):
            found.add(ch)
    return found


def test_the_derived_set_is_exactly_the_definition() -> None:
    assert set(NFKC_SEPARATORS) == _nfkc_separators_by_definition()
    # The forms the threat is known by are in it, so the derivation is not vacuous.
    assert {"\uff0e", "\uff0f", "\uff3c", "\u2024", "\u2025", "\ufe52", "\ufe68"} <= NFKC_SEPARATORS
    assert not {".", "/", "\\", "\u2044", "\u2215", "\u00e9"} & NFKC_SEPARATORS


@pytest.mark.parametrize("ch", sorted(NFKC_SEPARATORS), ids=lambda c: f"U+{ord(c):04X}")
def test_every_nfkc_separator_is_refused_raw_or_percent_encoded(ch: str) -> None:
    """Every code point in the derived set, alone, inside a segment, as a whole segment, in either case of hex."""
    encoded = quote(ch, safe="")
    for segment in (encoded, "a" + encoded + "b", encoded.lower(), encoded + encoded):
        with pytest.raises(PathError):
            split_path(b"/v1/servers/" + segment.encode() + b"/x")
    with pytest.raises(PathError):
        split_path(b"/v1/servers/" + ch.encode())


_NOT_SEPARATORS = st.characters(
    exclude_categories=("Cs",), min_codepoint=0x80,
).filter(lambda c: c not in NFKC_SEPARATORS)


@given(st.text(_NOT_SEPARATORS, min_size=1, max_size=8))
def test_other_non_ascii_text_percent_encoded_still_passes(text: str) -> None:
    """Ordinary non-ASCII letters, marks and symbols (é, ü, €, CJK) are not refused for being non-ASCII."""
    assert split_path(b"/v1/servers/" + quote(text, safe="").encode()) == ["v1", "servers", text]
