"""Typed, validated configuration: a pydantic-settings model.

Precedence, lowest first: the defaults below < the YAML file < ``GATEWAY_<SECTION>__<FIELD>`` environment
variables (``GATEWAY_<FIELD>`` for top-level fields) < command-line flags. :func:`load_settings` validates
everything at once and raises one :class:`ConfigError` naming every problem, one ``path: why`` line each
(``listen.port: must be between 1 and 65535 (got 70000)``); the CLI turns that into exit status 2.

Each field's ``description`` is its entry in docs/configuration.md (``python -m gateway.config.reference``).
The models are frozen; read them at start-up and copy what a hot path needs into plain attributes.
"""

from __future__ import annotations

import ipaddress
import os
import typing
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import (
    AfterValidator,
    AllowInfNan,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from gateway import redisurl
from gateway.config.problems import ConfigError as ConfigError  # what every reader catches
from gateway.config.problems import Invalid, problems_of
from gateway.config.sources import EnvironmentSource, YamlFile
from gateway.mailaddr import check_address, redacted_url
from gateway.messages import override_problems

ENV_PREFIX = "GATEWAY_"


# Key formats of the two platforms the gateway fronts: environment -> value prefix.
KEY_FORMATS: dict[str, dict[str, str]] = {
    "deployerp": {"live": "dep_live_", "test": "dep_test_"},
    "deployally": {"live": "da_", "test": "da_test_"},
}


# --- value types: YAML gives typed values, the environment text; both are read the same way -----------------------

_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _parsed(convert: Any) -> BeforeValidator:
    """Text converted by ``convert`` (the environment's values); anything else left to the strict type check, so
    ``port: true`` or ``port: 80.5`` in the file is refused rather than read as 1 or 80."""

    def before(value: Any) -> Any:
        if isinstance(value, str):
            try:
                return convert(value)
            except ValueError:
                return value
        return value

    return BeforeValidator(before)


def _boolean(text: str) -> bool:
    if text.lower() in _TRUE + _FALSE:
        return text.lower() in _TRUE
    raise ValueError(text)


def _listed(value: Any) -> Any:
    """``a,b`` (the environment's form of a list) -> ``["a", "b"]``."""
    return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value


Int = Annotated[int, Strict(), _parsed(int)]
Number = Annotated[float, Strict(), AllowInfNan(False), _parsed(float)]  # nan passes every "< 0" check
Bool = Annotated[bool, Strict(), _parsed(_boolean)]
Seconds = Annotated[Number, Field(gt=0)]
StrList = Annotated[tuple[str, ...], BeforeValidator(_listed)]


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        shown = redisurl.redacted(value) if "@" in value else value  # a password in the URL stays out
        raise Invalid(f"must be an http:// or https:// URL with a host (got {shown!r})")
    if parts.query or parts.fragment:
        raise Invalid("must not carry a query or fragment")
    if any(c.isspace() or not c.isprintable() for c in value):
        raise Invalid("must not contain spaces or control characters")
    try:
        port = parts.port  # a port that is not a number in 0..65535 raises here, not at the first request
    except ValueError:
        port = 0
    if port == 0:
        raise Invalid("has an invalid port (use 1..65535)")
    return value


def _jwks_url(value: str) -> str:
    """An https:// URL; http:// only to a loopback host (a provider on this machine, or a test's)."""
    _http_url(value)
    parts = urlsplit(value)
    if parts.username or parts.password:
        raise Invalid("must not carry credentials")
    if parts.scheme == "http":
        host = parts.hostname or ""
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise Invalid(f"must be an https:// URL (http:// only to a loopback host; got {value!r})")
    return value


def _plain_path(value: str) -> str:
    if not value.startswith("/") or any(c in value for c in "?#% ") or not value.isascii():
        raise Invalid(f"must be a plain path starting with '/' (got {value!r})")
    return value


def _cidr(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise Invalid(f"not an IP address or CIDR network: {value!r}") from None
    return value


def valid_tier_name(name: str) -> bool:
    return bool(name) and len(name) <= 64 and all(c.isascii() and (c.isalnum() or c in "_-") for c in name)


def _tier_name(name: str) -> str:
    if not valid_tier_name(name):
        raise Invalid("tier names are letters, digits, '_' and '-'")
    return name


def _window(seconds: int) -> AfterValidator:
    """A tier's requests per window: at least 1, and at most one per microsecond (GCRA spaces requests by
    period/limit in whole microseconds, so more would make that interval 0)."""

    def check(value: int | None) -> int | None:
        if value is not None and not 1 <= value <= seconds * 1_000_000:
            raise Invalid(f"must be between 1 and {seconds * 1_000_000} (leave it out for no limit)")
        return value

    return AfterValidator(check)


def _route_template(template: str) -> str:
    if not template.startswith("/"):
        raise Invalid("must be a policy path template (/v1/...)")
    return template


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> int:
    """``"90d"``, ``"12h"``, ``"30m"``, ``"45s"``, ``"2w"`` or ``"0"`` -> seconds. Raises ValueError."""
    t = str(text).strip().lower()
    if t == "0":
        return 0
    if len(t) < 2 or t[-1] not in _DURATION_UNITS or not t[:-1].isdigit() or len(t) > 12:
        raise ValueError(f"{text!r} is not a duration like 90d, 12h, 30m, 45s, 2w or 0")
    return int(t[:-1]) * _DURATION_UNITS[t[-1]]


def _duration(text: str) -> str:
    try:
        parse_duration(text)
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    return text


# --- the sections ------------------------------------------------------------------------------------------------


class Section(BaseModel):
    """A group of settings: frozen, unknown keys refused, numbers accepted where text is expected."""

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True, validate_default=True)


class ListenSettings(Section):
    host: str = Field("127.0.0.1", min_length=1, description=(
        "Address to listen on: 0.0.0.0 for every interface (a container); a sidecar may keep loopback."))
    port: Int = Field(8080, ge=1, le=65535, description="Port to listen on.")
    workers: Int = Field(1, ge=1, le=64, description=(
        "Uvicorn worker processes (more than one needs a Redis store and Redis limits)."))


class UpstreamEnvironments(Section):
    test: Annotated[str, AfterValidator(_http_url)] | None = Field(None, description=(
        "Where test keys are forwarded. With none, test keys are refused (they never reach the live upstream)."))


class UpstreamSettings(Section):
    url: Annotated[str, AfterValidator(_http_url)] = Field("http://127.0.0.1:9000", description=(
        "The API behind the gateway: every admitted request is streamed there."))
    connect_timeout: Seconds = Field(5.0, description=(
        "Seconds to connect to the upstream; then 502 `upstream_unavailable`."))
    read_timeout: Seconds = Field(60.0, description=(
        "Seconds without a byte from the upstream; then 504 `upstream_timeout`."))
    pool_size: Int = Field(100, ge=1, description="Pooled upstream connections per process.")
    environments: UpstreamEnvironments = Field(default_factory=UpstreamEnvironments)


POSTGRES_SCHEMES = ("postgresql", "postgres")
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def _postgres_url(url: str) -> str:
    """``postgresql://user:password@host:port/db?sslmode=...``, checked without connecting; the messages never
    hold the password."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise Invalid("not a usable PostgreSQL URL: look like postgresql://user:password@host:5432/db") from None
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    if not parts.hostname and "host" not in options:
        raise Invalid("a PostgreSQL URL names its server: postgresql://user:password@host:5432/db")
    if port is not None and not 0 < port < 65536:
        raise Invalid("the PostgreSQL port is not a port number")
    if parts.path.strip("/") == "":
        raise Invalid("a PostgreSQL URL names its database: postgresql://user:password@host:5432/db")
    sslmode = options.get("sslmode")
    if sslmode is not None and sslmode not in SSLMODES:
        raise Invalid(f"sslmode must be one of {', '.join(SSLMODES)}")
    return url


def _store_url(url: str) -> str:
    if url.split("://", 1)[0] in POSTGRES_SCHEMES and "://" in url:
        return _postgres_url(url)
    if url.split(":", 1)[0] != "sqlite":
        try:
            redisurl.check(url)
        except redisurl.RedisURLError as exc:
            raise Invalid(str(exc).replace(
                "; use ", "; use sqlite:///path/keys.db, postgresql://user:password@host:5432/db, ", 1)) from None
    elif not url.startswith("sqlite:///"):
        raise Invalid("must look like sqlite:///relative/path.db or sqlite:////absolute/path.db")
    return url


class StoreSettings(Section):
    url: Annotated[str, AfterValidator(_store_url)] = Field("sqlite:///data/keys.db", description=(
        "The key store: `sqlite:///relative.db` or `sqlite:////absolute.db`; or Redis, shared by every gateway "
        "process: one server `redis://host:port/db` (`rediss://` for TLS, `unix:///path.sock?db=0`), the master "
        "of a Sentinel service `redis+sentinel://host:26379[,host:port...]/<service>[/db]` or a Cluster "
        "`redis+cluster://host:port[,host:port...]` (`rediss+sentinel://`, `rediss+cluster://` for TLS; "
        "docs/redis.md); or PostgreSQL, shared by every gateway host: `postgresql://user:password@host:5432/db` "
        "(or `postgres://`; TLS with `?sslmode=require`, `verify-ca` or `verify-full`, and `sslrootcert=path`; "
        "run `gateway store migrate` once before the first start, docs/stores.md). Only keyed hashes of keys "
        "are stored."))
    timeout_ms: Number = Field(50.0, ge=1, le=60_000, description=(
        "Redis and PostgreSQL stores: every exchange (connect, each reply, each query, each wait for a pooled "
        "connection) is bounded by this (a new PostgreSQL connection by at least 250 ms); then the lookup fails "
        "(503) unless the key is still in the cache."))
    pool_size: Int = Field(10, ge=1, le=1000, description=(
        "PostgreSQL stores: connections each gateway process keeps at most (made as they are needed)."))


class CacheSettings(Section):
    ttl_seconds: Number = Field(5.0, ge=0, description=(
        "Seconds a key lookup is cached: a key revoked elsewhere is refused within this."))
    max_size: Int = Field(100_000, ge=1, description=(
        "Cached key lookups (known and unknown keys) per process. A cached key costs ~0.9 KB (tracemalloc, keys "
        "sharing their permission set and allowlist; an unknown key ~0.2 KB), so a full cache of 100,000 holds "
        "~90 MB. Expired entries are dropped when the cache fills, so with many keys in use it sits near full."))


def _prefix(value: str) -> str:
    if not value.startswith("/") or value.endswith("/") and value != "/":
        raise Invalid("must start with '/' and not end with one (e.g. /v1)")
    return value


class ManagementSettings(Section):
    enabled: Bool = Field(True, description=(
        "Serve the key-management API (`{prefix}/api-keys`) and `{prefix}/auth/test`."))
    prefix: Annotated[str, AfterValidator(_prefix)] = Field("/v1", description=(
        "The key API is served at `{prefix}/api-keys` and `{prefix}/auth/test` (DeployAlly: `/api/v1`)."))
    allow_jwt: Bool = Field(False, description=(
        "Let dashboard JWTs (`jwt.enabled`) call `{prefix}/api-keys`; off: API keys only, a JWT gets 401 "
        "`invalid_token`. A JWT caller is still held to its own scopes. `{prefix}/auth/test` takes a JWT either "
        "way: it changes nothing and only tells a caller about its own credential, the check every credential "
        "needs. Read at start."))


def _endpoint_path(value: str) -> str:
    if not value.startswith("/") or value.endswith("/") or any(c in value for c in "?#% ") or not value.isascii():
        raise Invalid(f"must be a plain path starting with '/', not ending with one (got {value!r})")
    return value


class ForwardAuthSettings(Section):
    """The endpoint nginx ``auth_request``, Traefik ForwardAuth and Envoy ``ext_authz`` call (docs/forward-auth.md).

    On by default: it decides only for peers in ``trusted_proxies`` (403 ``forward_auth_untrusted`` to anyone else),
    so until a proxy is named it decides nothing for anyone, and a client calling it itself learns no more than
    by sending the request. It costs the proxied requests one prefix comparison, made only when their path is
    not one of the gateway's own (probes, metrics)."""

    enabled: Bool = Field(True, description=(
        "Serve the endpoint (docs/forward-auth.md); only `trusted_proxies` get a decision from it."))
    path: Annotated[str, AfterValidator(_endpoint_path)] = Field("/_gateway/verify", description=(
        "The path nginx and Traefik call, and Envoy's `path_prefix` (every path below it is the endpoint's too)."))
    test_keys: Bool = Field(False, description=(
        "Decide on test keys too (the proxy must then send them to a test upstream, by `X-Auth-Environment`). "
        "Off, they get 403 `environment_unavailable`, as in proxy mode without a test upstream."))


class DashboardSettings(Section):
    """The dashboard (docs/dashboard.md): server-rendered pages where a user logs in and manages keys."""

    enabled: Bool = Field(True, description=(
        "Serve the dashboard at `path`: log in, list, create, rotate and revoke keys, read their audit trail and "
        "usage. Users are made with `gateway users create`. Read at start."))
    path: Annotated[str, AfterValidator(_endpoint_path)] = Field("/dashboard", description=(
        "Where the dashboard is served; every path below it is the dashboard's too. Read at start."))
    usage_days: int = Field(30, ge=1, le=366, description=(
        "Days of requests the usage chart of a key shows (one bar a day)."))


_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _tokens(values: tuple[str, ...]) -> tuple[str, ...]:
    """Method names and header names are tokens (RFC 9110 5.1, 9.1); ``*`` means any."""
    for value in values:
        if not value or not _TCHAR.issuperset(value):
            raise Invalid(f"{value!r} is not a method or header name (a token, RFC 9110 5.6.2), nor *")
    return values


def _origins(values: tuple[str, ...]) -> tuple[str, ...]:
    """``*``, or origins as browsers serialise them (Fetch 3.2.1, RFC 6454 6.1): scheme://host[:port], lower
    case, no path; the default port left out."""
    out = []
    for value in values:
        if value == "*":
            out.append(value)
            continue
        parts = urlsplit(value.strip())
        try:
            port = parts.port
        except ValueError:
            port = -1
        if (parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/")
                or parts.query or parts.fragment or parts.username is not None or port == -1
                or not value.isascii()):
            raise Invalid(f"{value!r} is not an origin: scheme://host[:port] (https://app.example.com), or *")
        default = 443 if parts.scheme == "https" else 80
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        out.append(f"{parts.scheme}://{host}" + (f":{port}" if port not in (None, default) else ""))
    return tuple(out)


# What a page may read of every answer besides the CORS-safelisted headers: the rate-limit state, when to retry
# and the request id (the gateway's own headers).
_EXPOSED = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "RateLimit-Policy", "RateLimit",
            "Retry-After", "X-Request-ID")


