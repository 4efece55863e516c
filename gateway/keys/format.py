"""Key values and ids.

A key value is ``<prefix><body>`` where the prefix names platform and environment (``dep_live_``,
``dep_test_``, ``da_``, ``da_test_``) and the body is 32 base62 characters: 26 from :mod:`secrets`
(about 155 bits) followed by a 6-character base62 CRC-32 of everything before it. The checksum lets the
gateway refuse a mistyped, truncated or made-up key before it touches the store, and lets secret scanners
recognise a real key. The body alphabet has no ``_``, so ``da_test_...`` can never be read as a live
``da_`` key.
"""

from __future__ import annotations

import secrets
import zlib

from gateway.config.settings import KeyFormat

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_ALPHABET_SET = frozenset(ALPHABET)
BODY_LENGTH = 32
CHECKSUM_LENGTH = 6
RANDOM_LENGTH = BODY_LENGTH - CHECKSUM_LENGTH
KEY_ID_PREFIX = "key_"
KEY_ID_LENGTH = 12


def _base62(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        n, r = divmod(n, 62)
        out.append(ALPHABET[r])
    return "".join(reversed(out))


def checksum(text: str) -> str:
    """6 base62 characters of the CRC-32 of ``text`` (62**6 > 2**32, so nothing is lost)."""
    return _base62(zlib.crc32(text.encode("ascii")), CHECKSUM_LENGTH)


def generate_key(prefix: str) -> str:
    head = prefix + "".join(secrets.choice(ALPHABET) for _ in range(RANDOM_LENGTH))
    return head + checksum(head)


def generate_key_id() -> str:
    return KEY_ID_PREFIX + "".join(secrets.choice(ALPHABET) for _ in range(KEY_ID_LENGTH))


class KeyParser:
    """Recognises well-formed key values of one :class:`KeyFormat`; built once at start-up."""

    __slots__ = ("_prefixes",)

    def __init__(self, key_format: KeyFormat) -> None:
        # Longest prefix first, so da_test_ is tried before da_.
        pairs = [(key_format.live, "live"), (key_format.test, "test")]
        self._prefixes = tuple(sorted(pairs, key=lambda p: -len(p[0])))

    def environment(self, value: str) -> str | None:
        """The key's environment if ``value`` is a well-formed key with a valid checksum, else None."""
        env = self.shape(value)
        return env if env is not None and checksum_ok(value) else None

    def shape(self, value: str) -> str | None:
        """The key's environment if ``value`` has a key's prefix, length and alphabet (checksum not checked)."""
        for prefix, env in self._prefixes:
            if value.startswith(prefix):
                body = value[len(prefix):]
                # isascii and isalnum together are exactly the base62 alphabet, checked in C without a set lookup
                # per character.
                if len(body) == BODY_LENGTH and body.isascii() and body.isalnum():
                    return env
                return None
        return None


def checksum_ok(value: str) -> bool:
    """Whether the last 6 characters of a key-shaped ``value`` are the checksum of the rest."""
    return checksum(value[:-CHECKSUM_LENGTH]) == value[-CHECKSUM_LENGTH:]


def is_key_id(value: str) -> bool:
    return (
        len(value) == len(KEY_ID_PREFIX) + KEY_ID_LENGTH
        and value.startswith(KEY_ID_PREFIX)
        and _ALPHABET_SET.issuperset(value[len(KEY_ID_PREFIX):])
    )
