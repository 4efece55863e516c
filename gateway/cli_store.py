"""``gateway store``: whole-store operations.

    gateway store copy --from URL --to URL     every key (hashes only), the audit trail and the dashboard users
    gateway store migrate [--url URL]          a PostgreSQL store brought to this gateway's schema

Each returns its (JSON document, text); gateway.cli prints one of them.
"""

from __future__ import annotations

import argparse
from typing import Any, cast

from gateway.config.settings import Settings
from gateway.keys.backends import is_postgres_url, open_url
from gateway.keys.store import KeyStore, UserStore
from gateway.redisurl import redacted


async def copy(args: argparse.Namespace, settings: Settings) -> tuple[dict[str, Any], str]:
    """Copy every key (hashes only: a store never holds a value), its audit trail and the dashboard users from
    ``args.source`` to ``args.target``; what is there already is skipped, so running it again changes nothing."""
    source = open_url(args.source, settings)
    try:
        target = open_url(args.target, settings)
    except BaseException:
        await source.close()
        raise
    try:
        await _ready_for_copy(source, target)
        copied: set[str] = set()
        skipped = 0
        for record in await source.list():
            if await target.get(record.id) is not None:
                skipped += 1  # copied before: copying again changes nothing
                continue
            await target.add(record)
            copied.add(record.id)
        events = [e for e in await source.audit_log(None, limit=2**31 - 1) if e.key_id in copied]
        await target.append_audit(events)
        users, users_skipped = await _copy_users(cast(UserStore, source), cast(UserStore, target))
    finally:
        await source.close()
        await target.close()
    doc = {"copied_keys": len(copied), "skipped_keys": skipped, "copied_audit_events": len(events),
           "copied_users": users, "skipped_users": users_skipped}
    return doc, (f"Copied {len(copied)} key(s), {len(events)} audit event(s) and {users} dashboard user(s); "
                 f"{skipped} key(s) and {users_skipped} user(s) were already there. The keys authenticate only "
                 "with the same server secret (GATEWAY_SECRET); users sign in again (sessions are not copied).")


async def _copy_users(source: UserStore, target: UserStore) -> tuple[int, int]:
    """Every dashboard user (password hashes only) not already in ``target`` by id or address: (copied,
    skipped). Refresh tokens are not copied: a user signs in again on the new store."""
    copied = skipped = 0
    for user in await source.list_users():
        if await target.get_user(user.id) is not None or await target.get_user_by_email(user.email) is not None:
            skipped += 1
            continue
        await target.add_user(user)
        copied += 1
    return copied, skipped


async def _ready_for_copy(source: KeyStore, target: KeyStore) -> None:
    """A PostgreSQL source must be at this gateway's schema; a PostgreSQL target is brought to it (copying
    into a new database is how one moves to PostgreSQL: `store migrate` first would be one more step)."""
    from gateway.keys.postgres.store import PostgresStore

    if isinstance(source, PostgresStore):
        await source.check_schema()
    if isinstance(target, PostgresStore):
        await target.migrate()


async def migrate(args: argparse.Namespace, settings: Settings) -> tuple[dict[str, Any], str]:
    """Bring a PostgreSQL store (``--url``, else ``store.url``) to this gateway's schema; the other stores
    need no such step, and are left alone with a note saying so."""
    from gateway.keys.postgres.store import PostgresStore

    url = args.url or settings.store.url
    if not is_postgres_url(url):
        return ({"store": redacted(url), "migrated": False},
                f"{redacted(url)} needs no migration: a SQLite file is brought up to date when it is opened, and "
                "a Redis store has no schema. Only PostgreSQL stores are migrated by this command.")
    store = open_url(url, settings)
    assert isinstance(store, PostgresStore)
    try:
        before, after = await store.migrate()
    finally:
        await store.close()
    doc = {"store": store.where, "migrated": after != before, "from_version": before, "to_version": after}
    return doc, (f"{store.where}: schema version {before} -> {after}." if after != before
                 else f"{store.where}: already at schema version {after}; nothing to do.")
