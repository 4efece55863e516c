"""Key values held at rest until they are revealed once: AES-256-GCM under a key derived from the server secret.

An automatic rotation makes a new value that nobody is there to receive. Unless a secret manager's webhook takes
it (``rotation.deliver_value``), the store holds it sealed on the new key's record (``held_value``) until an
authorised caller reveals it, which erases it (``POST {prefix}/api-keys/{id}/reveal``).

The sealing key is HMAC-SHA256(server secret, a fixed label): the keyed hash the store already uses, over a label
no key value can equal (it holds a NUL), so the secret itself is never handled twice and a stolen store alone
opens nothing. Each value gets a random 96-bit nonce (NIST SP 800-38D section 8.2.2), and the key's id is the
associated data: a sealed value copied onto another record does not open there.
"""

from __future__ import annotations

import base64
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.keys.hashing import Pepper

_LABEL = "\0gateway/held-key-values/v1"
_VERSION = "v1."
_NONCE = 12


class SealError(Exception):
    """A held value that does not open: another server secret, or altered (the message names no value)."""


class Sealer:
    """Seals and opens held key values with the key derived from ``pepper``. Its repr shows no key."""

    __slots__ = ("_aead",)

    def __init__(self, pepper: Pepper) -> None:
        self._aead = AESGCM(bytes.fromhex(pepper.hash(_LABEL)))

    def __repr__(self) -> str:
        return "Sealer(key=<redacted>)"

    @staticmethod
    def _context(key_id: str) -> bytes:
        return b"gateway held value of " + key_id.encode("utf-8")

    def seal(self, key_id: str, value: str) -> str:
        nonce = os.urandom(_NONCE)
        sealed = self._aead.encrypt(nonce, value.encode("utf-8"), self._context(key_id))
        return _VERSION + base64.urlsafe_b64encode(nonce + sealed).decode("ascii")

    def open(self, key_id: str, sealed: str) -> str:
        if not sealed.startswith(_VERSION):
            raise SealError("the held value is in an unknown form")
        try:
            raw = base64.urlsafe_b64decode(sealed[len(_VERSION):].encode("ascii"))
            return self._aead.decrypt(raw[:_NONCE], raw[_NONCE:], self._context(key_id)).decode("utf-8")
        except (InvalidTag, ValueError, UnicodeError):
            raise SealError("the held value does not open with this server secret") from None
