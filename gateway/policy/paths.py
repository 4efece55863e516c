"""The request path, checked once: the path the policy matches is the path the upstream receives.

Rather than normalise (and risk the upstream normalising differently), the gateway refuses every path whose
meaning could differ between two parsers, and forwards the raw path byte for byte. Refused with 400:
anything outside RFC 3986 path characters (raw backslash, ``;`` parameters, spaces, control or non-ASCII
bytes), empty segments (``//``), dot segments raw or encoded (``/./``, ``/../``, ``%2e%2e``), encoded ``/``,
``\\``, NUL or control bytes, malformed escapes, escapes that decode to invalid or overlong UTF-8, and
double encoding (``%252e``: an escape that decodes to another escape, which an upstream that decodes twice
would read as ``.``), and characters that Unicode compatibility normalisation (NFKC) turns into ``.``, ``/`` or
``\\`` (fullwidth ``．`` ``／`` ``＼``, the dot leaders ``․`` ``‥``, small forms; :data:`NFKC_SEPARATORS`), which an
upstream that normalises the decoded path would read as a dot segment or a separator the policy never saw.
"""

from __future__ import annotations

import re
import unicodedata

from gateway.errors import BadRequest

# pchar without ";" (RFC 3986 3.3), plus "/" and "%" (escapes checked below).
_ALLOWED = re.compile(rb"/[A-Za-z0-9._~!$&'()*+,=:@%/-]*")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_FORBIDDEN_DECODED = frozenset(range(0x20)) | {0x7F, ord("/"), ord("\\")}


def _nfkc_separators() -> frozenset[str]:
    """Every code point whose NFKC form contains ``.``, ``/`` or ``\\`` and that is none of them (38 in Unicode
    14: fullwidth and small forms, dot leaders, ``℀`` a/c, ``⒈`` 1., ...). ``⁄`` FRACTION SLASH and ``∕`` DIVISION
    SLASH are not in it: NFKC keeps them.

    Derived from :mod:`unicodedata`, so it follows the interpreter's Unicode version, and fast enough for import
    (about 15 ms, where one ``normalize`` call per code point takes about a second): every code point is built
    at once as UTF-32 bytes by columns, and read in blocks of 256. A block whose NFKD form has none of the three
    characters has no member (NFKC is NFKD then canonical composition, which never produces or absorbs them);
    the few blocks left are read one code point at a time, NFKC proper. tests/unit/test_paths.py checks the set
    against the one-code-point-at-a-time definition."""
    blocks = 0x110000 // 256
    units = bytearray(4 * 0x110000)  # UTF-32-LE: byte 0 the code point's low byte, 1 and 2 its block, 3 zero
    units[0::4] = bytes(range(256)) * blocks
    units[1::4] = b"".join(bytes((b & 0xFF,)) * 256 for b in range(blocks))
    units[2::4] = b"".join(bytes((b >> 8,)) * 256 for b in range(blocks))
    text = units.decode("utf-32-le", "surrogatepass")
    found = set()
    for b in range(blocks):
        block = text[b * 256:(b + 1) * 256]
        decomposed = unicodedata.normalize("NFKD", block)
        if "." in decomposed or "/" in decomposed or "\\" in decomposed:
            for ch in block:
                form = unicodedata.normalize("NFKC", ch)
                if ch not in "./\\" and ("." in form or "/" in form or "\\" in form):
                    found.add(ch)
    return frozenset(found)


NFKC_SEPARATORS = _nfkc_separators()


class PathError(BadRequest):
    message_id = "invalid_request.path"


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
    if not text.isascii() and not NFKC_SEPARATORS.isdisjoint(text):
        raise PathError()  # a "." or "/" to an upstream that normalises (raw non-ASCII is refused above)
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
