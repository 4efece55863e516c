"""Text PostgreSQL cannot hold."""

from __future__ import annotations


def unstorable(text: str) -> bool:
    """True for text PostgreSQL cannot hold (a NUL, a lone surrogate): no stored id or address is equal to it,
    so a lookup by it finds nothing, as on the other stores, instead of failing (an id from a URL path)."""
    if "\x00" in text:
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
