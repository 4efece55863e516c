"""Held key values (gateway/keys/sealing.py): AES-256-GCM (NIST SP 800-38D) under a key derived from the server
secret, bound to the key's id; nothing opens with another secret, another id or an altered byte."""

from __future__ import annotations

import pytest

from gateway.keys.hashing import Pepper
from gateway.keys.sealing import Sealer, SealError

VALUE = "dep_live_a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6"


def sealer(secret: bytes = b"server-secret-0123456789") -> Sealer:
    return Sealer(Pepper(secret, "test"))


def test_round_trip_with_a_fresh_nonce_each_time() -> None:
    s = sealer()
    a, b = s.seal("key_1", VALUE), s.seal("key_1", VALUE)
    assert a != b and a.startswith("v1.")
    assert VALUE not in a and VALUE[9:] not in a
    assert s.open("key_1", a) == s.open("key_1", b) == VALUE
    assert sealer().open("key_1", a) == VALUE  # the same secret derives the same key (another process)
    assert "secret" not in repr(s)


@pytest.mark.parametrize("tamper", [
    lambda t: t,  # opened as another key's
    lambda t: t[:-2] + ("A" if t[-2] != "A" else "B") + t[-1],
    lambda t: "v2." + t[3:],
    lambda t: t[:10],
    lambda t: "v1.!!!",
])
def test_nothing_else_opens(tamper: object) -> None:
    s = sealer()
    sealed = s.seal("key_1", VALUE)
    changed = tamper(sealed)  # type: ignore[operator]
    with pytest.raises(SealError) as exc:
        s.open("key_2" if changed == sealed else "key_1", changed)
    assert VALUE not in str(exc.value)
    with pytest.raises(SealError):
        sealer(b"another-secret-0123456789").open("key_1", sealed)
