"""Typed, validated configuration.

Precedence, lowest first: the defaults below < the YAML file < ``GATEWAY_<SECTION>__<FIELD>`` environment
variables (``GATEWAY_<FIELD>`` for top-level fields) < command-line flags. Everything is validated when it is
loaded; a bad file or value raises :class:`ConfigError` whose message names the field, and the CLI turns that
into exit status 2.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union
from urllib.parse import urlsplit

import yaml

from gateway import redisurl

ENV_PREFIX = "GATEWAY_"


class ConfigError(Exception):
    """A configuration file or value is invalid; the message names the field."""


# Key formats of the two platforms the gateway fronts: environment -> value prefix.
KEY_FORMATS: dict[str, dict[str, str]] = {
    "deployerp": {"live": "dep_live_", "test": "dep_test_"},
    "deployally": {"live": "da_", "test": "da_test_"},
}


@dataclass(frozen=True, slots=True)
class ListenSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1  # uvicorn worker processes (more than one needs a Redis store and Redis limits)


@dataclass(frozen=True, slots=True)
class UpstreamEnvironments:
    # Where test keys are forwarded. With none, test keys are refused (they never reach the live upstream).
    test: str | None = None


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    url: str = "http://127.0.0.1:9000"
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    pool_size: int = 100
    environments: UpstreamEnvironments = field(default_factory=UpstreamEnvironments)


@dataclass(frozen=True, slots=True)
class StoreSettings:
    url: str = "sqlite:///data/keys.db"
    # Redis stores: every exchange (connect, each reply) is bounded by this; then the lookup fails (503)
    # unless the key is still in the cache.
    timeout_ms: float = 50.0


@dataclass(frozen=True, slots=True)
class CacheSettings:
    ttl_seconds: float = 5.0
    # Cached key lookups (known and unknown keys) per process. A cached key costs ~0.9 KB (tracemalloc, keys
    # sharing their permission set and allowlist; an unknown key ~0.2 KB), so a full cache of 100,000 holds
    # ~90 MB. Expired entries are dropped when the cache fills, so with many keys in use it sits near full.
    max_size: int = 100_000


@dataclass(frozen=True, slots=True)
class ManagementSettings:
    enabled: bool = True
    prefix: str = "/v1"  # the key API is served at {prefix}/api-keys and {prefix}/auth/test
    # Let dashboard JWTs (jwt.enabled) call {prefix}/api-keys; off: API keys only, a JWT gets 401 invalid_token.
    # A JWT caller is still held to its own scopes. {prefix}/auth/test takes a JWT either way: it changes
    # nothing and only tells a caller about its own credential, the check every credential needs. Read at start.
    allow_jwt: bool = False


@dataclass(frozen=True, slots=True)
class RotationSettings:
    grace_period: str = "7d"  # how long a rotated key keeps working; "0" for immediately
    webhook_url: str | None = None  # notified by `gateway keys rotate-due`
    deliver_value: bool = False  # include the new key's value in that notification


@dataclass(frozen=True, slots=True)
class UsageSettings:
    flush_seconds: float = 5.0  # last_used_at / request counts are written in batches this often


@dataclass(frozen=True, slots=True)
class OpsSettings:
    """Probes for orchestrators, answered before the auth gate without a credential (gateway/ops/health.py)."""

    healthz_path: str = "/healthz"  # liveness: 200 while the process serves
    readyz_path: str = "/readyz"  # readiness: 200, or 503 when the store/policy/Redis is not usable or draining
    readyz_timeout_seconds: float = 2.0  # each readiness check is bounded by this
    metrics_enabled: bool = True  # Prometheus text format at metrics_path (gateway/ops/metrics.py)
    metrics_path: str = "/metrics"
    metrics_scope: str | None = None  # when set, /metrics needs a key (or JWT) holding this scope
    metrics_key_labels: bool = False  # add a key_id label to gateway_requests_total (one series per key)
    log_format: str = "json"  # json (one object per line) or text
    access_log: bool = True  # one JSON line per request
    access_log_probes: bool = False  # also log probe and metrics requests
    watch_policy: bool = True  # reload the policy file when it changes (SIGHUP always reloads)
    shutdown_timeout_seconds: float = 30.0  # on SIGTERM, in-flight requests get this long to finish
    drain_seconds: float = 0.0  # on SIGTERM, keep serving this long (readyz 503) before closing the listener
    openapi_enabled: bool = True  # the management API's OpenAPI document and a docs page, without auth
    openapi_path: str = "/openapi.json"
    docs_path: str = "/docs"


@dataclass(frozen=True, slots=True)
class JWTSettings:
    """JWTs for dashboard users, on routes whose policy allows the ``jwt`` credential."""

    enabled: bool = False
    algorithms: tuple[str, ...] = ("HS256",)
    secret: str | None = field(default=None, repr=False)  # HS256 shared secret (or GATEWAY_JWT__SECRET)
    secret_file: str | None = None
    public_key_file: str | None = None  # PEM, for RS256 / ES256
    jwks_file: str | None = None  # a JWKS document on disk, for RS256 / ES256 with key ids
    issuer: str | None = None
    audience: str | None = None
    scopes_claim: str = "permissions"  # a list claim, or "scope" for a space-separated string
    subject_claim: str = "sub"
    leeway_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class TierSettings:
    """A rate-limit tier: requests per hour and per minute (burst); a missing window is not limited."""

    per_hour: int | None = None
    per_minute: int | None = None


DEFAULT_TIERS: dict[str, TierSettings] = {
    "standard": TierSettings(per_hour=1_000, per_minute=100),
    "high_volume": TierSettings(per_hour=10_000, per_minute=1_000),
    "limited": TierSettings(per_hour=100, per_minute=10),
    "unlimited": TierSettings(),
}
ON_STORE_ERROR = ("deny", "allow", "local")


@dataclass(frozen=True, slots=True)
class RateLimitSettings:
    enabled: bool = True
    # memory:// (one process) or redis://... (shared by every gateway process). Default: memory://, or the
    # store's Redis when store.url is a Redis URL.
    url: str | None = None
    default_tier: str = "standard"
    tiers: dict[str, TierSettings] = field(default_factory=lambda: dict(DEFAULT_TIERS))
    # What to do when Redis does not answer within redis_timeout_ms: deny (503), allow, or local (each
    # process limits in memory at 1/local_share of the limit).
    on_store_error: str = "deny"
    local_share: int = 1
    redis_timeout_ms: float = 50.0
    max_tracked_keys: int = 1_000_000


@dataclass(frozen=True, slots=True)
class LimitsSettings:
    """What one request and one client may cost the gateway (docs/security.md)."""

    max_header_bytes: int = 16_384  # all header lines of a request together (431)
    max_headers: int = 100  # header lines per request (431)
    max_target_bytes: int = 8_192  # the request target, path and query (414)
    max_body_bytes: int = 1_073_741_824  # per request body, checked against Content-Length and counted (413)
    # Per-route body limits, keyed by the policy rule's path template ("/v1/backups/**": 104857600).
    body_bytes_per_route: dict[str, int] = field(default_factory=dict)
    header_timeout_seconds: float = 10.0  # a request head unfinished past this (at most 2x) is cut off (slowloris; 408)
    body_timeout_seconds: float = 60.0  # longest wait for the next piece of a request body (slow uploads; 408)
    keep_alive_seconds: float = 5.0  # an idle keep-alive connection is closed after this
    max_connections: int = 1_024  # concurrent connections + requests per process; beyond it 503
    # Failed authentications per client address per minute before it gets 429 for the cool-down; 0: off.
    auth_failures_per_minute: int = 30
    auth_failures_cooldown_seconds: float = 60.0
    # Failed authentications per minute from all clients together that log an alert (a distributed attack).
    auth_failures_global_per_minute: int = 1_000
    max_tracked_clients: int = 100_000  # client addresses the failure counter remembers (oldest dropped)


@dataclass(frozen=True, slots=True)
class KeyFormat:
    live: str = "dep_live_"
    test: str = "dep_test_"

    def prefix(self, environment: str) -> str:
        return self.live if environment == "live" else self.test


@dataclass(frozen=True, slots=True)
class Settings:
    listen: ListenSettings = field(default_factory=ListenSettings)
    upstream: UpstreamSettings = field(default_factory=UpstreamSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    policies: str = "policies/deployerp.yaml"
    error_format: str = "deployerp"
    key_format: KeyFormat = field(default_factory=KeyFormat)
    debug_headers: bool = True
    trusted_proxies: tuple[str, ...] = ()
    forward_authorization: bool = False
    # The server secret (pepper) of the keyed key hash: a value, or a file holding it. With neither, the
    # gateway creates ``secret_file`` (default: beside the SQLite file) on first run, mode 600.
    secret: str | None = field(default=None, repr=False)
    secret_file: str | None = None
    management: ManagementSettings = field(default_factory=ManagementSettings)
    rotation: RotationSettings = field(default_factory=RotationSettings)
    usage: UsageSettings = field(default_factory=UsageSettings)
    ops: OpsSettings = field(default_factory=OpsSettings)
    jwt: JWTSettings = field(default_factory=JWTSettings)
    rate_limits: RateLimitSettings = field(default_factory=RateLimitSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    # Where relative paths in the file were resolved from (not a setting).
    base_dir: str = field(default=".", compare=False)


_ERROR_FORMATS = ("deployerp", "deployally")
_SECTIONS = frozenset(
    {"listen", "upstream", "store", "cache", "key_format", "management", "rotation", "usage", "jwt", "rate_limits",
     "limits"}
)


def _validate(s: Settings) -> None:
    def bad(name: str, why: str) -> ConfigError:
        return ConfigError(f"{name}: {why}")

    if not 1 <= s.listen.port <= 65535:
        raise bad("listen.port", f"must be between 1 and 65535 (got {s.listen.port})")
    if not s.listen.host:
        raise bad("listen.host", "must not be empty")
    parts = urlsplit(s.upstream.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise bad("upstream.url", f"must be an http:// or https:// URL with a host (got {s.upstream.url!r})")
    if parts.query or parts.fragment:
        raise bad("upstream.url", "must not carry a query or fragment")
    if any(c.isspace() or not c.isprintable() for c in s.upstream.url):
        raise bad("upstream.url", "must not contain spaces or control characters")
    try:
        port = parts.port  # a port that is not a number in 0..65535 raises here, not at the first request
    except ValueError:
        port = 0
    if port == 0:
        raise bad("upstream.url", "has an invalid port (use 1..65535)")
    for name in ("connect_timeout", "read_timeout"):
        if getattr(s.upstream, name) <= 0:
            raise bad(f"upstream.{name}", "must be a positive number of seconds")
    test_url = s.upstream.environments.test
    if test_url is not None:
        tparts = urlsplit(test_url)
        if tparts.scheme not in ("http", "https") or not tparts.hostname:
            raise bad("upstream.environments.test", f"must be an http:// or https:// URL (got {test_url!r})")
    if not s.management.prefix.startswith("/") or s.management.prefix.endswith("/") and s.management.prefix != "/":
        raise bad("management.prefix", "must start with '/' and not end with one (e.g. /v1)")
    try:
        parse_duration(s.rotation.grace_period)
    except ValueError as exc:
        raise bad("rotation.grace_period", str(exc)) from None
    if s.rotation.webhook_url is not None and urlsplit(s.rotation.webhook_url).scheme not in ("http", "https"):
        raise bad("rotation.webhook_url", "must be an http:// or https:// URL")
    rl = s.rate_limits
    if rl.url is not None and not rl.url.startswith("memory:"):
        try:
            redisurl.check(rl.url)
        except redisurl.RedisURLError as exc:
            raise bad("rate_limits.url", f"{exc} (or memory://)") from None
    if rl.default_tier not in rl.tiers:
        raise bad("rate_limits.default_tier", f"{rl.default_tier!r} is not one of the tiers")
    for name, tier in rl.tiers.items():
        if not valid_tier_name(name):
            raise bad(f"rate_limits.tiers.{name}", "tier names are letters, digits, '_' and '-'")
        for window, seconds in (("per_hour", 3600), ("per_minute", 60)):
            value = getattr(tier, window)
            if value is not None and value < 1:
                raise bad(f"rate_limits.tiers.{name}.{window}", "must be at least 1 (leave it out for no limit)")
            # GCRA spaces requests by period/limit in whole microseconds: more than one per microsecond
            # would make that interval 0.
            if value is not None and value > seconds * 1_000_000:
                raise bad(f"rate_limits.tiers.{name}.{window}",
                          f"must be at most {seconds * 1_000_000} (leave it out for no limit)")
    if rl.on_store_error not in ON_STORE_ERROR:
        raise bad("rate_limits.on_store_error", f"must be one of {', '.join(ON_STORE_ERROR)}")
    if rl.local_share < 1:
        raise bad("rate_limits.local_share", "must be at least 1")
    if not 1 <= rl.redis_timeout_ms <= 10_000:
        raise bad("rate_limits.redis_timeout_ms", "must be between 1 and 10000")
    if rl.max_tracked_keys < 1:
        raise bad("rate_limits.max_tracked_keys", "must be at least 1")
    if s.usage.flush_seconds <= 0:
        raise bad("usage.flush_seconds", "must be a positive number of seconds")
    for name in ("healthz_path", "readyz_path"):
        probe = getattr(s.ops, name)
        if not probe.startswith("/") or any(c in probe for c in "?#% ") or not probe.isascii():
            raise bad(f"ops.{name}", f"must be a plain path starting with '/' (got {probe!r})")
    if s.ops.healthz_path == s.ops.readyz_path:
        raise bad("ops.readyz_path", "must differ from ops.healthz_path")
    ops_paths = {"healthz_path": s.ops.healthz_path, "readyz_path": s.ops.readyz_path}
    for name in ("metrics_path", "openapi_path", "docs_path"):
        path = getattr(s.ops, name)
        if not path.startswith("/") or any(c in path for c in "?#% ") or not path.isascii():
            raise bad(f"ops.{name}", f"must be a plain path starting with '/' (got {path!r})")
        for other, taken in ops_paths.items():
            if path == taken:
                raise bad(f"ops.{name}", f"must differ from ops.{other}")
        ops_paths[name] = path
    if s.ops.metrics_scope is not None and not s.ops.metrics_scope.strip():
        raise bad("ops.metrics_scope", "must be a scope such as metrics:read (or left out)")
    if s.ops.log_format not in ("json", "text"):
        raise bad("ops.log_format", f"must be json or text (got {s.ops.log_format!r})")
    if s.ops.shutdown_timeout_seconds <= 0:
        raise bad("ops.shutdown_timeout_seconds", "must be a positive number of seconds")
    if s.ops.drain_seconds < 0:
        raise bad("ops.drain_seconds", "must be zero or more seconds")
    if s.ops.readyz_timeout_seconds <= 0:
        raise bad("ops.readyz_timeout_seconds", "must be a positive number of seconds")
    if s.upstream.pool_size < 1:
        raise bad("upstream.pool_size", "must be at least 1")
    scheme = s.store.url.split(":", 1)[0]
    if scheme != "sqlite":
        try:
            redisurl.check(s.store.url)
        except redisurl.RedisURLError as exc:
            raise bad("store.url", str(exc).replace("; use ", "; use sqlite:///path/keys.db, ", 1)) from None
    if not 1 <= s.store.timeout_ms <= 60_000:
        raise bad("store.timeout_ms", "must be between 1 and 60000")
    if not 1 <= s.listen.workers <= 64:
        raise bad("listen.workers", "must be between 1 and 64")
    if scheme == "sqlite" and not s.store.url.startswith("sqlite:///"):
        raise bad("store.url", "must look like sqlite:///relative/path.db or sqlite:////absolute/path.db")
    if s.cache.ttl_seconds < 0:
        raise bad("cache.ttl_seconds", "must be zero or more")
    if s.cache.max_size < 1:
        raise bad("cache.max_size", "must be at least 1")
    if s.error_format not in _ERROR_FORMATS:
        raise bad("error_format", f"must be one of {', '.join(_ERROR_FORMATS)} (got {s.error_format!r})")
    for env in ("live", "test"):
        prefix = getattr(s.key_format, env)
        if not prefix or not prefix.isascii() or not all(c.isalnum() or c == "_" for c in prefix):
            raise bad(f"key_format.{env}", "must be a non-empty prefix of letters, digits and '_'")
        if not prefix.endswith("_"):
            raise bad(f"key_format.{env}", "must end with '_' so the random part is unambiguous")
    if s.key_format.live == s.key_format.test:
        raise bad("key_format", "the live and test prefixes must differ")
    for i, cidr in enumerate(s.trusted_proxies):
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise bad(f"trusted_proxies[{i}]", f"not an IP address or CIDR network: {cidr!r}") from None
    _validate_limits(s.limits)
    if s.secret is not None and len(s.secret) < 16:
        raise bad("secret", "must be at least 16 characters (use 32 or more random bytes)")


def _validate_limits(lim: LimitsSettings) -> None:
    minimum = {"max_header_bytes": 1024, "max_headers": 8, "max_target_bytes": 256, "max_body_bytes": 0,
               "max_connections": 1, "auth_failures_per_minute": 0, "auth_failures_global_per_minute": 0,
               "max_tracked_clients": 1}
    for name, least in minimum.items():
        if getattr(lim, name) < least:
            raise ConfigError(f"limits.{name}: must be at least {least}")
    for name in ("header_timeout_seconds", "body_timeout_seconds", "keep_alive_seconds",
                 "auth_failures_cooldown_seconds"):
        if getattr(lim, name) <= 0:
            raise ConfigError(f"limits.{name}: must be a positive number of seconds")
    for template, size in lim.body_bytes_per_route.items():
        if not template.startswith("/"):
            raise ConfigError(f"limits.body_bytes_per_route.{template}: must be a policy path template (/v1/...)")
        if size < 0:
            raise ConfigError(f"limits.body_bytes_per_route.{template}: must be zero or more bytes")


def valid_tier_name(name: str) -> bool:
    return bool(name) and len(name) <= 64 and all(c.isascii() and (c.isalnum() or c in "_-") for c in name)


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> int:
    """``"90d"``, ``"12h"``, ``"30m"``, ``"45s"``, ``"2w"`` or ``"0"`` -> seconds. Raises ValueError."""
    t = str(text).strip().lower()
    if t == "0":
        return 0
    if len(t) < 2 or t[-1] not in _DURATION_UNITS or not t[:-1].isdigit() or len(t) > 12:
        raise ValueError(f"{text!r} is not a duration like 90d, 12h, 30m, 45s, 2w or 0")
    return int(t[:-1]) * _DURATION_UNITS[t[-1]]


# --- generic conversion from plain YAML/env data to the dataclasses above ------------------------------------


def _convert(tp: Any, value: Any, name: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(args[0], value, name)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name}: must be a mapping (got {type(value).__name__})")
        _, vtype = typing.get_args(tp)
        return {str(k): _convert(vtype, v if v is not None else {}, f"{name}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name}: must be a mapping (got {type(value).__name__})")
        return _build(tp, value, name + ".")  # type: ignore[arg-type]
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{name}: must be a list (got {type(value).__name__})")
        return tuple(_convert(str, v, f"{name}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"{name}: must be true or false (got {value!r})")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ConfigError(f"{name}: must be an integer (got {value!r})")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{name}: must be an integer (got {value!r})") from None
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ConfigError(f"{name}: must be a number (got {value!r})")
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{name}: must be a number (got {value!r})") from None
        if not math.isfinite(number):  # nan passes every "< 0" check; inf is no timeout at all
            raise ConfigError(f"{name}: must be a finite number (got {value!r})")
        return number
    if tp is str:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ConfigError(f"{name}: must be a string (got {type(value).__name__})")
        return str(value)
    raise AssertionError(f"unsupported settings type {tp!r}")  # pragma: no cover


def _build(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.name != "base_dir"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown setting (known: {', '.join(sorted(known))})")
    kwargs = {k: _convert(hints[k], v, prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    sections = _SECTIONS
    out: dict[str, Any] = {}
    # Whole sections before their fields, so the result never depends on the environment's order.
    for var, raw in sorted(environ.items(), key=lambda item: item[0].count("__")):
        if not var.startswith(ENV_PREFIX):
            continue
        path = var[len(ENV_PREFIX):].lower().split("__")
        if path[0] not in _TOP_LEVEL:
            # Not ours (GATEWAY_URL, the docs' shell variable): a typo inside a known section still fails below.
            continue
        if not all(path):
            raise ConfigError(f"{var}: malformed variable name (use GATEWAY_SECTION__FIELD)")
        if len(path) == 1 and path[0] in sections:
            # GATEWAY_KEY_FORMAT=deployally: a whole section given by a preset name (expanded now, so that
            # GATEWAY_KEY_FORMAT__TEST can still change one field of it)
            out[path[0]] = _normalise({path[0]: raw})[path[0]]
            continue
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{var}: conflicts with another GATEWAY_ variable")
        if isinstance(node.get(path[-1]), dict):
            raise ConfigError(f"{var}: conflicts with another GATEWAY_ variable")
        node[path[-1]] = raw
    return out


_TOP_LEVEL = frozenset(f.name for f in dataclasses.fields(Settings) if f.name != "base_dir")


def _normalise(data: dict[str, Any]) -> dict[str, Any]:
    """Turn preset shorthands into the mapping form before typed conversion."""
    kf = data.get("key_format")
    if isinstance(kf, str):
        if kf not in KEY_FORMATS:
            raise ConfigError(
                f"key_format: unknown preset {kf!r} (use {', '.join(KEY_FORMATS)} or a mapping with live/test)"
            )
        data["key_format"] = dict(KEY_FORMATS[kf])
    return data


def load_settings(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    required: bool = False,
) -> Settings:
    """Load settings from ``path`` (if it exists, or must exist when ``required``), the environment and
    ``overrides`` (already-nested mapping, e.g. from CLI flags)."""
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    base_dir = "."
    if path is not None:
        p = Path(path)
        if p.exists():
            base_dir = str(p.resolve().parent)
            try:
                loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
                raise ConfigError(f"{p}: not valid YAML{where}") from None
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{p}: cannot read: {exc.__class__.__name__}") from None
            if loaded is None:
                loaded = {}
            if not isinstance(loaded, dict):
                raise ConfigError(f"{p}: the top level must be a mapping of settings")
            data = loaded
        elif required:
            raise ConfigError(f"{p}: configuration file not found")
    data = _merge(_normalise(data), _normalise(_env_overrides(environ)))
    if overrides:
        data = _merge(data, overrides)
    rl = data.get("rate_limits")
    if isinstance(rl, Mapping) and isinstance(rl.get("tiers"), Mapping):
        # Tiers given in the file or environment change or add to the defaults; "per_hour: null" removes one.
        defaults = {name: dataclasses.asdict(t) for name, t in DEFAULT_TIERS.items()}
        data["rate_limits"] = {**rl, "tiers": _merge(defaults, rl["tiers"])}
    settings: Settings = _build(Settings, data)
    settings = dataclasses.replace(settings, base_dir=base_dir)
    _validate(settings)
    return settings


def resolve_path(settings: Settings, path: str) -> Path:
    """Resolve a path setting relative to the directory of the config file it came from."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else Path(settings.base_dir) / p


def sqlite_path(settings: Settings) -> Path:
    return resolve_path(settings, settings.store.url[len("sqlite:///"):])
