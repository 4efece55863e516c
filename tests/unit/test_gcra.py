"""GCRA admission, exactly: the pure ``decide`` through :class:`MemoryLimiter` with a clock the test holds.

What GCRA promises (and what these tests hold it to): for a window of ``limit`` per ``period`` with emission
interval ``e = period / limit``, the admitted requests are exactly those that keep, for every interval of
time ``[s, t]``, ``admitted <= limit + floor((t - s) / e)``: a burst of ``limit`` from rest, then one more per
``e``. Over one whole period that is at most ``2 * limit - 1`` (a burst, then the steady refill): never the
``2 * limit`` of a fixed window's edge. Several windows are checked together and spent only together.
"""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ratelimit import US, Decision, Quota, Window, decide
from gateway.ratelimit.memory import MemoryLimiter

T0 = 1_700_000_000 * US  # an arbitrary start, far from zero like a real clock
LIMITED = Quota.of(per_hour=100, per_minute=10)
assert LIMITED is not None


def minute(limit: int) -> Quota:
    q = Quota.of(per_hour=None, per_minute=limit)
    assert q is not None
    return q


def test_burst_of_exactly_limit_from_rest_then_one_per_emission_interval() -> None:
    lim = MemoryLimiter()
    q = minute(10)
    first = [lim.hit_now("k", q, T0) for _ in range(15)]
    assert [d.allowed for d in first] == [True] * 10 + [False] * 5
    assert [d.remaining for d in first[:10]] == list(range(9, -1, -1))
    assert first[10].retry_after == 6.0  # exactly one emission interval (60 s / 10)
    assert first[9].reset_after == 60.0
    assert not lim.hit_now("k", q, T0 + 6 * US - 1).allowed
    assert lim.hit_now("k", q, T0 + 6 * US).allowed
    assert not lim.hit_now("k", q, T0 + 6 * US).allowed
    # Steady state: one per 6 s, never two.
    for step in range(2, 30):
        now = T0 + step * 6 * US
        assert lim.hit_now("k", q, now).allowed
        assert not lim.hit_now("k", q, now + 5 * US).allowed


def test_no_double_burst_at_a_window_edge() -> None:
    # A fixed window would let 10 through at 59.9 s and 10 more at 60.0 s.
    lim = MemoryLimiter()
    q = minute(10)
    assert all(lim.hit_now("k", q, T0 + 59_900_000).allowed for _ in range(10))
    at_edge = [lim.hit_now("k", q, T0 + 60 * US).allowed for _ in range(10)]
    assert at_edge == [False] * 10


def test_both_windows_together() -> None:
    """limited = 100/hour and 10/minute. From rest: 10 at once, then one per 6 s (the minute paces) until the
    hour is booked up: request k (at 6k s) is admitted while 360 + 30k <= 3600, so k <= 108; then the hour's
    36 s interval paces (the next one at 684 s, k = 114)."""
    lim = MemoryLimiter()
    assert sum(lim.hit_now("k", LIMITED, T0).allowed for _ in range(20)) == 10
    refused = None
    admitted = []
    for k in range(1, 120):
        d = lim.hit_now("k", LIMITED, T0 + 6 * k * US)
        if d.allowed:
            admitted.append(k)
        elif k == 109:
            refused = d
    assert admitted == [*range(1, 109), 114]
    assert refused is not None and refused.window == "hour" and refused.limit == 100
    assert refused.retry_after == 30.0  # the hour is booked to 4248 s: 4248 + 36 - 3600 - 654


def test_refused_request_spends_nothing_in_any_window() -> None:
    q = LIMITED
    tats = [T0 + 3600 * US, T0 + 10 * US]  # the hour is booked up, the minute has room
    decision, new = decide(q, tats, T0, consume=True)
    assert not decision.allowed and new is None


def test_peek_does_not_spend() -> None:
    lim = MemoryLimiter()
    q = minute(3)
    for _ in range(5):
        d = asyncio.run(lim.peek("k", q))
        assert d.allowed and d.remaining == 3
    assert [lim.hit_now("k", q, T0).allowed for _ in range(4)] == [True, True, True, False]


def test_a_tier_change_starts_the_key_afresh() -> None:
    lim = MemoryLimiter()
    assert sum(lim.hit_now("k", minute(2), T0).allowed for _ in range(5)) == 2
    assert sum(lim.hit_now("k", LIMITED, T0).allowed for _ in range(20)) == 10


def test_idle_keys_are_evicted_and_the_table_is_bounded() -> None:
    lim = MemoryLimiter(max_keys=100)
    q = minute(1)
    for i in range(1000):
        lim.hit_now(f"k{i}", q, T0)
    assert len(lim._state) <= 100


# --- properties over arbitrary arrival sequences --------------------------------------------------------------

arrival_gaps = st.lists(st.integers(min_value=0, max_value=20 * US), min_size=1, max_size=120)


