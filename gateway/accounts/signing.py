"""The key the gateway signs its JWTs with, and the key set it publishes (RFC 7517) at ``/.well-known/jwks.json``.

On first start an EC P-256 key (ES256, RFC 7518 3.4) is generated and written as ``signing-key.pem`` (PKCS#8, mode
600) in the signing-key directory (mode 700), as the server secret is (gateway.keys.files). Its ``kid`` is its
RFC 7638 thumbprint, so every process that reads the same file names it alike. Any other ``*.pem`` private key in
the directory is published and verified with, never signed with: rename the old file there before a new one is
made, and tokens it signed keep verifying until they expire.

A key file that others can read is refused at start-up, as the server secret is: it may have been read already.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from gateway.config.settings import AccountsSettings, ConfigError, Settings, resolve_path, sqlite_path
from gateway.keys.files import create_private_file, make_private_dirs

KEY_FILE = "signing-key.pem"
ALGORITHM = "ES256"


def default_key_dir(settings: Settings) -> Path:
    accounts: AccountsSettings = settings.accounts
    if accounts.signing_key_dir:
        return resolve_path(settings, accounts.signing_key_dir)
    if settings.store.url.startswith("sqlite:///"):
        return sqlite_path(settings).parent / "signing-keys"
    return resolve_path(settings, "signing-keys")


def thumbprint(public_jwk: dict[str, Any]) -> str:
    """RFC 7638: SHA-256 of the required members (crv, kty, x, y for EC), in order, without spaces."""
    members = {name: public_jwk[name] for name in ("crv", "kty", "x", "y")}
    digest = hashlib.sha256(json.dumps(members, separators=(",", ":"), sort_keys=True).encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class SigningKeys:
    """The signing key (``kid``) and every public key published; its repr never shows a private key."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.created = False
        private = self._load_or_create(directory / KEY_FILE)
        self._private = private
        self.kid, jwk = self._public(private)
        self._public_keys: dict[str, Any] = {self.kid: private.public_key()}
        self._jwks: list[dict[str, Any]] = [jwk]
        for path in sorted(directory.glob("*.pem")):
            if path.name == KEY_FILE:
                continue
            other = self._read(path)
            kid, other_jwk = self._public(other)
            if kid not in self._public_keys:
                self._public_keys[kid] = other.public_key()
                self._jwks.append(other_jwk)

    def __repr__(self) -> str:
        return f"SigningKeys(directory={str(self.directory)!r}, kid={self.kid!r}, keys={len(self._jwks)})"

    @staticmethod
    def _public(private: ec.EllipticCurvePrivateKey) -> tuple[str, dict[str, Any]]:
        jwk: dict[str, Any] = ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
        kid = thumbprint(jwk)
        return kid, {"kty": "EC", "crv": jwk["crv"], "x": jwk["x"], "y": jwk["y"], "kid": kid, "use": "sig",
                     "alg": ALGORITHM}

    def _load_or_create(self, path: Path) -> ec.EllipticCurvePrivateKey:
        if path.exists():
            return self._read(path)
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        try:
            make_private_dirs(path.parent)
            fd = create_private_file(path)
        except OSError as exc:
            raise ConfigError(f"accounts.signing_key_dir: cannot create {path}: {exc.strerror}") from None
        if fd is None:  # another process (a worker, the CLI) made it meanwhile: use its key
            return self._read(path)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
            fh.flush()
            os.fsync(fh.fileno())
        self.created = True
        return key

    @staticmethod
    def _read(path: Path) -> ec.EllipticCurvePrivateKey:
        try:
            mode = path.stat().st_mode & 0o777
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"accounts.signing_key_dir: cannot read {path}: {exc.strerror}") from None
        if mode & 0o077:
            raise ConfigError(f"accounts.signing_key_dir: {path} is readable by others (mode {mode:o}); chmod 600 it")
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            raise ConfigError(f"accounts.signing_key_dir: {path} is not an unencrypted PEM private key") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise ConfigError(f"accounts.signing_key_dir: {path} is not an EC P-256 key (ES256)")
        return key

    def sign(self, claims: dict[str, Any]) -> str:
        return jwt.encode(claims, self._private, algorithm=ALGORITHM, headers={"kid": self.kid, "typ": "JWT"})

    def public_key(self, kid: str) -> Any:
        """The public key with id ``kid``, or None when it is not one of this gateway's."""
        return self._public_keys.get(kid)

    def jwks(self) -> dict[str, Any]:
        """The JWK Set document (RFC 7517 5): public keys only."""
        return {"keys": [dict(k) for k in self._jwks]}
