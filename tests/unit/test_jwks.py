"""The JWKS document as the verifier reads it (RFC 7517 5): strictly from a file the operator wrote, leniently
from a provider's URL, which may also publish encryption keys (``use: enc``, RFC 7517 4.2) and key types the
gateway does not verify with; never a private or symmetric key."""

from __future__ import annotations

import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.config.settings import load_settings
from gateway.gate.jwt import JWKSError, JWTVerifier, parse_jwks

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def jwk(key: Any, kid: str, alg: str | None, **extra: Any) -> dict[str, Any]:
    algo = "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"
    doc = json.loads(jwt.algorithms.get_default_algorithms()[algo].to_jwk(key.public_key()))
    return {**doc, "kid": kid, **({"alg": alg} if alg else {}), **extra}


SIG = jwk(RSA_KEY, "sig", "RS256", use="sig")
ENC = jwk(RSA_KEY, "enc", "RSA-OAEP", use="enc")
OCT = {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"}
OKP = {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}


def test_a_provider_set_keeps_only_its_signing_keys() -> None:
    keys = parse_jwks({"keys": [ENC, OCT, OKP, SIG, jwk(EC_KEY, "ec", None)]}, strict=False)
    assert [(kid, alg) for kid, _, alg in keys] == [("sig", "RS256"), ("ec", None)]


@pytest.mark.parametrize("entry", [ENC, OCT, OKP, {**SIG, "alg": "ES256"}, {**SIG, "d": "x"}])
def test_a_file_with_anything_but_a_public_signing_key_is_refused(entry: dict[str, Any]) -> None:
    with pytest.raises(JWKSError):
        parse_jwks({"keys": [SIG, entry]})


@pytest.mark.parametrize("doc", [{"keys": [ENC, OCT]}, {"keys": []}, {"nokeys": 1}, [SIG], "x"])
def test_no_usable_key_is_an_error_either_way(doc: object) -> None:
    with pytest.raises(JWKSError):
        parse_jwks(doc, strict=False)


def test_the_same_set_again_changes_nothing() -> None:
    settings = load_settings(None, environ={}, overrides={"jwt": {
        "enabled": True, "algorithms": ["RS256"], "jwks_url": "https://idp.example/jwks.json"}})
    verifier = JWTVerifier(settings.jwt)
    keys = parse_jwks({"keys": [SIG]}, strict=False)
    assert verifier.set_remote_keys(keys) is True
    assert verifier.set_remote_keys(parse_jwks({"keys": [SIG]}, strict=False)) is False
    assert verifier.set_remote_keys(parse_jwks({"keys": [{**SIG, "kid": "other"}]}, strict=False)) is True
    assert repr(verifier).endswith("keys=1)")
