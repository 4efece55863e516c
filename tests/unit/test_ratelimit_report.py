"""What a caller is told of its rate limit: ``rate_limit`` in ``/v1/auth/test`` and the ``X-Auth-Rate-Limit``
debug headers (gateway.ratelimit.stage.Applied). They report the tier's quota, the hourly window as the deployERP
guide shows it (``"limit": 1000, "remaining": 999`` and ``999/1000`` for a standard key after one request), with
the per-minute burst beside it; the X-RateLimit-* and RateLimit headers keep describing the window that decides
(tests/unit/test_ratelimit_headers.py)."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.config.settings import RateLimitSettings
from gateway.errors import RateLimited
from gateway.ratelimit import US, Decision, Quota, Window, decide
from gateway.ratelimit.memory import MemoryLimiter
from gateway.ratelimit.stage import Applied, RateLimits

T0 = 1_700_000_000 * US + 250_000  # a quarter second past a whole second: reset times round up


def iso(seconds: float) -> str:
    """A reset time as the guide writes it: whole seconds, rounded up, UTC."""
    return datetime.fromtimestamp(math.ceil(seconds), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def spend(quota: Quota, times: int, step_us: int = 1000) -> tuple[Decision, list[int]]:
    """``times`` requests from rest, ``step_us`` apart from T0 on; the last decision and the stored times."""
    tats = [0] * len(quota.windows)
    d: Decision | None = None
    for i in range(times):
        d, new = decide(quota, tats, T0 + i * step_us, consume=True)
        tats = new or tats
    assert d is not None
    return d, tats


def applied(quota: Quota, d: Decision) -> Applied:
    return Applied(d, RateLimits.headers(quota, d))


def test_a_standard_key_after_one_request_reads_as_the_guide_shows() -> None:
    quota = Quota.of(per_hour=1000, per_minute=100)
    assert quota is not None
    d, _ = spend(quota, 1)
    a = applied(quota, d)
    now = T0 / US
    assert a.public("standard") == {
        "limit": 1000, "remaining": 999, "reset": iso(now + 3.6), "window": "hour", "tier": "standard",
        "burst": {"limit": 100, "remaining": 99, "reset": iso(now + 0.6), "window": "minute"},
    }
    assert a.debug_values() == (b"999/1000", b"99/100")
    # The answer's rate-limit headers still describe the window that decides: the minute, 99 left.
    headers = dict(a.headers)
    assert headers[b"x-ratelimit-limit"] == b"100" and headers[b"x-ratelimit-remaining"] == b"99"
    assert headers[b"ratelimit"].startswith(b'"minute";r=99;')
    assert headers[b"ratelimit-policy"] == b'"hour";q=1000;w=3600, "minute";q=100;w=60'


def test_spending_moves_both_windows_and_the_burst_runs_out_first() -> None:
    quota = Quota.of(per_hour=1000, per_minute=100)
    assert quota is not None
    d, tats = spend(quota, 10)
    assert applied(quota, d).debug_values() == (b"990/1000", b"90/100")
    d, tats = spend(quota, 100)
    last = T0 + 99 * 1000
    doc = applied(quota, d).public("standard")
    assert (doc["limit"], doc["remaining"]) == (1000, 900)
    assert doc["reset"] == iso(T0 / US + 360)  # 100 requests booked the hour 100 * 3.6 s ahead of T0
    assert doc["burst"] == {"limit": 100, "remaining": 0, "reset": iso(T0 / US + 60), "window": "minute"}
    # The 101st is refused by the minute; looking (spend=False, as the debug header of a refusal does) shows it.
    refused, _ = decide(quota, tats, last + 1000, consume=True)
    assert not refused.allowed and refused.window == "minute"
    looked = applied(quota, refused)
    assert looked.debug_values() == (b"900/1000", b"0/100")
    assert dict(looked.headers)[b"x-ratelimit-remaining"] == b"0"


def test_a_tier_with_one_window_reports_that_window_and_no_burst() -> None:
    minute_only = Quota.of(per_hour=None, per_minute=2)
    hour_only = Quota.of(per_hour=50, per_minute=None)
    assert minute_only is not None and hour_only is not None
    d, _ = spend(minute_only, 1)
    assert applied(minute_only, d).public("tiny") == {
        "limit": 2, "remaining": 1, "reset": iso(T0 / US + 30), "window": "minute", "tier": "tiny", "burst": None}
    assert applied(minute_only, d).debug_values() == (b"1/2", None)
    d, _ = spend(hour_only, 3)
    doc = applied(hour_only, d).public("slow")
    assert (doc["limit"], doc["remaining"], doc["window"], doc["burst"]) == (50, 47, "hour", None)
    assert applied(hour_only, d).debug_values() == (b"47/50", None)


def test_a_look_before_any_request_shows_both_windows_full() -> None:
    quota = Quota.of(per_hour=100, per_minute=10)
    assert quota is not None
    d, _ = decide(quota, [0, 0], T0, consume=False)
    doc = applied(quota, d).public("limited")
    assert (doc["limit"], doc["remaining"], doc["reset"]) == (100, 100, iso(T0 / US))
    assert doc["burst"] == {"limit": 10, "remaining": 10, "reset": iso(T0 / US), "window": "minute"}


def test_a_scaled_quota_reports_the_limits_it_decides_against() -> None:
    # on_store_error: local limits each process at a share of every window: the report says so.
    share = Quota((Window("hour", 500, 3600 * US), Window("minute", 50, 60 * US)), b"")
    d, _ = spend(share, 1)
    assert applied(share, d).debug_values() == (b"499/500", b"49/50")


class _Record:
    def __init__(self, key_id: str, tier: str | None) -> None:
        self.id, self.rate_limit_tier = key_id, tier


class _Key:
    """The one attribute of a principal the stage reads (gateway.keys.cache.AuthKey has more)."""

    def __init__(self, key_id: str, tier: str | None = None) -> None:
        self.record = _Record(key_id, tier)


def test_the_stage_reports_the_same_through_a_real_limiter() -> None:
    asyncio.run(_through_the_stage())


async def _through_the_stage() -> None:
    limits = RateLimits(RateLimitSettings(), MemoryLimiter())
    key = _Key("key_a")
    first = limits.spend_now(key)
    assert first is not None and first.debug_values() == (b"999/1000", b"99/100")
    looked = await limits.check(key, spend=False)  # what auth/test does: spends nothing
    assert looked is not None
    doc: dict[str, Any] = looked.public(limits.tier_of(key))
    assert (doc["limit"], doc["remaining"], doc["tier"]) == (1000, 999, "standard")
    assert (doc["burst"]["limit"], doc["burst"]["remaining"]) == (100, 99)
    for _ in range(99):
        limits.spend_now(key)
    with pytest.raises(RateLimited):
        limits.spend_now(key)
    after = await limits.check(key, spend=False)
    assert after is not None and after.debug_values() == (b"900/1000", b"0/100")
    assert await limits.check(_Key("key_b", "unlimited")) is None  # no quota: the pipeline says "unlimited"
