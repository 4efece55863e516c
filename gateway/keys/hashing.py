"""The keyed hash that is all the store ever holds of a key value.

``HMAC-SHA256(pepper, value)``: without the pepper (the server secret) a stolen store cannot be used to test
guesses offline. The pepper comes from the ``secret`` setting (``GATEWAY_SECRET``), or the file named by
``secret_file``; with neither, a random one is written on first run to a file of mode 600 (its directory, if
made for it, 700), whatever the umask. A secret file that others can read is refused, as ssh refuses such a
private key: it may have been read already, so the operator must decide (docs/security.md).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from gateway.config.settings import ConfigError, Settings, resolve_path, sqlite_path
from gateway.keys.files import create_private_file, make_private_dirs

SECRET_FILE_NAME = "gateway.secret"
_BLOCK = 64  # SHA-256's block size: the length HMAC pads its key to
_IPAD = bytes(b ^ 0x36 for b in range(256))  # translate tables: each key byte XOR the pad byte
_OPAD = bytes(b ^ 0x5C for b in range(256))


class Pepper:
    """The server secret. Its repr and str never show it."""

    __slots__ = ("_inner", "_outer", "source")

    def __init__(self, key: bytes, source: str) -> None:
        # HMAC as RFC 2104 builds it, SHA-256(K ^ opad || SHA-256(K ^ ipad || value)), with both padded keys
        # hashed once, here: each hash copies the two states rather than hashing the pads again (two SHA-256
        # blocks fewer than hmac.new), and calls hashlib's C methods directly rather than through the Python
        # of hmac.HMAC. Same digests as hmac.new (tests/unit/test_hashing.py); half the instructions.
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        key = key.ljust(_BLOCK, b"\0")
        self._inner = hashlib.sha256(key.translate(_IPAD))
        self._outer = hashlib.sha256(key.translate(_OPAD))
        self.source = source

    def __repr__(self) -> str:
        return f"Pepper(source={self.source!r}, key=<redacted>)"

    __str__ = __repr__

    def hash(self, value: str) -> str:
        inner = self._inner.copy()
        inner.update(value.encode("utf-8"))
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()

    @staticmethod
    def same(a: str, b: str) -> bool:
        return hmac.compare_digest(a, b)


def default_secret_file(settings: Settings) -> Path:
    if settings.secret_file:
        return resolve_path(settings, settings.secret_file)
    if settings.store.url.startswith("sqlite:///"):
        return sqlite_path(settings).parent / SECRET_FILE_NAME
    return resolve_path(settings, SECRET_FILE_NAME)


def load_pepper(settings: Settings, *, create: bool = True) -> tuple[Pepper, bool]:
    """Return the pepper and whether it was created just now (the caller says where, once)."""
    if settings.secret:
        # load_settings checks this too; settings built in code skip it, and a short pepper is a weak one.
        if len(settings.secret) < 16:
            raise ConfigError("secret: must be at least 16 characters (use 32 or more random bytes)")
        return Pepper(settings.secret.encode("utf-8"), "secret setting"), False
    path = default_secret_file(settings)
    if path.exists():
        try:
            mode = path.stat().st_mode & 0o777
            data = path.read_bytes().strip()
        except OSError as exc:
            raise ConfigError(f"secret_file: cannot read {path}: {exc.strerror}") from None
        if mode & 0o077:
            raise ConfigError(f"secret_file: {path} is readable by others (mode {mode:o}); chmod 600 it")
        if len(data) < 16:
            raise ConfigError(f"secret_file: {path} holds fewer than 16 bytes")
        return Pepper(data, str(path)), False
    if not create:
        raise ConfigError(f"secret_file: {path} does not exist")
    value = secrets.token_urlsafe(48).encode("ascii")
    try:
        make_private_dirs(path.parent)
        fd = create_private_file(path)
    except OSError as exc:
        raise ConfigError(f"secret_file: cannot create {path}: {exc.strerror}") from None
    if fd is None:  # another process won the race: use its secret
        return load_pepper(settings, create=False)
    with os.fdopen(fd, "wb") as fh:
        fh.write(value + b"\n")
        fh.flush()
        os.fsync(fh.fileno())
    return Pepper(value, str(path)), True
