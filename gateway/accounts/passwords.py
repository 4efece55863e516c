"""Password hashes: argon2id (RFC 9106) through argon2-cffi, with its defaults (RFC 9106's second recommended
option: t=3, m=64 MiB, p=4).

Hashing and verifying are deliberately slow (tens of milliseconds of CPU): they run in a worker thread, never on
the event loop. :func:`dummy_hash` is a hash of a random password made once, verified against when an e-mail address
has no account, so that an unknown address costs the same time as a wrong password (OWASP Authentication Cheat
Sheet, "Authentication Responses").
"""

from __future__ import annotations

import asyncio
import secrets
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

# Longer passwords are refused at creation, and never hashed at login: hashing cost grows with the input.
MAX_PASSWORD = 1024

_HASHER = PasswordHasher()


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def verify_password(stored: str, password: str) -> bool:
    """Whether ``password`` matches the argon2id hash ``stored``; never raises for a mismatch or a bad hash."""
    try:
        return _HASHER.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(stored: str) -> bool:
    """Whether ``stored`` was made with other parameters than today's (rehashed at the next login)."""
    try:
        return _HASHER.check_needs_rehash(stored)
    except InvalidHashError:
        return True


@cache
def dummy_hash() -> str:
    """A hash of a random password no one knows, made at first use (the gateway builds it at start-up)."""
    return _HASHER.hash(secrets.token_urlsafe(24))


async def hash_in_thread(password: str) -> str:
    return await asyncio.to_thread(hash_password, password)


async def verify_in_thread(stored: str, password: str) -> bool:
    return await asyncio.to_thread(verify_password, stored, password)
