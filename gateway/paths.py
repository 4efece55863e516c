"""The request path, checked once: the path the policy matches is the path the upstream receives.

Rather than normalise (and risk the upstream normalising differently), the gateway refuses every path whose
meaning could differ between two parsers, and forwards the raw path byte for byte. Refused with 400:
anything outside RFC 3986 path characters (raw backslash, ``;`` parameters, spaces, control or non-ASCII
bytes), empty segments (``//``), dot segments raw or encoded (``/./``, ``/../``, ``%2e%2e``), encoded ``/``,
``\\``, NUL or control bytes, malformed escapes, escapes that decode to invalid or overlong UTF-8, and
double encoding (``%252e``: an escape that decodes to another escape, which an upstream that decodes twice
would read as ``.``).
"""

from __future__ import annotations

import re

from gateway.errors import BadRequest

# pchar without ";" (RFC 3986 3.3), plus "/" and "%" (escapes checked below).
_ALLOWED = re.compile(rb"/[A-Za-z0-9._~!$&'()*+,=:@%/-]*")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_FORBIDDEN_DECODED = frozenset(range(0x20)) | {0x7F, ord("/"), ord("\\")}


class PathError(BadRequest):
    message = "The request path is malformed or ambiguous"


def _decode(seg: str) -> str:
    if seg.count("%") != len(_ESCAPE.findall(seg)):
        raise PathError()
    raw = bytearray()
    pos = 0
    for m in _ESCAPE.finditer(seg):
        raw += seg[pos:m.start()].encode("ascii")
        byte = int(m.group(1), 16)
        if byte in _FORBIDDEN_DECODED:
            raise PathError()
        raw.append(byte)
        pos = m.end()
    raw += seg[pos:].encode("ascii")
    try:
        text = raw.decode("utf-8")  # strict: overlong forms and surrogates are refused
    except UnicodeDecodeError:
        raise PathError() from None
    if "%" in text and _ESCAPE.search(text):
        raise PathError()  # double encoding
    return text


def split_path(raw_path: bytes) -> list[str]:
    """The decoded segments of ``raw_path``; raises :class:`PathError` (400) for anything ambiguous.

    One trailing slash is ignored for matching (``/v1/servers/`` needs what ``/v1/servers`` needs)."""
    if not _ALLOWED.fullmatch(raw_path):
        raise PathError()
    segments = raw_path.decode("ascii")[1:].split("/")
    if segments[-1] == "":
        segments.pop()
    for i, seg in enumerate(segments):
        if "%" in seg:
            seg = segments[i] = _decode(seg)
        if seg in ("", ".", ".."):
            raise PathError()
    return segments
