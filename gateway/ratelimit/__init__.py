"""Per-key rate limits: several windows (per hour, per minute) enforced together, exactly.

Algorithm: GCRA (the generic cell rate algorithm) for each window. A window of ``limit`` requests per
``period`` has an emission interval ``e = period / limit`` and keeps one number per key, the theoretical
arrival time ``tat``. A request at ``now`` is admitted when ``max(tat, now) + e - now <= period``; then
``tat = max(tat, now) + e``. This admits a burst of exactly ``limit`` from rest, then one more every ``e``:
a sliding window with no edges, so there is no double burst at a window boundary. A request is admitted only
if every window admits it, and only then does any window spend it (atomically: in one Lua script on Redis,
in one synchronous step in memory).

Times are integer microseconds, so the arithmetic is exact in Python and in Lua's doubles.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

US = 1_000_000


@dataclass(frozen=True, slots=True)
class Window:
    name: str  # "hour", "minute"
    limit: int
    period_us: int
    # Rounded down: never admits fewer than `limit` per period. Periods here (60 s, 3600 s) divide exactly for
    # any limit up to a million, which is all the tiers use. Computed once: read on every request.
    emission_us: int = field(init=False)
    # Header text that depends on the window alone, made once (gateway.ratelimit.stage.RateLimits.headers).
    limit_text: bytes = field(init=False, compare=False)  # X-RateLimit-Limit
    state_text: bytes = field(init=False, compare=False)  # the start of the RateLimit header: '"minute";r='
    of_text: bytes = field(init=False, compare=False)  # the end of X-Auth-Rate-Limit: "/1000" (after "999")

    def __post_init__(self) -> None:
        object.__setattr__(self, "emission_us", self.period_us // self.limit)
        object.__setattr__(self, "limit_text", b"%d" % self.limit)
        object.__setattr__(self, "state_text", b'"%s";r=' % self.name.encode())
        object.__setattr__(self, "of_text", b"/%d" % self.limit)


@dataclass(frozen=True, slots=True)
class Quota:
    windows: tuple[Window, ...]
    policy_header: bytes  # IETF RateLimit-Policy value
    by_name: dict[str, Window] = field(init=False, compare=False, hash=False, repr=False)
    # The windows a caller is told about (auth/test, X-Auth-Rate-Limit), as indexes into ``windows``: the
    # quota's own, the longest (the hour, when the tier has one), and the burst beside it (the shortest of
    # the others: the minute), or None for a tier of one window.
    reported: int = field(init=False, compare=False, hash=False, repr=False)
    burst: int | None = field(init=False, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", {w.name: w for w in self.windows})
        order = sorted(range(len(self.windows)), key=lambda i: -self.windows[i].period_us)
        object.__setattr__(self, "reported", order[0] if order else 0)
        object.__setattr__(self, "burst", order[-1] if len(order) > 1 else None)

    @classmethod
    def of(cls, per_hour: int | None, per_minute: int | None) -> Quota | None:
        windows = []
        if per_hour:
            windows.append(Window("hour", per_hour, 3600 * US))
        if per_minute:
            windows.append(Window("minute", per_minute, 60 * US))
        if not windows:
            return None
        policy = ", ".join(f'"{w.name}";q={w.limit};w={w.period_us // US}' for w in windows)
        return cls(tuple(windows), policy.encode())


@dataclass(slots=True)  # not frozen: a frozen dataclass sets each field through object.__setattr__, per request
class Decision:
    """The outcome for the tightest window (the one with the fewest requests left), and what it was decided
    from, so that any other window's state can be told when asked (:meth:`window_state`), never per request."""

    allowed: bool
    window: str
    limit: int
    remaining: int
    reset_after: float  # seconds until the tightest window is full again
    retry_after: float  # seconds until a request could be admitted (0 when allowed)
    now: float  # the limiter's clock, seconds since the epoch
    quota: Quota  # the quota decided against (a share of the tier's on a local fallback)
    tats: list[int]  # each window's time after the decision, in ``quota.windows`` order (never changed later)
    now_us: int  # ``now`` in microseconds, exactly

    def window_state(self, i: int) -> tuple[Window, int, int]:
        """Window ``i`` of the quota: the window, the requests it has left, and the microseconds until it is
        full again (the same arithmetic as the tightest window's, in :func:`_summary`)."""
        w = self.quota.windows[i]
        booked = self.tats[i] - self.now_us
        if booked < 0:
            booked = 0
        remaining = (w.period_us - booked) // w.emission_us
        return w, remaining if remaining > 0 else 0, booked


class Limiter(Protocol):
    """``hit`` spends a request, ``peek`` only looks. None: no limit could be applied (Redis away and
    ``on_store_error: allow``). Raises :class:`LimiterUnavailable` when the request must be refused."""

    async def hit(self, bucket: str, quota: Quota) -> Decision | None: ...
    async def peek(self, bucket: str, quota: Quota) -> Decision | None: ...
    async def close(self) -> None: ...


class LimiterUnavailable(Exception):
    """The shared limiter (Redis) did not answer in time."""


def decide(quota: Quota, tats: list[int], now: int, consume: bool) -> tuple[Decision, list[int] | None]:
    """GCRA over every window of ``quota``. ``tats`` are the stored times (0 for none). Returns the decision
    and, when a request was admitted and ``consume`` is set, the new times to store.

    Written for the interpreter: one pass, indexes rather than ``zip`` (an iterator and a tuple per window)
    and no comprehension (a call in Python 3.11); a third fewer instructions per request. The definition it
    implements is restated plainly in tests/unit/test_gcra.py and compared with this one there."""
    allowed = True
    retry = 0
    held: list[int] = []  # the times as they stand (nothing spent)
    new: list[int] = []  # the times if this request is spent
    for w in quota.windows:
        tat = tats[len(new)]
        base = tat if tat > now else now
        after = base + w.emission_us
        over = after - now - w.period_us
        if over > 0:
            allowed = False
            if over > retry:
                retry = over
        held.append(base)
        new.append(after)
    if allowed and consume:
        return _summary(quota, new, now, True, 0), new
    return _summary(quota, held, now, allowed, retry), None


def _summary(quota: Quota, tats: list[int], now: int, allowed: bool, retry: int) -> Decision:
    """The decision for the tightest window: the one with the fewest requests left (the first of equals)."""
    best: Window | None = None
    least = booked = 0
    i = 0
    for w in quota.windows:
        used = tats[i] - now  # how far ahead of now the window is booked
        i += 1
        remaining = (w.period_us - used) // w.emission_us
        if remaining < 0:
            remaining = 0
        if best is None or remaining < least:
            best, least, booked = w, remaining, used
    assert best is not None
    return Decision(allowed, best.name, best.limit, least, (booked if booked > 0 else 0) / US, retry / US, now / US,
                    quota, tats, now)