class CorsSettings(Section):
    """Browser pages on other origins calling through the gateway (the Fetch standard's CORS protocol, docs/cors.md).

    Off while ``allow_origins`` is empty. On, the gateway answers CORS preflights itself (no key needed) and puts
    the CORS headers on every answer to an allowed origin, its own refusals (401, 403, 429) included."""

    allow_origins: Annotated[StrList, AfterValidator(_origins)] = Field((), description=(
        "Origins whose pages may call the gateway (`https://app.example.com`), or `*` for any (not with "
        "`allow_credentials`). Empty: CORS off."))
    allow_methods: Annotated[StrList, AfterValidator(_tokens)] = Field(
        ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"), description=(
            "Methods a preflight may ask for (GET, HEAD and POST always pass, as in browsers); `*` for any."))
    allow_headers: Annotated[StrList, AfterValidator(_tokens)] = Field(
        ("Authorization", "Content-Type", "X-Request-ID", "traceparent", "tracestate"), description=(
            "Request headers a preflight may ask for (browsers ask for `Content-Type` when it is not a form or plain "
            "text type); `*` for any (echoes what was asked)."))
    expose_headers: Annotated[StrList, AfterValidator(_tokens)] = Field(_EXPOSED, description=(
        "Response headers a page may read besides the CORS-safelisted ones."))
    max_age: Int = Field(600, ge=0, le=86_400, description=(
        "Seconds a browser may cache a preflight's answer (`Access-Control-Max-Age`)."))
    allow_credentials: Bool = Field(False, description=(
        "Let pages send cookies and HTTP authentication (`Access-Control-Allow-Credentials: true`)."))

    @model_validator(mode="after")
    def _no_wildcard_with_credentials(self) -> CorsSettings:
        if self.allow_credentials and "*" in self.allow_origins:
            # Fetch 3.2.3: browsers refuse `*` on a credentialed answer; echoing any origin instead would let
            # every site read what the user's credentials unlock.
            raise Invalid("`*` cannot be used with allow_credentials: name the origins", "allow_origins")
        return self


