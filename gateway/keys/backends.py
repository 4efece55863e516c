"""Key stores by URL scheme: ``sqlite:///path``, a Redis URL (one server, Sentinel, Cluster) or a PostgreSQL
URL (``postgresql://``, ``postgres://``)."""

from __future__ import annotations

from gateway.config.settings import POSTGRES_SCHEMES, ConfigError, Settings, resolve_path
from gateway.keys.store import KeyStore
from gateway.redisurl import SCHEMES

REDIS_SCHEMES = SCHEMES  # one server, a Sentinel service or a Cluster (gateway.redisurl)


def is_redis_url(url: str) -> bool:
    return url.split(":", 1)[0] in REDIS_SCHEMES


def store_kind(url: str) -> str:
    """``sqlite``, ``postgresql`` or ``redis``: the kind of store ``url`` names (a metrics label)."""
    scheme = url.split(":", 1)[0]
    if scheme in POSTGRES_SCHEMES:
        return "postgresql"
    return "redis" if scheme in REDIS_SCHEMES else scheme


def is_postgres_url(url: str) -> bool:
    return url.split(":", 1)[0] in POSTGRES_SCHEMES


def open_store(settings: Settings) -> KeyStore:
    """The store named by ``store.url``: ``sqlite:///path``, ``redis://``, ``rediss://``, ``unix://`` or
    ``postgresql://``. Opening connects to nothing yet (a PostgreSQL pool is made on the loop that uses it)."""
    return open_url(settings.store.url, settings)


def open_url(url: str, settings: Settings) -> KeyStore:
    """A store by URL (``gateway store copy`` opens two); relative SQLite paths resolve like ``store.url``."""
    scheme = url.split(":", 1)[0]
    if scheme == "sqlite":
        from gateway.keys.sqlite import SQLiteStore

        if not url.startswith("sqlite:///"):
            raise ConfigError(f"{url!r}: a SQLite URL looks like sqlite:///relative/path.db or sqlite:////abs.db")
        return SQLiteStore(resolve_path(settings, url[len("sqlite:///"):]))
    if scheme in REDIS_SCHEMES:
        from gateway.keys.redis import RedisStore

        return RedisStore(url, settings.store.timeout_ms)
    if scheme in POSTGRES_SCHEMES:
        from gateway.keys.postgres.store import PostgresStore

        return PostgresStore(url, settings.store.timeout_ms, settings.store.pool_size)
    raise ConfigError(f"store.url: unsupported scheme {scheme!r}; use sqlite:///path/keys.db, redis://host:port/db "
                      "or postgresql://user:password@host:5432/db")
