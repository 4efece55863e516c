"""The credential of a request, read from ``Authorization`` as RFC 9110 11 defines it.

    credentials = auth-scheme [ 1*SP ( token68 / #auth-param ) ]      RFC 9110 11.4
    token68     = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="

The auth-scheme is case-insensitive (11.1), one or more spaces (never a tab) separate it from the credential,
and whitespace around the field value is not part of it (5.5). The gateway takes one form, ``Bearer <token68>``
(RFC 6750 2.1), the token an API key or a JWT: ``Bearer k``, ``bearer k`` and ``BEARER   k`` are the same
credential.

Cost: the pipeline (``Gateway._authenticate_now``, which ``Gateway.authorize`` uses too) takes the usual
spelling, ``Bearer <token>``, with one prefix compare and never calls :func:`bearer_token`; only a value that
fails that compare is parsed here. Several spaces after ``Bearer `` pass the compare, fail the key's shape check
and are read again without them. A token that turns out to be neither a key nor a JWT is refused with
:func:`token_error`, which names what is wrong with it. So a good credential in the usual spelling costs what it
did before the general parse existed, and only spellings that are rare or wrong pay for it.

Every error is a fixed message of the catalogues (gateway/messages/): none echoes any part of the header.
"""

from __future__ import annotations

import re

from gateway.errors import (
    AuthenticationRequired,
    BearerWithoutSpace,
    CredentialCharacters,
    CredentialTooLong,
    InvalidToken,
    NotBearer,
    NotOneToken,
)

PREFIX = b"Bearer "  # the spelling both platforms document: matched first, by one compare
MAX_CREDENTIAL = 8192  # bytes of the field value; CredentialTooLong's message names the same number
OWS = b" \t"  # optional whitespace (RFC 9110 5.6.3)

_TOKEN68 = re.compile(rb"[A-Za-z0-9._~+/-]+=*")
_SEPARATORS = re.compile(rb"[ \t,]")  # what joins two credentials, or splits one


def bearer_token(value: bytes) -> bytes:
    """The token of an ``Authorization`` field value in any spelling RFC 9110 11 allows (the caller has already
    tried :data:`PREFIX`). Raises :class:`AuthenticationRequired` when there is no credential at all (an empty
    value, or the scheme alone: RFC 6750 3.1), a :class:`MalformedAuthorization` naming the problem otherwise.
    The token's characters are the caller's to check (a key or JWT shape first, then :func:`token_error`)."""
    value = value.strip(OWS)
    if not value:
        raise AuthenticationRequired()
    if len(value) > MAX_CREDENTIAL:
        raise CredentialTooLong()
    scheme, _, rest = value.partition(b" ")
    if scheme.lower() != b"bearer":
        if scheme[:6].lower() == b"bearer":
            raise BearerWithoutSpace()  # "Bearer:", "Bearer\t<key>", "Bearer<key>"
        raise NotBearer()
    token = rest.lstrip(b" ")
    if not token:
        raise AuthenticationRequired()
    return token


def token_error(token: bytes) -> InvalidToken:
    """The error for a token that is neither an API key nor a JWT: what is wrong with it when it is not one
    token68 (two joined, whitespace inside, other characters), else the plain ``invalid_token``."""
    if _SEPARATORS.search(token):
        return NotOneToken()
    if not _TOKEN68.fullmatch(token):
        return CredentialCharacters()
    return InvalidToken()