def _webhook(url: str) -> str:
    if urlsplit(url).scheme not in ("http", "https"):
        raise Invalid("must be an http:// or https:// URL")
    return url


class RotationSettings(Section):
    grace_period: Annotated[str, AfterValidator(_duration)] = Field("7d", description=(
        "How long a rotated key keeps working (`90d`, `12h`, `30m`, `45s`, `2w`); `0` for immediately. A key's own "
        "`grace_period` overrides it."))
    check_seconds: Seconds = Field(60.0, description=(
        "How often `gateway serve` rotates the keys past their `rotation_period` and sends the notices due "
        "(docs/rotation.md). One process at a time does it: a lock in the store (Redis) or beside the file "
        "(SQLite)."))
    automatic: Bool = Field(True, description=(
        "Let `gateway serve` rotate due keys itself; off, only `gateway keys rotate-due` (cron) does."))
    webhook_url: Annotated[str, AfterValidator(_webhook)] | None = Field(None, description=(
        "POSTed a JSON notice for every automatic rotation (by the gateway or `gateway keys rotate-due`)."))
    deliver_value: Bool = Field(False, description=(
        "Include the new key's value in that notice (a secret manager's webhook, over HTTPS). Without it, or when "
        "the webhook fails, the value is held encrypted until revealed once (`POST .../api-keys/{id}/reveal`)."))


