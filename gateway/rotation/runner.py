"""One pass of automatic rotation, and the background task of ``gateway serve`` that makes one every
``rotation.check_seconds``.

A pass (:meth:`RotationRunner.run_once`), done only while this process holds the store's lease
(:mod:`gateway.keys.lease`):

1. every active key past its ``rotation_period`` is rotated, with the key's own ``grace_period`` (else
   ``rotation.grace_period``); the new value is sealed on the new record (:mod:`gateway.keys.sealing`);
2. with ``rotation.webhook_url``, a notice is POSTed per rotation; with ``rotation.deliver_value`` it carries
   the value, and once the webhook took it the held copy is erased (delivered once); if the webhook fails the
   value stays held, to be revealed;
3. with ``notifications.smtp.url``, every notice due (:mod:`gateway.rotation.notices`) is sent, or retried
   if its last attempt failed and its pause is over. A mail server that fails never blocks or undoes a
   rotation: its notices wait in the store for the next pass, up to ``notifications.max_attempts`` attempts.

``gateway keys rotate-due`` (cron) makes the same pass, with actor ``cli``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from gateway.background import Background
from gateway.config.settings import Settings, parse_duration
from gateway.keys.hashing import Pepper
from gateway.keys.lease import Lease, lease_for, wait_for_lease
from gateway.keys.record import AuditEvent, KeyRecord, to_iso, utcnow
from gateway.keys.sealing import Sealer
from gateway.keys.service import KeyInputError, grace_for, rotate_key
from gateway.keys.store import Conflict, KeyStore, StoreError
from gateway.mailaddr import masked
from gateway.rotation import notices
from gateway.rotation.mail import Mailer, MailError, mailer_for
from gateway.rotation.webhook import post_notice

log = logging.getLogger("gateway.rotation")

ACTOR = "auto-rotation"  # the audit trail's actor of the gateway's own rotations


@dataclass
class Outcome:
    """What one rotation came to (``gateway keys rotate-due`` prints these; never a value)."""

    key_id: str
    rotated: bool
    name: str | None = None
    new_key_id: str | None = None
    old_key_expires_at: str | None = None
    rotation_due_at: str | None = None
    notified: bool = False
    delivery: str | None = None
    error: str | None = None

    def doc(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class Counters:
    """What this process did, for the metrics (gateway_key_rotations_total, gateway_notifications_total)."""

    rotations: dict[str, int] = field(default_factory=lambda: {"rotated": 0, "failed": 0})
    # (channel, result): result is sent, retried (an attempt failed, another will be made) or failed (given up).
    notifications: dict[tuple[str, str], int] = field(default_factory=dict)

    def notified(self, channel: str, result: str) -> None:
        self.notifications[(channel, result)] = self.notifications.get((channel, result), 0) + 1


class RotationRunner:
    """Rotates due keys and sends notices on ``store``; :meth:`run_once` is one pass."""

    def __init__(self, settings: Settings, store: KeyStore, pepper: Pepper, *, actor: str = ACTOR,
                 mailer: Mailer | None = None, lease: Lease | None = None,
                 invalidate: Callable[[str], None] | None = None) -> None:
        """``invalidate`` drops a keyed hash from this process's key cache once its key is rotated (the other
        processes learn it from the store: pub/sub on Redis, ``cache.ttl_seconds`` on SQLite)."""
        self._rotation = settings.rotation
        self._notify = settings.notifications
        self._key_format = settings.key_format
        self._prefix = settings.management.prefix
        self._store = store
        self._pepper = pepper
        self._sealer = Sealer(pepper)
        self._actor = actor
        self._invalidate = invalidate
        self.mailer = mailer if mailer is not None else mailer_for(settings)
        self.lease = lease if lease is not None else lease_for(store)
        self._before = timedelta(seconds=parse_duration(self._notify.notice_before))
        self.counters = Counters()
        # Every series from the start (at 0), so that a dashboard sees a rate, not a gap, before the first failure.
        channels = (["email"] if self.mailer is not None else []) + (["webhook"] if self._rotation.webhook_url else [])
        for channel in channels:
            for result in ("sent", "retried", "failed"):
                self.counters.notifications[(channel, result)] = 0

    def __repr__(self) -> str:
        return f"RotationRunner({self._store!r}, mailer={self.mailer!r})"

    # --- one pass --------------------------------------------------------------------------------------------

    async def due(self, now: datetime | None = None) -> list[KeyRecord]:
        now = now or utcnow()
        watched = await self._store.list(status="active", now=now, watched=True)
        return [r for r in watched if r.rotation_state(now) == "due"]

    async def run_once(self, now: datetime | None = None) -> list[Outcome]:
        """Rotate what is due and send the notices due; the lease must be held (see :class:`RotationTask`
        and ``gateway keys rotate-due``). Returns one :class:`Outcome` per key that was due."""
        outcomes = [await self._rotate(r) for r in await self.due(now) if self._holding()]
        if self.mailer is not None and self._holding():
            await self._send_notices(utcnow())
        return outcomes

    def _holding(self) -> bool:
        return self.lease.held

    async def run_leased(self, wait: float = 0.0) -> list[Outcome] | None:
        """:meth:`run_once` under the lease: taken (waiting up to ``wait`` seconds for another process to
        finish its pass), renewed while the pass runs, released after. None if another process held it."""
        lease = self.lease
        if not await wait_for_lease(lease, wait):
            return None
        renew = asyncio.get_running_loop().create_task(_renew(lease), name="key-rotation-lease")
        try:
            return await self.run_once()
        finally:
            renew.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renew
            await lease.release()

    async def _rotate(self, record: KeyRecord) -> Outcome:
        out = Outcome(key_id=record.id, rotated=False, name=record.name)
        try:
            result = await rotate_key(self._store, self._pepper, self._key_format, record.id,
                                      grace_period=grace_for(record, self._rotation.grace_period),
                                      actor=self._actor, hold=self._sealer)
        except (Conflict, KeyInputError) as exc:
            # Conflict: rotated, revoked or expired since it was listed (by a process without the lease, or a
            # person): nothing to do, and nothing was written.
            out.error = str(exc)
            self.counters.rotations["failed"] += 1
            log.warning("automatic rotation of %s not done: %s", record.id, exc)
            return out
        if result is None:
            out.error = "the key no longer exists"
            return out
        old, value, new = result
        if self._invalidate is not None:
            self._invalidate(old.key_hash)
        self.counters.rotations["rotated"] += 1
        out.rotated, out.new_key_id, out.old_key_expires_at = True, new.id, to_iso(old.expires_at)
        out.delivery = notices.HELD
        url = self._rotation.webhook_url
        if url is not None:
            notice: dict[str, Any] = {"event": "key.rotated", "key_id": old.id, "new_key_id": new.id,
                                      "name": old.name, "old_key_expires_at": to_iso(old.expires_at)}
            if self._rotation.deliver_value:
                notice["value"] = value
            problem = await post_notice(url, notice)
            del notice, value
            self.counters.notified("webhook", "failed" if problem else "sent")
            if problem:
                out.error = problem
            else:
                out.notified = True
                if self._rotation.deliver_value:
                    await self._delivered(new.id)
                    out.delivery = notices.WEBHOOK
        log.info("%s rotated automatically to %s; the old key works until %s; new value %s", old.id, new.id,
                 to_iso(old.expires_at), "delivered to the webhook" if out.delivery == notices.WEBHOOK
                 else "held until revealed", extra={"event": "key.auto_rotated", "fields": {
                     "key_id": old.id, "new_key_id": new.id, "old_key_expires_at": to_iso(old.expires_at),
                     "delivery": out.delivery}})
        if old.notification_email:
            await self._set(old, {**notices.states(old), notices.ROTATED: notices.pending(out.delivery)})
        return out

    async def _delivered(self, new_id: str) -> None:
        """The webhook has the value: erase the held copy (a value is delivered once)."""
        try:
            await self._store.take_held_value(new_id, AuditEvent(action="deliver", key_id=new_id, actor=self._actor,
                                                                 details={"to": "rotation.webhook_url"}))
        except StoreError as exc:
            log.warning("%s: the held value could not be erased after the webhook took it: %s", new_id, exc)

    async def _set(self, record: KeyRecord, states: dict[str, notices.State]) -> None:
        await self._store.set_notices(record.id, notices.dump(states))

    # --- notices ---------------------------------------------------------------------------------------------

    async def _send_notices(self, now: datetime) -> None:
        """Every notice due, or due again, on the active keys that have an address. After a failed delivery the
        rest wait for the next pass: a mail server that is down or hung costs one attempt a pass, not one per
        notice."""
        for record in await self._store.list(status="active", now=now, watched=True):
            if not record.notification_email or not self._holding():
                continue
            states = notices.states(record)
            event = notices.due_event(record, now, self._before)
            changed = False
            for name, state in states.items():
                if name != event and state.get("state") == notices.PENDING:
                    state["state"] = notices.DROPPED  # its event no longer applies (rotated before "rotating")
                    changed = True
            if event is not None and event not in states:
                # Found rotated with no state of ours: a rotation by a person (its value went to them), unless
                # the successor holds its value (then _deliver says so).
                states[event] = notices.pending(notices.CALLER if event == notices.ROTATED else None)
                changed = True
            current = states.get(event) if event is not None else None
            if current is not None and event is not None and notices.ready(current, now):
                ok = await self._deliver(record, event, current, now)
                changed = True
                await self._set(record, states)
                if not ok:
                    return
            elif changed:
                await self._set(record, states)

    async def _deliver(self, record: KeyRecord, event: str, state: notices.State, now: datetime) -> bool:
        assert self.mailer is not None
        successor = await self._store.get(record.rotated_to) if record.rotated_to else None
        delivery = state.get("delivery")
        if successor is not None and successor.held_value is not None:
            delivery = notices.HELD  # also when this process stopped between the rotation and its notice state
        elif delivery == notices.HELD:
            delivery = notices.REVEALED
        message = notices.compose(event, record, now=now, default_grace=self._rotation.grace_period,
                                  prefix=self._prefix, successor=successor, delivery=delivery)
        state["attempts"] = int(state.get("attempts", 0)) + 1
        to = masked(record.notification_email or "")
        try:
            await self.mailer.send(message)
        except MailError as exc:
            if state["attempts"] >= self._notify.max_attempts:
                state["state"] = notices.FAILED
                state.pop("next", None)
                self.counters.notified("email", "failed")
                log.error("notice %s of %s to %s given up after %d attempts: %s", event, record.id, to,
                          state["attempts"], exc)
            else:
                pause = notices.backoff(self._notify.retry_seconds, state["attempts"])
                state["next"] = to_iso(now + timedelta(seconds=pause))
                self.counters.notified("email", "retried")
                log.warning("notice %s of %s to %s not delivered (attempt %d of %d, next in %g s): %s", event,
                            record.id, to, state["attempts"], self._notify.max_attempts, pause, exc)
            return False
        state["state"] = notices.SENT
        state["at"] = to_iso(now)
        state.pop("next", None)
        self.counters.notified("email", "sent")
        log.info("notice %s of %s sent to %s", event, record.id, to,
                 extra={"event": "key.notice_sent", "fields": {"key_id": record.id, "notice": event}})
        return True


class RotationTask:
    """``gateway serve``'s background task: a pass every ``rotation.check_seconds`` while this process holds
    the lease (taken for the pass, renewed while it runs, released after), so that of the processes sharing a
    store one at a time does the work."""

    def __init__(self, runner: RotationRunner, interval: float) -> None:
        self.runner = runner
        self.interval = interval
        self._task = Background("key-rotation")
        self.passes = 0

    def start(self) -> None:
        self._task.start(self._run)

    async def stop(self) -> None:
        await self._task.stop()
        with contextlib.suppress(Exception):
            await self.runner.lease.release()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.run_pass()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - one failed pass (a store away) must not end the task
                log.error("automatic rotation pass failed: %s: %s", exc.__class__.__name__, exc)

    async def run_pass(self) -> None:
        if await self.runner.run_leased() is not None:
            self.passes += 1


async def _renew(lease: Lease, every: float = 3.0) -> None:
    """Keep ``lease`` (its expiry is :data:`gateway.keys.lease.TTL_MS`) while a pass runs."""
    while lease.held:
        await asyncio.sleep(every)
        await lease.acquire()


def families(counters: Counters) -> Iterator[tuple[str, str, list[str], list[tuple[list[str], float]]]]:
    """The metric families of ``counters``: (name, help, label names, samples)."""
    yield ("gateway_key_rotations", "Automatic rotations made by this process, by result", ["result"],
           [([k], float(v)) for k, v in counters.rotations.items()])
    yield ("gateway_notifications", "Rotation notices by channel (email, webhook) and result: sent, retried (an "
           "attempt failed, another follows) or failed (given up)", ["channel", "result"],
           [([c, r], float(v)) for (c, r), v in counters.notifications.items()])
