"""gateway/gate/bearer.py: the ``Authorization`` field value read as RFC 9110 11.4 defines credentials.

``credentials = auth-scheme [ 1*SP ( token68 / #auth-param ) ]``, the scheme case-insensitive (11.1), the field
value without its surrounding whitespace (5.5). The end-to-end answers are in tests/security/test_credentials.py.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import (
    AuthenticationRequired,
    BearerWithoutSpace,
    CredentialCharacters,
    CredentialTooLong,
    InvalidToken,
    MalformedAuthorization,
    NotBearer,
    NotOneToken,
)
from gateway.gate.bearer import MAX_CREDENTIAL, bearer_token, token_error

TOKEN68_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/"
token68 = st.builds(lambda body, pad: (body + "=" * pad).encode(),
                    st.text(TOKEN68_CHARS, min_size=1, max_size=60), st.integers(0, 2))
# "bearer" with each letter in either case.
schemes = st.tuples(*[st.sampled_from([c, c.upper()]) for c in "bearer"]).map(lambda t: "".join(t).encode())


@given(scheme=schemes, spaces=st.integers(1, 8), token=token68, before=st.sampled_from([b"", b" ", b"\t "]),
       after=st.sampled_from([b"", b" ", b"\t", b" \t "]))
def test_every_spelling_the_rfc_allows_gives_the_token(
    scheme: bytes, spaces: int, token: bytes, before: bytes, after: bytes,
) -> None:
    assert bearer_token(before + scheme + b" " * spaces + token + after) == token


@pytest.mark.parametrize("value", [b"", b" ", b"\t", b"Bearer", b"bearer   ", b"BEARER\t"])
def test_no_credential_at_all_is_authentication_required(value: bytes) -> None:
    """RFC 6750 3.1: the scheme alone carries no credential; it is not an invalid one."""
    with pytest.raises(AuthenticationRequired):
        bearer_token(value)


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (b"Basic dXNlcjpwYXNz", NotBearer),
        (b"Token abc", NotBearer),
        (b"dep_live_abc", NotBearer),
        (b"Bearers abc", BearerWithoutSpace),
        (b"Bearer:abc", BearerWithoutSpace),
        (b"Bearer\tabc", BearerWithoutSpace),  # 1*SP: a tab does not separate the scheme
        (b"Bearerabc", BearerWithoutSpace),
        (b"Bearer " + b"a" * MAX_CREDENTIAL, CredentialTooLong),
    ],
)
def test_a_value_that_is_not_bearer_and_a_token_names_the_problem(value: bytes, error: type) -> None:
    with pytest.raises(error) as caught:
        bearer_token(value)
    assert isinstance(caught.value, MalformedAuthorization)
    assert caught.value.code == "invalid_token"
    assert "Authorization: Bearer <key>" in caught.value.message
    assert "Authorization: Bearer <key>" in caught.value.ally_message


@pytest.mark.parametrize(
    ("token", "error"),
    [
        (b"a b", NotOneToken),
        (b"a\tb", NotOneToken),
        (b"a,b", NotOneToken),
        (b"a, Bearer b", NotOneToken),
        (b'"abc"', CredentialCharacters),
        (b"a;b", CredentialCharacters),
        (b"a%5Fb", CredentialCharacters),
        (b"key=value", CredentialCharacters),  # an auth-param, not a token68
        ("abcé".encode(), CredentialCharacters),
        (b"abc\xe9", CredentialCharacters),
        (b"=abc", CredentialCharacters),
    ],
)
def test_a_token_that_is_not_one_token68_names_the_problem(token: bytes, error: type) -> None:
    assert type(token_error(token)) is error


@given(token=token68)
def test_a_well_formed_token_that_is_no_key_is_the_plain_invalid_token(token: bytes) -> None:
    assert type(token_error(token)) is InvalidToken


def test_messages_never_echo_the_header() -> None:
    secret = b"dep_live_SECRETSECRETSECRETSECRETSE"
    for value in (b"Token " + secret, b"Bearer:" + secret, b"Bearer " + secret + b"x" * MAX_CREDENTIAL):
        with pytest.raises(MalformedAuthorization) as caught:
            bearer_token(value)
        assert b"SECRET" not in caught.value.message.encode() + caught.value.ally_message.encode()
    for token in (secret + b" " + secret, secret + b"\xe9"):
        error = token_error(token)
        assert "SECRET" not in error.message + error.ally_message