_SMTP_SCHEMES = {"smtp": 25, "smtps": 465}


def _smtp_url(url: str) -> str:
    """``smtp://[user:password@]host[:port]`` or ``smtps://...``; the problem named never shows the password."""
    shown = redacted_url(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise Invalid(f"has an invalid port (got {shown!r})") from None
    if parts.scheme not in _SMTP_SCHEMES or not parts.hostname:
        raise Invalid(f"must be smtp://host:port or smtps://host:port, with an optional user:password@ (got {shown!r})")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise Invalid(f"must name only the server: no path, query or fragment (got {shown!r})")
    if port == 0 or (parts.password is not None and not parts.username):
        raise Invalid(f"must give a port in 1..65535 and a user with a password (got {shown!r})")
    return url


def _address(value: str) -> str:
    try:
        return check_address(value)
    except ValueError as exc:
        raise Invalid(str(exc)) from None


class SMTPSettings(Section):
    """The mail server the notices go through (aiosmtplib)."""

    model_config = ConfigDict(populate_by_name=True)

    url: Annotated[str, AfterValidator(_smtp_url)] | None = Field(None, repr=False, description=(
        "`smtp://host:port` (STARTTLS whenever the server offers it) or `smtps://host:port` (TLS from the first "
        "byte), with an optional `user:password@` (percent-encoded). Unset: no e-mail is sent. The password is "
        "never logged or shown."))
    sender: Annotated[str, AfterValidator(_address)] | None = Field(None, alias="from", description=(
        "The `From` address of the notices (needed with `url`)."))
    ca_file: str | None = Field(None, description=(
        "A PEM file of the certificate authorities to trust for the server's certificate (a private relay); "
        "default: the system's."))
    timeout_seconds: Seconds = Field(10.0, description="Connecting and each exchange with the server.")


class NotificationSettings(Section):
    """E-mail notices to a key's `notification_email`: before it expires or rotates, and once it has rotated.
    They never contain a key value."""

    smtp: SMTPSettings = Field(default_factory=SMTPSettings)
    notice_before: Annotated[str, AfterValidator(_duration)] = Field("7d", description=(
        "How long before a key expires or is due for rotation its notice is sent."))
    retry_seconds: Seconds = Field(30.0, description=(
        "The pause after a failed delivery; it doubles with each further failure (at most 1 h)."))
    max_attempts: Int = Field(8, ge=1, le=100, description=(
        "Delivery attempts per notice before it is given up (counted as `failed`)."))

    @model_validator(mode="after")
    def _sender_with_url(self) -> NotificationSettings:
        if self.smtp.url is not None and self.smtp.sender is None:
            raise Invalid("is needed with notifications.smtp.url", "smtp.from")
        return self


class UsageSettings(Section):
    flush_seconds: Seconds = Field(5.0, description=(
        "`last_used_at` and request counts are written in batches this often."))


ProbePath = Annotated[str, AfterValidator(_plain_path)]


class OpsSettings(Section):
    """Probes for orchestrators, answered before the auth gate without a credential
    (gateway/observability/health.py)."""

    healthz_path: ProbePath = Field("/healthz", description="Liveness: 200 while the process serves.")
    readyz_path: ProbePath = Field("/readyz", description=(
        "Readiness: 200, or 503 when the store/policy/Redis is not usable or draining."))
    readyz_timeout_seconds: Seconds = Field(2.0, description="Each readiness check is bounded by this.")
    metrics_enabled: Bool = Field(True, description=(
        "Prometheus text format at `metrics_path` (gateway/observability/metrics.py)."))
    metrics_path: ProbePath = Field("/metrics", description="Where the metrics are served.")
    metrics_scope: str | None = Field(None, description=(
        "When set, the metrics need a key (or JWT) holding this scope."))
    metrics_key_labels: Bool = Field(False, description=(
        "Add a `key_id` label to `gateway_requests_total` (one series per key)."))
    log_format: Literal["json", "text"] = Field("json", description="`json` (one object per line) or `text`.")
    access_log: Bool = Field(True, description="One JSON line per request.")
    access_log_probes: Bool = Field(False, description="Also log probe and metrics requests.")
    watch_policy: Bool = Field(True, description="Reload the policy file when it changes (SIGHUP always reloads).")
    shutdown_timeout_seconds: Seconds = Field(30.0, description=(
        "On SIGTERM, in-flight requests get this long to finish."))
    drain_seconds: Number = Field(0.0, ge=0, description=(
        "On SIGTERM, keep serving this long (readyz 503) before closing the listener."))
    openapi_enabled: Bool = Field(True, description=(
        "The management API's OpenAPI document and a docs page, without auth."))
    openapi_path: ProbePath = Field("/openapi.json", description="Where the OpenAPI document is served.")
    docs_path: ProbePath = Field("/docs", description="Where the API docs page is served.")

    @field_validator("metrics_scope")
    @classmethod
    def _scope(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise Invalid("must be a scope such as metrics:read (or left out)")
        return value

    @model_validator(mode="after")
    def _distinct_paths(self) -> OpsSettings:
        taken: dict[str, str] = {}
        for name in ("healthz_path", "readyz_path", "metrics_path", "openapi_path", "docs_path"):
            path = getattr(self, name)
            if path in taken:
                raise Invalid(f"must differ from ops.{taken[path]}", name)
            taken[path] = name
        return self


def _otlp_endpoint(url: str | None) -> str | None:
    if url is not None:
        url = _http_url(url)
        from importlib.util import find_spec

        try:
            found = all(find_spec(m) is not None for m in ("opentelemetry.sdk.trace",
                                                          "opentelemetry.exporter.otlp.proto.http"))
        except ImportError:
            found = False
        if not found:
            raise Invalid("needs the OpenTelemetry packages: pip install 'gateway[otel]'")
    return url


class TracingSettings(Section):
    """OpenTelemetry spans of the proxy, exported over OTLP/HTTP (docs/tracing.md): off unless `otlp_endpoint` is
    set. The W3C `traceparent` is continued either way (gateway/observability/tracing.py)."""

    otlp_endpoint: Annotated[str | None, AfterValidator(_otlp_endpoint)] = Field(
        None, description=(
            "The OTLP/HTTP collector's base URL (`http://collector:4318`): spans are posted to its `/v1/traces`. "
            "Unset: no spans and OpenTelemetry is not even imported. Needs `pip install 'gateway[otel]'`."))
    service_name: str = Field("gateway", min_length=1, description="The `service.name` resource of the spans.")
    sample_ratio: Number = Field(1.0, ge=0, le=1, description=(
        "The share of new traces recorded (0 to 1); a continued trace follows its `traceparent`'s sampled flag."))


class JWTSettings(Section):
    """JWTs for dashboard users, on routes whose policy allows the ``jwt`` credential."""

    enabled: Bool = Field(False, description=(
        "Accept dashboard JWTs on routes whose policy rule lists the `jwt` credential."))
    algorithms: StrList = Field(("HS256",), description=(
        "Accepted JWT algorithms (HS256, RS256, ES256; comma-separated in the variable)."))
    secret: str | None = Field(None, repr=False, description=(
        "The HS256 shared secret. Prefer `GATEWAY_JWT__SECRET` or `secret_file`."))
    secret_file: str | None = Field(None, description="A file holding the HS256 secret.")
    public_key_file: str | None = Field(None, description="A PEM public key, for RS256 / ES256.")
    jwks_file: str | None = Field(None, description=(
        "A JWKS document on disk, for RS256 / ES256 with key ids."))
    jwks_url: Annotated[str, AfterValidator(_jwks_url)] | None = Field(None, description=(
        "The identity provider's JWKS URL (https://; http:// only to loopback), for RS256 / ES256 with key ids. "
        "Keys are fetched at start-up and in the background, kept by `kid`, and served from that cache while the "
        "provider is away; a token naming an unknown `kid` sets off one fetch (at most one per "
        "`jwks_min_refresh_seconds`) and waits for it."))
    jwks_refresh_seconds: Seconds = Field(300.0, description=(
        "How often the JWKS URL is fetched again (a provider rotating keys is followed within this)."))
    jwks_min_refresh_seconds: Seconds = Field(30.0, description=(
        "The least time between two fetches of the JWKS URL, whatever unknown key ids tokens name."))
    jwks_timeout_seconds: Annotated[Seconds, Field(le=60)] = Field(5.0, description=(
        "The bound on one fetch of the JWKS URL (connect and read together)."))
    issuer: str | None = Field(None, description="Required `iss` claim, when set.")
    audience: str | None = Field(None, description="Required `aud` claim, when set.")
    scopes_claim: str = Field("permissions", description=(
        "The claim holding the scopes: a list claim, or `scope` for a space-separated string."))
    subject_claim: str = Field("sub", description="The claim naming the user.")
    leeway_seconds: Number = Field(0.0, description="Clock skew allowed on `exp` / `nbf`.")

    @model_validator(mode="after")
    def _refresh_floor(self) -> JWTSettings:
        if self.jwks_min_refresh_seconds > self.jwks_refresh_seconds:
            raise Invalid("must not be longer than jwt.jwks_refresh_seconds", "jwks_min_refresh_seconds")
        return self


MAX_TOKEN_LIFETIME = 86_400  # DeployAlly's guide: "JWTs expiram em 24 horas"


def _token_lifetime(text: str) -> str:
    seconds = parse_duration(_duration(text))
    if seconds <= 0:
        raise Invalid("must be longer than zero")
    if seconds > MAX_TOKEN_LIFETIME:
        raise Invalid("must be at most 24h: a dashboard JWT never lasts longer (renew it with a refresh token)")
    return text


def _refresh_lifetime(text: str) -> str:
    if parse_duration(_duration(text)) <= 0:
        raise Invalid("must be longer than zero")
    return text


class AccountsSettings(Section):
    """Dashboard users (docs/users.md): the gateway's own login, refresh and logout, and the JWTs it signs."""

    enabled: Bool = Field(False, description=(
        "Serve `{prefix}/auth/login`, `/auth/refresh`, `/auth/logout` and `/.well-known/jwks.json`, and accept "
        "the JWTs the gateway signs (on routes whose policy lists the `jwt` credential). The signing key is "
        "created on first start."))
    token_lifetime: Annotated[str, AfterValidator(_token_lifetime)] = Field("24h", description=(
        "How long a JWT from a login or a refresh lasts (`24h`, `30m`); at most 24h."))
    refresh_lifetime: Annotated[str, AfterValidator(_refresh_lifetime)] = Field("30d", description=(
        "How long a login's session can be renewed with refresh tokens; a refresh never extends it."))
    issuer: str = Field("gateway", min_length=1, description="The `iss` claim of the JWTs the gateway signs.")
    signing_key_dir: str | None = Field(None, description=(
        "The directory (mode 700) of the signing key (`signing-key.pem`, mode 600, ES256); other `*.pem` "
        "keys in it are published too (a key being retired). Default: `signing-keys` beside the SQLite file, "
        "else beside the configuration file. Gateways sharing a Redis store must share this directory's key."))
    min_password_length: Int = Field(8, ge=1, le=1024, description=(
        "The shortest password `gateway users create` / `reset` accept."))
    login_failures_per_address: Int = Field(20, ge=0, description=(
        "Failed logins per client address per minute before it gets 429 for `login_cooldown_seconds`; 0: off."))
    login_failures_per_account: Int = Field(5, ge=0, description=(
        "Failed logins per account (e-mail address) per minute before it gets 429 for `login_cooldown_seconds`; "
        "0: off."))
    login_cooldown_seconds: Seconds = Field(300.0, description=(
        "How long an address or account over its failed-login limit gets 429 (with `Retry-After`)."))

    @property
    def token_seconds(self) -> int:
        return parse_duration(self.token_lifetime)

    @property
    def refresh_seconds(self) -> int:
        return parse_duration(self.refresh_lifetime)


class TierSettings(Section):
    """A rate-limit tier: requests per hour and per minute (burst); a missing window is not limited."""

    per_hour: Annotated[Int | None, _window(3600)] = Field(None, description=(
        "Requests per hour (leave out for no hourly limit)."))
    per_minute: Annotated[Int | None, _window(60)] = Field(None, description=(
        "Requests per minute, the burst (leave out for no per-minute limit)."))


DEFAULT_TIERS: dict[str, TierSettings] = {
    "standard": TierSettings(per_hour=1_000, per_minute=100),
    "high_volume": TierSettings(per_hour=10_000, per_minute=1_000),
    "limited": TierSettings(per_hour=100, per_minute=10),
    "unlimited": TierSettings(),
}
OnStoreError = Literal["deny", "allow", "local"]
ON_STORE_ERROR: tuple[str, ...] = typing.get_args(OnStoreError)


def _limiter_url(url: str) -> str:
    if not url.startswith("memory:"):
        try:
            redisurl.check(url)
        except redisurl.RedisURLError as exc:
            raise Invalid(f"{exc} (or memory://)") from None
    return url


class RateLimitSettings(Section):
    enabled: Bool = Field(True, description=(
        "Apply per-key rate limits (429 `rate_limit_exceeded` with `Retry-After`)."))
    url: Annotated[str, AfterValidator(_limiter_url)] | None = Field(None, description=(
        "`memory://` (one process) or `redis://...` (shared by every gateway process). Default: `memory://`, or "
        "the store's Redis when `store.url` is a Redis URL."))
    default_tier: str = Field("standard", description="The tier of keys that name none.")
    tiers: dict[Annotated[str, AfterValidator(_tier_name)], TierSettings] = Field(
        default_factory=lambda: dict(DEFAULT_TIERS), description=(
            "Tiers by name; a tier given in the file or environment changes or adds to these."))
    on_store_error: OnStoreError = Field("deny", description=(
        "What to do when Redis does not answer within `redis_timeout_ms`: `deny` (503), `allow`, or `local` "
        "(each process limits in memory at 1/`local_share` of the limit)."))
    local_share: Int = Field(1, ge=1, description=(
        "With `on_store_error: local`, each process allows 1/local_share of the limit."))
    redis_timeout_ms: Number = Field(50.0, ge=1, le=10_000, description=(
        "How long a Redis rate-limit call may take before `on_store_error` applies."))
    max_tracked_keys: Int = Field(1_000_000, ge=1, description=(
        "Keys the in-memory limiter tracks (least recently used dropped)."))

    @field_validator("tiers", mode="before")
    @classmethod
    def _over_the_defaults(cls, value: Any) -> Any:
        """Tiers given in the file or environment change or add to the defaults; ``per_hour: null`` removes a
        window, a tier given as null has none."""
        if not isinstance(value, Mapping):
            return value
        tiers: dict[Any, Any] = {name: tier.model_dump() for name, tier in DEFAULT_TIERS.items()}
        for name, tier in value.items():
            tier = {} if tier is None else tier
            base = tiers.get(name)
            tiers[name] = {**base, **tier} if isinstance(base, dict) and isinstance(tier, Mapping) else tier
        return tiers

    @model_validator(mode="after")
    def _default_tier_exists(self) -> RateLimitSettings:
        if self.default_tier not in self.tiers:
            raise Invalid(f"{self.default_tier!r} is not one of the tiers", "default_tier")
        return self


class LimitsSettings(Section):
    """What one request and one client may cost the gateway (docs/security.md)."""

    max_header_bytes: Int = Field(16_384, ge=1024, description="All header lines of a request together (431).")
    max_headers: Int = Field(100, ge=8, description="Header lines per request (431).")
    max_target_bytes: Int = Field(8_192, ge=256, description="The request target, path and query (414).")
    max_body_bytes: Int = Field(1_073_741_824, ge=0, description=(
        "Per request body, checked against Content-Length and counted (413)."))
    body_bytes_per_route: dict[Annotated[str, AfterValidator(_route_template)], Annotated[Int, Field(ge=0)]] = (
        Field(default_factory=dict, description=(
            "Per-route body limits, keyed by the policy rule's path template (`\"/v1/backups/**\": 104857600`).")))
    header_timeout_seconds: Seconds = Field(10.0, description=(
        "A request head unfinished past this (at most 2x) is cut off (slowloris; 408)."))
    body_timeout_seconds: Seconds = Field(60.0, description=(
        "Longest wait for the next piece of a request body (slow uploads; 408)."))
    keep_alive_seconds: Seconds = Field(5.0, description="An idle keep-alive connection is closed after this.")
    websocket_idle_seconds: Seconds = Field(300.0, description=(
        "A proxied WebSocket with no message either way for this long is closed on both sides (1001)."))
    max_connections: Int = Field(1_024, ge=1, description=(
        "Concurrent connections + requests per process; beyond it 503."))
    auth_failures_per_minute: Int = Field(30, ge=0, description=(
        "Failed authentications per client address per minute before it gets 429 for the cool-down; 0: off."))
    auth_failures_cooldown_seconds: Seconds = Field(60.0, description=(
        "How long an address over `auth_failures_per_minute` gets 429."))
    auth_failures_global_per_minute: Int = Field(1_000, ge=0, description=(
        "Failed authentications per minute from all clients together that log an alert (a distributed attack)."))
    max_tracked_clients: Int = Field(100_000, ge=1, description=(
        "Client addresses the failure counter remembers (oldest dropped)."))


def _key_prefix(value: str) -> str:
    if not value or not value.isascii() or not all(c.isalnum() or c == "_" for c in value):
        raise Invalid("must be a non-empty prefix of letters, digits and '_'")
    if not value.endswith("_"):
        raise Invalid("must end with '_' so the random part is unambiguous")
    return value


class KeyFormat(Section):
    live: Annotated[str, AfterValidator(_key_prefix)] = Field("dep_live_", description="Prefix of live keys.")
    test: Annotated[str, AfterValidator(_key_prefix)] = Field("dep_test_", description="Prefix of test keys.")

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: Any) -> Any:
        if isinstance(data, str):
            if data not in KEY_FORMATS:
                raise Invalid(f"unknown preset {data!r} (use {', '.join(KEY_FORMATS)} or a mapping with live/test)")
            return dict(KEY_FORMATS[data])
        return data

    @model_validator(mode="after")
    def _distinct(self) -> KeyFormat:
        if self.live == self.test:
            raise Invalid("the live and test prefixes must differ")
        return self

    def prefix(self, environment: str) -> str:
        return self.live if environment == "live" else self.test


def _pepper(value: str | None) -> str | None:
    if value is not None and len(value) < 16:
        raise Invalid("must be at least 16 characters (use 32 or more random bytes)")
    return value


# The sources load_settings adds to a Settings(...) call: Settings() alone is the defaults (and its arguments).
_SOURCES: ContextVar[tuple[PydanticBaseSettingsSource, ...]] = ContextVar("gateway_settings_sources", default=())


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", case_sensitive=True, extra="forbid", frozen=True,
        coerce_numbers_to_str=True, validate_default=True,
    )

    listen: ListenSettings = Field(default_factory=ListenSettings, description="The gateway's own socket.")
    upstream: UpstreamSettings = Field(default_factory=UpstreamSettings, description="The API behind the gateway.")
    store: StoreSettings = Field(default_factory=StoreSettings, description="Where the keys are kept.")
    cache: CacheSettings = Field(default_factory=CacheSettings, description="Key lookups cached in each process.")
    policies: str = Field("policies/deployerp.yaml", description=(
        "The policy file (docs/policies.md); relative to the configuration file."))
    error_format: Literal["deployerp", "deployally"] = Field("deployerp", description=(
        "`deployerp` (`{\"error\": {...}}`) or `deployally` (`{\"success\": false, \"error\": {...}}`)."))
    messages: dict[str, str] = Field(default_factory=dict, description=(
        "Your own words for answers the gateway writes itself, by message id (`invalid_token`, "
        "`invalid_token.revoked`, `validation_error.missing`...: every id, with both languages' texts, is in "
        "docs/troubleshooting.md). They replace the catalogue of `error_format` (English for deployERP, Portuguese "
        "for DeployAlly); a text may use the placeholders of the one it replaces (`{where}`), never others. An "
        "unknown id stops the gateway naming it. Read at start."))
    key_format: KeyFormat = Field(default_factory=KeyFormat, description=(
        "Key prefixes: the preset `deployerp` (`dep_live_`/`dep_test_`) or `deployally` (`da_`/`da_test_`), or a "
        "mapping with `live` and `test`."))
    debug_headers: Bool = Field(True, description=(
        "Honour `X-Debug-Auth: true` with `X-Auth-*` answer headers (docs/troubleshooting.md)."))
    trusted_proxies: tuple[Annotated[str, AfterValidator(_cidr)], ...] = Field((), description=(
        "CIDRs of proxies whose `X-Forwarded-For` is believed (comma-separated in the variable)."))
    forward_authorization: Bool = Field(False, description=(
        "Pass the client's `Authorization` header on to the upstream."))
    secret: Annotated[str | None, AfterValidator(_pepper)] = Field(None, repr=False, description=(
        "The server secret (pepper) of the keyed key hash, at least 16 characters; prefer `GATEWAY_SECRET`. With "
        "neither this nor `secret_file`, the gateway creates `secret_file` (default: beside the SQLite file) on "
        "first run, mode 600."))
    secret_file: str | None = Field(None, description="A file holding the server secret.")
    management: ManagementSettings = Field(default_factory=ManagementSettings, description=(
        "The key-management API."))
    rotation: RotationSettings = Field(default_factory=RotationSettings, description="Key rotation.")
    notifications: NotificationSettings = Field(default_factory=NotificationSettings, description=(
        "E-mail notices to a key's `notification_email` (docs/rotation.md)."))
    usage: UsageSettings = Field(default_factory=UsageSettings, description="Per-key usage records.")
    ops: OpsSettings = Field(default_factory=OpsSettings, description=(
        "Probes, metrics, logs and shutdown, for orchestrators."))
    jwt: JWTSettings = Field(default_factory=JWTSettings, description=(
        "JWTs for dashboard users, on routes whose policy allows the `jwt` credential."))
    accounts: AccountsSettings = Field(default_factory=AccountsSettings, description=(
        "Dashboard users, their login and the JWTs the gateway signs (docs/users.md)."))
    rate_limits: RateLimitSettings = Field(default_factory=RateLimitSettings, description=(
        "Per-key rate limits (GCRA, both windows together). A key's tier is its `rate_limit_tier`, else "
        "`default_tier`."))
    limits: LimitsSettings = Field(default_factory=LimitsSettings, description=(
        "What one request and one client may cost the gateway (docs/security.md)."))
    forward_auth: ForwardAuthSettings = Field(default_factory=ForwardAuthSettings, description=(
        "The forward-auth endpoint for nginx `auth_request`, Traefik ForwardAuth and Envoy `ext_authz`."))
    dashboard: DashboardSettings = Field(default_factory=DashboardSettings, description=(
        "The dashboard in a browser (docs/dashboard.md)."))
    cors: CorsSettings = Field(default_factory=CorsSettings, description=(
        "Cross-origin requests from browsers (CORS), answered by the proxy: off unless `allow_origins` is set."))
    tracing: TracingSettings = Field(default_factory=TracingSettings, description=(
        "OpenTelemetry spans over OTLP/HTTP (docs/tracing.md): off unless `otlp_endpoint` is set."))
    # Where relative paths in the file were resolved from: set by load_settings, not a setting.
    base_dir: str = Field(".", exclude=True)

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        return _listed(value)

    @field_validator("messages")
    @classmethod
    def _known_messages(cls, value: dict[str, str]) -> dict[str, str]:
        problems = override_problems(value)
        if problems:
            message_id, why = problems[0]
            raise Invalid(why, message_id)
        return value

    @model_validator(mode="after")
    def _forward_auth_path_free(self) -> Settings:
        path = self.forward_auth.path
        for name in ("healthz_path", "readyz_path", "metrics_path", "openapi_path", "docs_path"):
            if path == getattr(self.ops, name):
                raise Invalid(f"must differ from ops.{name}", "forward_auth.path")
        prefix = self.management.prefix
        if self.forward_auth.enabled and (prefix == path or prefix.startswith(path + "/")):
            # Every path below forward_auth.path is the endpoint's (Envoy's form): the key API would be unreachable.
            raise Invalid(f"{path} would hide the management API at {prefix}", "forward_auth.path")
        return self

    @model_validator(mode="after")
    def _dashboard_path_free(self) -> Settings:
        """The dashboard owns every path below its own: none of the gateway's other endpoints may be there."""
        d = self.dashboard
        if not d.enabled:
            return self
        taken = {f"ops.{n}": getattr(self.ops, n)
                 for n in ("healthz_path", "readyz_path", "metrics_path", "openapi_path", "docs_path")}
        if self.management.enabled:
            base = "" if self.management.prefix == "/" else self.management.prefix
            taken["management.prefix"] = base + "/api-keys"
            taken["management.prefix "] = base + "/auth/test"
        if self.forward_auth.enabled:
            taken["forward_auth.path"] = self.forward_auth.path
        for name, other in taken.items():
            if other == d.path or other.startswith(d.path + "/") or d.path.startswith(other + "/"):
                raise Invalid(f"{d.path} overlaps {name.strip()} ({other})", "dashboard.path")
        return self

    def __eq__(self, other: object) -> bool:
        """Equal settings, wherever their file was (``base_dir`` is not compared)."""
        if not isinstance(other, Settings):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in _FIELDS)

    __hash__ = None  # type: ignore[assignment]  # mutable mappings inside

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Highest first: the arguments (command-line flags), then what load_settings adds (environment, file).
        return (init_settings, *_SOURCES.get())


