"""The e-mail notices of a key with a ``notification_email``: which one is due, what it says, how far it got.

Three events, each notified once per key:

    rotating   ``notifications.notice_before`` before the key is due for automatic rotation
    expiring   as long before it expires (when that comes first, or it does not rotate)
    rotated    once it has been rotated: the new key's id, when the old one stops working, how to obtain
               the new value

A notice names the key by id and name, never by value: no text here is ever given a key value, and the tests
read every message received for the values. Its delivery state is kept on the key's record (``notices``, JSON:
event -> state), so a restarted gateway, or another one taking over, neither sends it again nor forgets it:

    {"rotated": {"state": "pending", "attempts": 2, "next": "2026-01-31T00:01:00Z", "delivery": "held"}}

``state`` is ``pending`` (due; ``next`` is when to try again), ``sent``, ``failed`` (given up after
``notifications.max_attempts``) or ``dropped`` (its event no longer applies: a key that rotated before its
``rotating`` notice could be delivered).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any

from gateway.keys.record import KeyRecord, format_duration, parse_iso, to_iso

ROTATING, EXPIRING, ROTATED = "rotating", "expiring", "rotated"
PENDING, SENT, FAILED, DROPPED = "pending", "sent", "failed", "dropped"
MAX_BACKOFF = 3600.0

# How the new value of a rotation reaches its owner (a "rotated" notice says which).
HELD, WEBHOOK, CALLER, REVEALED = "held", "webhook", "caller", "revealed"

State = dict[str, Any]


def states(record: KeyRecord) -> dict[str, State]:
    if not record.notices:
        return {}
    try:
        loaded = json.loads(record.notices)
    except ValueError:
        return {}
    return loaded if isinstance(loaded, dict) else {}


def dump(notices: dict[str, State]) -> str | None:
    return json.dumps(notices, separators=(",", ":"), sort_keys=True) if notices else None


def due_event(record: KeyRecord, now: datetime, before: timedelta) -> str | None:
    """The notice ``record`` (an active key) is due at ``now``, if any."""
    if record.rotated_to is not None:
        return ROTATED  # rotated and still in its grace period
    due = record.rotation_due_at
    ends = record.expires_at
    if due is not None and (ends is None or due < ends):
        return ROTATING if now >= due - before else None
    if ends is not None and now >= ends - before:
        return EXPIRING
    return None


def backoff(retry_seconds: float, attempts: int) -> float:
    """The pause after the ``attempts``-th failed attempt: ``retry_seconds``, doubling, at most an hour."""
    return float(min(retry_seconds * 2 ** (attempts - 1), MAX_BACKOFF))


def _when(moment: datetime | None) -> str:
    return (to_iso(moment) or "-").replace("T", " ").replace("Z", " UTC")


def _grace(seconds: int | None, default: str) -> str:
    return format_duration(seconds) or default


def compose(event: str, record: KeyRecord, *, now: datetime, default_grace: str, prefix: str,
            successor: KeyRecord | None = None, delivery: str | None = None) -> EmailMessage:
    """The message of ``event`` about ``record`` (to its ``notification_email``). ``successor`` and ``delivery``
    (:data:`HELD`, :data:`WEBHOOK`, :data:`CALLER`, :data:`REVEALED`) describe a rotation's new key."""
    name, key_id = record.name, record.id
    api = "" if prefix == "/" else prefix
    msg = EmailMessage()
    msg["To"] = record.notification_email or ""
    msg["Date"] = format_datetime(now)
    msg["Message-ID"] = make_msgid(domain="gateway.invalid")
    msg["X-Gateway-Key-Id"] = key_id
    msg["X-Gateway-Notice"] = event
    grace = _grace(record.grace_period, default_grace)
    if event == ROTATING:
        due = record.rotation_due_at
        msg["Subject"] = f"API key {name} ({key_id}) will be rotated on {_when(due)}"
        text = [
            f'The API key "{name}" ({key_id}) is due for automatic rotation on {_when(due)}.',
            "",
            f"Then a new key with the same permissions replaces it, and this one keeps working for its grace "
            f"period of {grace}; after that it is refused.",
            "",
            "You will get another message once it has been rotated, saying how to obtain the new key.",
        ]
    elif event == EXPIRING:
        msg["Subject"] = f"API key {name} ({key_id}) expires on {_when(record.expires_at)}"
        text = [
            f'The API key "{name}" ({key_id}) stops working on {_when(record.expires_at)}.',
            "",
            f"To keep access, give its applications another key before then: rotate it "
            f"(POST {api}/api-keys/{key_id}/rotate, or `gateway keys rotate {key_id}`) or create a new one.",
        ]
    else:
        new_id = record.rotated_to or "-"
        msg["Subject"] = f"API key {name} ({key_id}) was rotated: the new key is {new_id}"
        text = [
            f'The API key "{name}" ({key_id}) was replaced by a new key, {new_id}'
            + (f", on {_when(successor.created_at)}." if successor is not None else "."),
            "",
            f"The old key keeps working until {_when(record.expires_at)} and is refused after that: move every "
            "application to the new key before then.",
            "",
            _obtain(delivery or CALLER, new_id, api, successor),
        ]
    text += ["", "This message never contains a key value: no key is ever sent by e-mail."]
    msg.set_content("\n".join(text) + "\n")
    return msg


def _obtain(delivery: str, new_id: str, api: str, successor: KeyRecord | None) -> str:
    if delivery == HELD:
        return (f"How to obtain it: the gateway holds the new value, encrypted, until it is revealed once. Reveal it "
                f"with POST {api}/api-keys/{new_id}/reveal, calling with a key that holds api-keys:write and every "
                f"permission of this one (or run `gateway keys reveal {new_id}` where the gateway runs), and store "
                "it in your secret manager at once: a second reveal gets nothing.")
    if delivery == WEBHOOK:
        return "How to obtain it: the new value was delivered to the secret manager behind the rotation webhook."
    if delivery == REVEALED:
        return f"How to obtain it: its value has been revealed already (see `gateway audit --key {new_id}`)."
    who = successor.created_by if successor is not None else "whoever rotated it"
    return (f"How to obtain it: the new value was returned once to whoever rotated the key ({who}). If it is lost, "
            f"rotate {new_id} while the old key still works.")


def pending(delivery: str | None = None, now: datetime | None = None) -> State:
    state: State = {"state": PENDING, "attempts": 0}
    if now is not None:
        state["next"] = to_iso(now)
    if delivery is not None:
        state["delivery"] = delivery
    return state


def ready(state: State, now: datetime) -> bool:
    """A pending notice whose next attempt has come."""
    if state.get("state") != PENDING:
        return False
    nxt = state.get("next")
    try:
        return nxt is None or parse_iso(str(nxt)) <= now
    except ValueError:
        return True
