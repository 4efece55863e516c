"""Redis URLs: which forms the gateway accepts, checked at config load without connecting (or importing redis).

URL forms (the scheme picks the topology)::

    redis://[[user]:password@]host[:port][/db]        one server (rediss:// for TLS, unix:///path.sock?db=0)
    redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/<service>[/db][?sentinel_password=...]
                                                      the master of <service>, found through Sentinel (26379)
    redis+cluster://[[user]:password@]host[:port][,host[:port]...]
                                                      Redis Cluster; any reachable node finds the rest (6379)

``rediss+sentinel://`` and ``rediss+cluster://`` use TLS throughout. The password in the URL is the data
nodes'; a Sentinel that has its own (``requirepass`` in sentinel.conf) takes ``sentinel_password`` (and
``sentinel_username``) as query options.

:func:`check` validates a URL without connecting (settings call it at load time); its messages never contain
a password, nor does :func:`redacted`. :mod:`gateway.redisconn` turns a URL into a client.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

SINGLE_SCHEMES = ("redis", "rediss", "unix")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SCHEMES = SINGLE_SCHEMES + SENTINEL_SCHEMES + CLUSTER_SCHEMES
FORMS = ("redis://host:port/db, redis+sentinel://host:26379[,host:port...]/<service>[/db] or "
         "redis+cluster://host:port[,host:port...]")
_SENTINEL_OPTIONS = frozenset({"sentinel_username", "sentinel_password"})
_SCHEME_CHARS = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*\Z")


class RedisURLError(ValueError):
    """A Redis URL that cannot work; the message names the problem and never holds a password."""


@dataclass(frozen=True, slots=True)
class Topology:
    """What a Sentinel or Cluster URL names. Credentials are kept out of ``repr``."""

    kind: str  # "sentinel" or "cluster"
    hosts: tuple[tuple[str, int], ...]
    tls: bool
    service: str = ""
    db: int = 0
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    sentinel_username: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)


def scheme_of(url: str) -> str:
    return url.split(":", 1)[0] if "://" in url else ""  # exact case, as the rest of the gateway compares it


def scheme_error(url: str, accepted: str) -> RedisURLError:
    """'unsupported scheme' naming the scheme only when it looks like one (it could otherwise be a password)."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    said = f"unsupported scheme {scheme!r}" if _SCHEME_CHARS.match(scheme) else "no scheme (such as redis://)"
    return RedisURLError(f"{said}; use {accepted}")


def redacted(url: str) -> str:
    """The URL without its passwords (userinfo and ``*password*`` query options), for messages and logs."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "<not a URL>"
    netloc, slash, path = rest.partition("/")
    if "@" in netloc:
        user, _, hosts = netloc.rpartition("@")
        name = user.split(":", 1)[0] if ":" in user else ""
        netloc = f"{name}:***@{hosts}" if ":" in user else f"***@{hosts}" if user else hosts
    path, q, query = path.partition("?")
    if query:
        query = "&".join(
            f"{k}=***" if "password" in k.lower() else part
            for part in query.split("&") for k in [part.split("=", 1)[0]]
        )
    return f"{scheme}://{netloc}{slash}{path}{q}{query}"


def _port(text: str, host: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise RedisURLError(f"bad port {text!r} for host {host!r} (use 1..65535)")
    return int(text)


def _hosts(netloc: str, default_port: int) -> tuple[tuple[str, int], ...]:
    out: list[tuple[str, int]] = []
    for item in netloc.split(","):
        item = item.strip()
        if not item:
            raise RedisURLError("an empty entry in the host list (host[:port],host[:port]...)")
        if item.startswith("["):  # [IPv6]:port
            host, _, after = item[1:].partition("]")
            if not host or (after and not after.startswith(":")):
                raise RedisURLError(f"bad host {item!r} (IPv6 addresses look like [::1]:26379)")
            port = _port(after[1:], host) if after else default_port
        else:
            host, colon, port_text = item.partition(":")
            if not host:
                raise RedisURLError(f"a port without a host ({item!r})")
            port = _port(port_text, host) if colon else default_port
        if any(c.isspace() or c in "/?#@[]" for c in host):
            raise RedisURLError(f"bad host {host!r}")
        out.append((host, port))
    return tuple(out)


def parse(url: str) -> Topology:
    """A Sentinel or Cluster URL's parts; :class:`RedisURLError` naming the problem if it cannot work."""
    scheme = scheme_of(url)
    if scheme not in SENTINEL_SCHEMES + CLUSTER_SCHEMES:
        raise scheme_error(url, "redis+sentinel:// or redis+cluster://")
    sentinel = scheme in SENTINEL_SCHEMES
    rest = url.split("://", 1)[1]
    if "#" in rest:
        raise RedisURLError("must not carry a fragment ('#')")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hostlist = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
        if not colon:  # redis://secret@host: redis-py treats a lone userinfo as a username; say so
            raise RedisURLError("credentials must be user:password@ or :password@ (a lone name is ambiguous)")
    if not hostlist:
        raise RedisURLError("no hosts (list them as host[:port],host[:port]...)")
    hosts = _hosts(hostlist, 26379 if sentinel else 6379)
    options: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if not sentinel or key not in _SENTINEL_OPTIONS:
            allowed = ", ".join(sorted(_SENTINEL_OPTIONS)) if sentinel else "none"
            raise RedisURLError(f"unknown option {key!r} (allowed: {allowed})")
        options[key] = value
    segments = [s for s in path.split("/")] if path else []
    if segments and segments[-1] == "":
        segments.pop()  # a trailing slash
    db = 0
    service = ""
    if sentinel:
        if not segments or not segments[0]:
            raise RedisURLError("missing the Sentinel service name (redis+sentinel://host:26379/<service>[/db])")
        service = unquote(segments[0])
        db_parts = segments[1:]
    else:
        db_parts = segments
    if len(db_parts) > 1:
        raise RedisURLError(f"too many path segments (expected {'/<service>[/db]' if sentinel else '[/0]'})")
    if db_parts:
        if not db_parts[0].isdigit():
            raise RedisURLError(f"the database must be a number (got {db_parts[0]!r})")
        db = int(db_parts[0])
        if not sentinel and db != 0:
            raise RedisURLError("Redis Cluster has only database 0")
    return Topology(
        kind="sentinel" if sentinel else "cluster", hosts=hosts, tls=scheme.startswith("rediss"), service=service,
        db=db, username=username, password=password, sentinel_username=options.get("sentinel_username") or None,
        sentinel_password=options.get("sentinel_password") or None,
    )


def check(url: str) -> None:
    """Refuse a Redis URL that cannot work (any of :data:`SCHEMES`), without connecting."""
    scheme = scheme_of(url)
    if scheme not in SCHEMES:
        raise scheme_error(url, FORMS)
    if any(c.isspace() or not c.isprintable() for c in url):
        raise RedisURLError("must not contain spaces or control characters")
    if scheme in SENTINEL_SCHEMES + CLUSTER_SCHEMES:
        parse(url)
        return
    parts = urlsplit(url)
    if scheme == "unix":
        if not parts.path:
            raise RedisURLError("a unix socket URL needs a path (unix:///run/redis.sock?db=0)")
        return
    if "," in parts.netloc:
        raise RedisURLError("several hosts: use redis+sentinel:// or redis+cluster:// for those")
    try:
        parts.port  # noqa: B018 - a port that is not a number in 0..65535 raises here, not at the first request
    except ValueError:
        raise RedisURLError("bad port (use 1..65535)") from None
    if parts.path not in ("", "/") and not parts.path[1:].isdigit():
        raise RedisURLError(f"the database must be a number (got {parts.path[1:]!r})")