_FIELDS = tuple(name for name in Settings.model_fields if name != "base_dir")
# Sections that can be given whole by a preset name (key_format: deployally), in the file and the environment.
PRESETS = {"key_format": KEY_FORMATS}


def load_settings(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    required: bool = False,
) -> Settings:
    """Load settings from ``path`` (if it exists, or must exist when ``required``), the environment and
    ``overrides`` (already-nested mapping, e.g. from CLI flags). Every problem found is named in the one
    :class:`ConfigError` raised."""
    env = EnvironmentSource(Settings, os.environ if environ is None else environ, PRESETS)
    sources: list[PydanticBaseSettingsSource] = [env]
    problems = [*env.problems]
    base_dir = "."
    if path is not None:
        p = Path(path)
        if p.exists():
            base_dir = str(p.resolve().parent)
            if not p.is_file():
                raise ConfigError(f"{p}: cannot read: not a file")
            file = YamlFile(Settings, p, PRESETS)
            sources.append(file)
            problems += file.problems
        elif required:
            raise ConfigError(f"{p}: configuration file not found")
    token = _SOURCES.set(tuple(sources))
    try:
        settings = Settings(**(overrides or {}))
    except ValidationError as exc:
        given = overrides or {}
        raise ConfigError(*problems, *problems_of(exc, Settings, lambda at: _origin(at, env, given))) from None
    finally:
        _SOURCES.reset(token)
    if problems:
        raise ConfigError(*problems)
    return settings.model_copy(update={"base_dir": base_dir})


def _origin(path: tuple[str, ...], env: EnvironmentSource, overrides: Mapping[str, Any]) -> str | None:
    """The variable a bad value came from, unless a command-line flag set it over the environment."""
    node: Any = overrides
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return env.variable_for(path)
        node = node[part]
    return None


def resolve_path(settings: Settings, path: str) -> Path:
    """Resolve a path setting relative to the directory of the config file it came from."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else Path(settings.base_dir) / p


def sqlite_path(settings: Settings) -> Path:
    return resolve_path(settings, settings.store.url[len("sqlite:///"):])
