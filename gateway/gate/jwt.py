"""JWTs for dashboard users (the DeployAlly ``Authorization: Bearer eyJ...`` credential).

The pipeline tells a JWT from an API key by its shape (:func:`looks_like_jwt`), never by trying one after
the other, and only on routes whose policy allows the ``jwt`` credential. :class:`JWTVerifier` is built
once at start-up from :class:`gateway.config.settings.JWTSettings`; a bad setting raises ``ConfigError`` naming it.

Verification, in order:

1. the header's ``alg`` must be one of ``jwt.algorithms`` (``none`` can never be configured);
2. the key is chosen by the *algorithm's family*, never by what the token offers: HS* tokens are checked
   only against the shared secret, RS*/PS*/ES* tokens only against public keys of the matching type (and
   curve) from ``public_key_file``, ``jwks_file`` or ``jwks_url`` (by ``kid``; a JWK that names an ``alg``
   verifies only that algorithm). So an HS256 token "signed" with the public key as HMAC secret (algorithm
   confusion) can never verify;
3. PyJWT checks the signature, and ``iss`` / ``aud`` when they are configured;
4. ``exp`` is required and, with ``nbf``, checked here against the gateway's clock (so tests can move
   time); expired gives ``expired_token``, anything else ``invalid_token``;
5. scopes come from ``jwt.scopes_claim``: a list of strings, or one space-separated string (``scope``).

Nothing here logs, echoes or keeps a token in an error; a verified token's principal is cached (bounded,
short TTL) so a dashboard session does not pay for a signature check on every request.

Keys from ``jwt.jwks_url`` are not fetched here (the gate has no transport): the fetcher
(gateway.doors.jwks.JWKSFetcher) hands them to :meth:`JWTVerifier.set_remote_keys` and gives the verifier its
``refresh`` (one fetch, at most one per ``jwks_min_refresh_seconds``). A token naming a ``kid`` not in the set
raises :class:`gateway.gate.KeyIdUnknown` from :meth:`JWTVerifier.verify`; the gate then awaits
:meth:`JWTVerifier.verify_refreshed` for that request alone, as it awaits the store on a key-cache miss.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cachetools import TTLCache
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from gateway.config.settings import ConfigError, JWTSettings
from gateway.errors import ExpiredJWT, InvalidJWT, JWTAlgorithm, JWTNoKey, JWTNoKeyId, JWTNotYetValid
from gateway.gate import KeyIdUnknown
from gateway.policy.rules import valid_scope

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}
SUPPORTED = HMAC_ALGORITHMS | RSA_ALGORITHMS | frozenset(EC_CURVES)
MIN_SECRET_BYTES = 32  # RFC 7518 3.2: an HS256 key must be at least as long as the hash (256 bits)

# header.payload.signature in base64url; the header is a JSON object, so it starts with "eyJ" ('{"').
# The signature may be empty (alg "none"): such a token is still a JWT, refused by the verifier.
_SHAPE = re.compile(r"^eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")
_CACHE_SIZE = 10_000
_CACHE_TTL = 60.0

# One public key: its id (None for the PEM file, or a JWK without one), the key, and the JWK's "alg" (None: any
# algorithm of the key's family).
PublicKey = tuple[str | None, Any, str | None]


class JWKSError(ValueError):
    """A JWKS document that cannot be used; the text names the problem, never a key."""


def parse_jwks(doc: object, strict: bool = True) -> list[PublicKey]:
    """The signing keys of a JWKS document (RFC 7517 5). ``strict`` (a file given by the operator): any entry
    that is not a usable public key is an error. Otherwise (a provider's URL, which may also publish encryption
    keys or key types this gateway does not verify with) such entries are left out; a document with no usable key
    at all is still an error. Private and symmetric keys are never taken."""
    entries = doc.get("keys") if isinstance(doc, Mapping) else None
    if not isinstance(entries, list) or not entries:
        raise JWKSError("must be a JWKS document with a non-empty 'keys' list")
    keys: list[PublicKey] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise JWKSError(f"keys[{i}] is not an object")
        if "d" in entry or entry.get("kty") == "oct":
            if strict:
                raise JWKSError(f"keys[{i}] is a private or symmetric key; give public keys")
            continue
        alg = entry.get("alg")
        kid = entry.get("kid")
        use = entry.get("use")
        usable = (alg is None or (isinstance(alg, str) and alg in SUPPORTED - HMAC_ALGORITHMS)) and use in (None, "sig")
        if usable:
            try:
                jwk = jwt.PyJWK.from_dict(dict(entry))
            except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
                usable = False
            else:
                usable = isinstance(jwk.key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey)
        if not usable:
            if strict:
                raise JWKSError(f"keys[{i}] is not a usable public key")
            continue
        if alg is not None and not _fits(alg, jwk.key):
            if strict:
                raise JWKSError(f"keys[{i}] is not a key for its alg {alg}")
            continue
        keys.append((kid if isinstance(kid, str) else None, jwk.key, alg))
    if not keys:
        raise JWKSError("has no usable signing key (RSA or EC public keys, use 'sig')")
    return keys


def looks_like_jwt(token: str) -> bool:
    """Whether ``token`` has the shape of a compact JWS (three base64url segments, a JSON header)."""
    return len(token) <= 8192 and _SHAPE.match(token) is not None


@dataclass(frozen=True, slots=True)
class JWTPrincipal:
    """A verified dashboard user, shaped like :class:`gateway.keys.cache.AuthKey` where the pipeline reads it."""

    subject: str
    permissions: frozenset[str]
    permissions_list: tuple[str, ...]
    expires_ts: float
    not_before_ts: float | None
    subject_header: bytes
    permissions_header: bytes
    upstream_headers: tuple[tuple[str, str], ...]
    environment: str = "live"
    networks: tuple[()] = ()

    @property
    def actor(self) -> str:
        return f"jwt:{self.subject}"

    def __repr__(self) -> str:
        return f"JWTPrincipal(subject={self.subject!r}, permissions={self.permissions_list!r})"


class JWTVerifier:
    """Verifies JWTs against the configured algorithms and keys; everything is loaded in ``__init__``."""

    def __init__(self, settings: JWTSettings, base_dir: str = ".") -> None:
        algorithms = tuple(settings.algorithms)
        if not algorithms:
            raise ConfigError("jwt.algorithms: give at least one algorithm (HS256, RS256, ES256, ...)")
        for alg in algorithms:
            if alg not in SUPPORTED:
                why = "unsigned tokens are never accepted" if alg.lower() == "none" else "not supported"
                raise ConfigError(f"jwt.algorithms: {alg!r}: {why} (use {', '.join(sorted(SUPPORTED))})")
        self._algorithms = frozenset(algorithms)
        self._secret = self._load_secret(settings, base_dir) if self._algorithms & HMAC_ALGORITHMS else None
        self._public_keys: list[PublicKey] = []  # from the files, fixed
        # From jwt.jwks_url, by kid: replaced whole by set_remote_keys (one assignment), read by requests.
        self._remote: dict[str | None, tuple[Any, str | None]] = {}
        self.jwks_url = settings.jwks_url
        self._refresh: Callable[[], Awaitable[object]] | None = None
        if self._algorithms - HMAC_ALGORITHMS:
            self._public_keys = self._load_public_keys(settings, base_dir)
            self._check_key_types(settings.jwks_url is None)
        elif settings.public_key_file or settings.jwks_file or settings.jwks_url:
            raise ConfigError("jwt.algorithms: a public key is configured but only HS* algorithms are allowed")
        if not settings.scopes_claim:
            raise ConfigError("jwt.scopes_claim: must name a claim (permissions, or scope)")
        if settings.leeway_seconds < 0 or settings.leeway_seconds > 300:
            raise ConfigError("jwt.leeway_seconds: must be between 0 and 300")
        self._issuer = settings.issuer
        self._audience = settings.audience
        self._scopes_claim = settings.scopes_claim
        self._subject_claim = settings.subject_claim
        self._leeway = float(settings.leeway_seconds)
        require = ["exp", settings.subject_claim]
        if settings.issuer is not None:
            require.append("iss")
        if settings.audience is not None:
            require.append("aud")
        # Time claims are checked in verify() against the gateway's clock, not PyJWT's.
        self._options: dict[str, Any] = {
            "require": require, "verify_exp": False, "verify_nbf": False, "verify_iat": False,
            "verify_aud": settings.audience is not None, "verify_iss": settings.issuer is not None,
        }
        self._cache: TTLCache[str, JWTPrincipal] = TTLCache(maxsize=_CACHE_SIZE, ttl=_CACHE_TTL)

    def __repr__(self) -> str:
        return (f"JWTVerifier(algorithms={sorted(self._algorithms)!r}, "
                f"keys={len(self._public_keys) + len(self._remote)})")

    # --- start-up ----------------------------------------------------------------------------------------------

    @staticmethod
    def _load_secret(settings: JWTSettings, base_dir: str) -> bytes:
        if settings.secret:
            secret = settings.secret.encode("utf-8")
            name = "jwt.secret"
        elif settings.secret_file:
            path = _resolve(base_dir, settings.secret_file)
            try:
                secret = path.read_bytes().strip()
            except OSError as exc:
                raise ConfigError(f"jwt.secret_file: cannot read {path}: {exc.strerror}") from None
            name = "jwt.secret_file"
        else:
            raise ConfigError("jwt.secret: HS* algorithms need a shared secret (jwt.secret, GATEWAY_JWT__SECRET"
                              " or jwt.secret_file)")
        if len(secret) < MIN_SECRET_BYTES:
            raise ConfigError(f"{name}: must be at least {MIN_SECRET_BYTES} bytes for HS256")
        return secret

    @staticmethod
    def _load_public_keys(settings: JWTSettings, base_dir: str) -> list[PublicKey]:
        keys: list[PublicKey] = []
        if settings.public_key_file:
            path = _resolve(base_dir, settings.public_key_file)
            try:
                keys.append((None, load_pem_public_key(path.read_bytes()), None))
            except OSError as exc:
                raise ConfigError(f"jwt.public_key_file: cannot read {path}: {exc.strerror}") from None
            except (ValueError, TypeError):
                raise ConfigError(f"jwt.public_key_file: {path} is not a PEM public key") from None
        if settings.jwks_file:
            path = _resolve(base_dir, settings.jwks_file)
            try:
                doc = json.loads(path.read_text(encoding="utf-8"))
            except OSError as exc:
                raise ConfigError(f"jwt.jwks_file: cannot read {path}: {exc.strerror}") from None
            except (ValueError, UnicodeDecodeError):
                raise ConfigError(f"jwt.jwks_file: {path} is not JSON") from None
            try:
                keys += parse_jwks(doc)
            except JWKSError as exc:
                raise ConfigError(f"jwt.jwks_file: {path}: {exc}") from None
        if not keys and not settings.jwks_url:
            raise ConfigError("jwt.public_key_file: RS*/ES* algorithms need jwt.public_key_file, jwt.jwks_file or"
                              " jwt.jwks_url")
        return keys

    def _check_key_types(self, every_algorithm: bool) -> None:
        for _, key, _ in self._public_keys:
            if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
                raise ConfigError("jwt.public_key_file: only RSA and EC public keys are supported")
        if not every_algorithm:
            return  # the JWKS URL's keys are known only once fetched
        for alg in self._algorithms - HMAC_ALGORITHMS:
            if not any(_fits(alg, key) for _, key, _ in self._public_keys):
                raise ConfigError(f"jwt.algorithms: {alg} is allowed but no configured public key fits it")

    # --- keys from the JWKS URL (gateway.doors.jwks) -------------------------------------------------------------

    def set_remote_keys(self, keys: list[PublicKey]) -> bool:
        """Serve ``keys`` (a fetched JWKS, see :func:`parse_jwks`) from now on; True when the set changed. A
        changed set also empties the verified-token cache, so a token of a key the provider withdrew is refused
        from now on, not when its cache entry expires."""
        remote = {kid: (key, alg) for kid, key, alg in keys}
        if remote.keys() == self._remote.keys() and all(
                _same_key(key, self._remote[kid][0]) and alg == self._remote[kid][1]
                for kid, (key, alg) in remote.items()):
            return False
        self._remote = remote
        self._cache.clear()
        return True

    @property
    def remote_keys(self) -> list[PublicKey]:
        return [(kid, key, alg) for kid, (key, alg) in self._remote.items()]

    def set_refresh(self, refresh: Callable[[], Awaitable[object]] | None) -> None:
        """What :meth:`verify_refreshed` awaits: one fetch of the JWKS URL (or none, inside the floor)."""
        self._refresh = refresh

    async def verify_refreshed(self, token: str, now: float | None = None) -> JWTPrincipal:
        """:meth:`verify`, after the JWKS URL was fetched again (for a token whose ``kid`` was not known).
        Still unknown: JWTNoKey (invalid_token)."""
        if self._refresh is not None:
            await self._refresh()
        try:
            return self.verify(token, now)
        except KeyIdUnknown:
            raise JWTNoKey() from None

    # --- per request -------------------------------------------------------------------------------------------

    def verify(self, token: str, now: float | None = None) -> JWTPrincipal:
        """The principal of a valid token. Raises ExpiredJWT (past ``exp``) or an InvalidJWT (anything else)."""
        now = time.time() if now is None else now
        principal = self._cache.get(token)
        if principal is None:
            principal = self._verify(token)
            self._cache[token] = principal
        if now - self._leeway >= principal.expires_ts:
            raise ExpiredJWT()
        if principal.not_before_ts is not None and now + self._leeway < principal.not_before_ts:
            raise JWTNotYetValid()
        return principal

    def _verify(self, token: str) -> JWTPrincipal:
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.PyJWTError, ValueError, TypeError):
            raise InvalidJWT() from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise JWTAlgorithm()
        key = self._key_for(alg, header.get("kid"))
        try:
            claims = jwt.decode(token, key, algorithms=[alg], audience=self._audience, issuer=self._issuer,
                                options=self._options)  # type: ignore[arg-type]
        except (jwt.PyJWTError, ValueError, TypeError):
            # Every way a token can be bad is the same answer; the reason is never echoed.
            raise InvalidJWT() from None
        exp: Any = claims.get("exp")  # a number, checked below
        nbf: Any = claims.get("nbf")
        if not _number(exp) or (nbf is not None and not _number(nbf)):
            raise InvalidJWT()
        subject = claims.get(self._subject_claim)
        if not isinstance(subject, str) or not subject or len(subject) > 256 or not subject.isprintable():
            raise InvalidJWT()
        try:
            subject_header = subject.encode("ascii")
        except UnicodeEncodeError:
            raise InvalidJWT() from None
        scopes = self._scopes(claims.get(self._scopes_claim))
        joined = ",".join(scopes)
        return JWTPrincipal(
            subject=subject, permissions=frozenset(scopes), permissions_list=scopes, expires_ts=float(exp),
            not_before_ts=float(nbf) if nbf is not None else None, subject_header=subject_header,
            permissions_header=joined.encode("ascii"),
            upstream_headers=(("x-auth-subject", subject), ("x-auth-permissions", joined)),
        )

    def _key_for(self, alg: str, kid: object) -> Any:
        if alg in HMAC_ALGORITHMS:
            # Only ever the shared secret: a public key is never used as an HMAC secret.
            return self._secret
        remote = self._remote
        if kid is not None and remote:
            found = remote.get(kid) if isinstance(kid, str) else None
            if found is not None:
                key, key_alg = found
                if (key_alg is None or key_alg == alg) and _fits(alg, key):
                    return key
                raise JWTNoKey()
        fitting = [(k, key) for k, key, key_alg in self._public_keys if (key_alg is None or key_alg == alg)
                   and _fits(alg, key)]
        if kid is not None:
            # The JWKS key with that id; failing that, a key that has no id (the PEM file).
            fitting = [(k, key) for k, key in fitting if k == kid] or [(k, key) for k, key in fitting if k is None]
        else:
            fitting += [(None, key) for key, key_alg in remote.values() if (key_alg is None or key_alg == alg)
                        and _fits(alg, key)]
            if len(fitting) > 1:
                # Several candidates and no kid: refuse rather than try each one.
                raise JWTNoKeyId()
        if not fitting:
            if kid is not None and self.jwks_url is not None:
                raise KeyIdUnknown()  # perhaps a key the provider has just published: the gate fetches again
            raise JWTNoKey()
        return fitting[0][1]

    @staticmethod
    def _scopes(raw: object) -> tuple[str, ...]:
        if raw is None:
            return ()
        if isinstance(raw, str):
            items: list[object] = list(raw.split())
        elif isinstance(raw, list):
            items = raw
        else:
            raise InvalidJWT()
        out: list[str] = []
        for item in items:
            if not isinstance(item, str):
                raise InvalidJWT()
            # Claims an identity provider adds for itself (openid, email, ...) may not be scope-shaped:
            # they grant nothing here, so they are left out rather than refused.
            if valid_scope(item) and item not in out:
                out.append(item)
        return tuple(out)


def _fits(alg: str, key: Any) -> bool:
    if alg in RSA_ALGORITHMS:
        return isinstance(key, rsa.RSAPublicKey)
    curve = EC_CURVES.get(alg)
    return curve is not None and isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == curve


def _same_key(a: Any, b: Any) -> bool:
    return bool(a.public_numbers() == b.public_numbers())


def _number(value: object) -> bool:
    # JSON parsers accept NaN and Infinity: an exp of either would never be reached.
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _resolve(base_dir: str, path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else Path(base_dir) / p
