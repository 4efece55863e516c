"""Which notice a key is due (gateway/rotation/notices.py), the retry pauses, and what a notice says."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gateway.keys.record import KeyRecord
from gateway.rotation import notices

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
WEEK = timedelta(days=7)


def key(**fields: object) -> KeyRecord:
    base: dict[str, object] = {"id": "key_abc", "key_hash": "h", "hint": "wxyz", "name": "ci-pipeline",
                               "permissions": ("servers:read",), "created_at": NOW - timedelta(days=85),
                               "notification_email": "ops@example.com"}
    return KeyRecord(**{**base, **fields})  # type: ignore[arg-type]


def test_due_event() -> None:
    rotating = key(auto_rotate=True, rotation_period=90 * 86400)  # due in 5 days
    assert notices.due_event(rotating, NOW, WEEK) == notices.ROTATING
    assert notices.due_event(rotating, NOW, timedelta(days=4)) is None
    overdue = key(auto_rotate=True, rotation_period=80 * 86400)
    assert notices.due_event(overdue, NOW, WEEK) == notices.ROTATING
    expiring = key(expires_at=NOW + timedelta(days=3))
    assert notices.due_event(expiring, NOW, WEEK) == notices.EXPIRING
    assert notices.due_event(key(expires_at=NOW + timedelta(days=30)), NOW, WEEK) is None
    # Whichever comes first: an expiry before the rotation is what the owner must hear of.
    both = key(auto_rotate=True, rotation_period=90 * 86400, expires_at=NOW + timedelta(days=2))
    assert notices.due_event(both, NOW, WEEK) == notices.EXPIRING
    assert notices.due_event(key(rotated_to="key_new", expires_at=NOW + WEEK), NOW, WEEK) == notices.ROTATED
    assert notices.due_event(key(), NOW, WEEK) is None


def test_backoff_doubles_up_to_an_hour() -> None:
    assert [notices.backoff(30, n) for n in (1, 2, 3, 4)] == [30, 60, 120, 240]
    assert notices.backoff(30, 20) == 3600


def test_messages_name_the_key_and_how_to_get_the_new_one() -> None:
    old = key(rotated_to="key_new", expires_at=NOW + WEEK, grace_period=7 * 86400)
    new = key(id="key_new", created_at=NOW, created_by="auto-rotation", held_value="v1.sealed")
    held = notices.compose(notices.ROTATED, old, now=NOW, default_grace="7d", prefix="/v1", successor=new,
                           delivery=notices.HELD)
    text = held.get_content()
    assert held["To"] == "ops@example.com" and "key_new" in held["Subject"]
    assert "POST /v1/api-keys/key_new/reveal" in text and "2026-03-08 12:00:00 UTC" in text
    assert "v1.sealed" not in held.as_string()
    hook = notices.compose(notices.ROTATED, old, now=NOW, default_grace="7d", prefix="/api/v1", successor=new,
                           delivery=notices.WEBHOOK).get_content()
    assert "webhook" in hook and "reveal" not in hook
    before = notices.compose(notices.ROTATING, key(auto_rotate=True, rotation_period=90 * 86400), now=NOW,
                             default_grace="7d", prefix="/v1")
    assert "2026-03-06 12:00:00 UTC" in before["Subject"] and "7d" in before.get_content()
