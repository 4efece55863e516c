"""E-mail addresses and mail-server URLs, as the configuration, the management API and the notices handle them.

An address is personal data: it is checked here (a plain ``local@domain``, RFC 5321 section 4.1.2's
``Mailbox`` without quoted strings or address literals, within section 4.5.3.1's lengths), and anywhere it is
logged it is first masked by :func:`masked` (the domain only). No problem named here ever repeats the value.
"""

from __future__ import annotations

import re

# RFC 5322 section 3.2.3 atext, in dot-atoms (RFC 5321 section 4.1.2 Dot-string): no quoted local parts, no
# spaces or control characters (so never a header line break), no address literals.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LOCAL = re.compile(rf"^{_ATEXT}(\.{_ATEXT})*$")
_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
MAX_ADDRESS = 254  # RFC 5321 section 4.5.3.1.3: a path of 256 octets, less the angle brackets
MAX_LOCAL = 64  # RFC 5321 section 4.5.3.1.1


def check_address(value: str) -> str:
    """``value`` as a mailbox ``local@domain`` (surrounding spaces removed); raises ValueError saying what is
    wrong, never what was given."""
    text = value.strip()
    if len(text) > MAX_ADDRESS:
        raise ValueError(f"must be an e-mail address of at most {MAX_ADDRESS} characters")
    local, at, domain = text.rpartition("@")
    if not at or not local or not domain:
        raise ValueError("must be an e-mail address like ops@example.com")
    if len(local) > MAX_LOCAL or not _LOCAL.match(local):
        raise ValueError("must be an e-mail address like ops@example.com (a plain local part before the @)")
    labels = domain.rstrip(".").split(".")
    if len(labels) < 2 or not all(_LABEL.match(label) for label in labels) or labels[-1].isdigit():
        raise ValueError("must be an e-mail address like ops@example.com (a domain name after the @)")
    return f"{local}@{domain.rstrip('.').lower()}"


def masked(address: str) -> str:
    """The address as a log line may show it: its domain only (``***@example.com``)."""
    return "***@" + address.rpartition("@")[2] if "@" in address else "***"


def redacted_url(url: str) -> str:
    """A mail-server URL without its user and password (everything before the last ``@`` of its authority)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "<not a URL>"
    at = rest.rfind("@")
    return f"{scheme}://***@{rest[at + 1:]}" if at >= 0 else url