def _run(quota: Quota, gaps: list[int]) -> tuple[list[int], list[int]]:
    lim = MemoryLimiter()
    now = T0
    admitted, refused = [], []
    for gap in gaps:
        now += gap
        (admitted if lim.hit_now("k", quota, now).allowed else refused).append(now)
    return admitted, refused


def _bound(w: Window, span: int) -> int:
    return w.limit + span // w.emission_us


@settings(max_examples=300, deadline=None)
@given(limit=st.integers(min_value=1, max_value=12), emission_s=st.integers(min_value=1, max_value=10),
       gaps=arrival_gaps)
def test_every_interval_admits_at_most_burst_plus_refill(limit: int, emission_s: int, gaps: list[int]) -> None:
    w = Window("w", limit, limit * emission_s * US)
    quota = Quota((w,), b"")
    admitted, _ = _run(quota, gaps)
    for i in range(len(admitted)):
        for j in range(i, len(admitted)):
            assert j - i + 1 <= _bound(w, admitted[j] - admitted[i])
        # In particular no window of one period ever holds 2 * limit (the fixed-window double burst).
        in_period = sum(1 for t in admitted[i:] if t < admitted[i] + w.period_us)
        assert in_period <= 2 * limit - 1


@settings(max_examples=300, deadline=None)
@given(limit=st.integers(min_value=1, max_value=12), emission_s=st.integers(min_value=1, max_value=10),
       gaps=arrival_gaps)
def test_nothing_is_refused_that_the_bound_allows(limit: int, emission_s: int, gaps: list[int]) -> None:
    """Exact, not merely safe: each refused request would have broken the bound for some interval."""
    w = Window("w", limit, limit * emission_s * US)
    quota = Quota((w,), b"")
    admitted, refused = _run(quota, gaps)
    for t in refused:
        before = [a for a in admitted if a <= t]
        assert any(
            sum(1 for a in before if a >= s) + 1 > _bound(w, t - s) for s in before
        ), f"refused at {t} though the bound allowed it"


@settings(max_examples=200, deadline=None)
@given(per_minute=st.integers(min_value=1, max_value=8), extra=st.integers(min_value=0, max_value=4),
       gaps=arrival_gaps)
def test_two_windows_each_hold_their_bound(per_minute: int, extra: int, gaps: list[int]) -> None:
    # An "hour" of 60 s * (per_minute + extra) keeps the emission intervals whole numbers of microseconds.
    per_hour = per_minute + extra
    hour = Window("hour", per_hour, per_hour * 60 * US)
    mins = Window("minute", per_minute, 60 * US)
    quota = Quota((hour, mins), b"")
    admitted, _ = _run(quota, gaps)
    for w in (hour, mins):
        for i in range(len(admitted)):
            for j in range(i, len(admitted)):
                assert j - i + 1 <= _bound(w, admitted[j] - admitted[i])


def test_emission_rounding_never_admits_less_than_the_limit() -> None:
    q = minute(7)  # 60 s / 7 is not a whole number of microseconds
    lim = MemoryLimiter()
    assert sum(lim.hit_now("k", q, T0).allowed for _ in range(20)) == 7


def _reference(quota: Quota, tats: list[int], now: int, consume: bool) -> tuple[Decision, list[int] | None]:
    """GCRA as the module docstring defines it, written plainly: what ``decide`` (written for speed) must equal."""
    allowed, retry, new = True, 0, []
    for w, tat in zip(quota.windows, tats, strict=True):
        after = max(tat, now) + w.emission_us
        if after - now > w.period_us:
            allowed = False
            retry = max(retry, after - w.period_us - now)
        new.append(after)
    spent = new if allowed and consume else [max(t, now) for t in tats]
    left = [max(0, (w.period_us - (t - now)) // w.emission_us) for w, t in zip(quota.windows, spent, strict=True)]
    i = left.index(min(left))  # the tightest window, the first of equals
    w, used = quota.windows[i], spent[i] - now
    return (Decision(allowed, w.name, w.limit, left[i], max(0, used) / US, retry / US, now / US, quota, spent, now),
            new if allowed and consume else None)


@settings(max_examples=400, deadline=None)
@given(per_hour=st.integers(1, 10_000), per_minute=st.one_of(st.none(), st.integers(1, 1_000)),
       offsets=st.lists(st.integers(-7200 * US, 7200 * US), min_size=2, max_size=2), consume=st.booleans())
def test_decide_is_the_plain_definition(per_hour: int, per_minute: int | None, offsets: list[int],
                                        consume: bool) -> None:
    quota = Quota.of(per_hour=per_hour, per_minute=per_minute)
    assert quota is not None
    tats = [max(0, T0 + o) for o in offsets[: len(quota.windows)]]
    assert decide(quota, tats, T0, consume) == _reference(quota, tats, T0, consume)
