"""The rate-limit headers of every answer (gateway.ratelimit.stage.RateLimits.headers), byte for byte: the
X-RateLimit-* trio, the IETF draft's RateLimit-Policy (every window) and RateLimit (the tightest window)."""

from __future__ import annotations

import math

import pytest

from gateway.ratelimit import US, Decision, Quota, decide
from gateway.ratelimit.stage import RateLimits

T0 = 1_700_000_000 * US + 250_000  # a quarter second past a whole second: Reset rounds up


def expected(d: Decision) -> list[tuple[bytes, bytes]]:
    """The headers as their definitions read, formatted plainly."""
    reset_in = math.ceil(d.reset_after)
    return [
        (b"x-ratelimit-limit", str(d.limit).encode()),
        (b"x-ratelimit-remaining", str(d.remaining).encode()),
        (b"x-ratelimit-reset", str(math.ceil(d.now) + reset_in).encode()),
        (b"ratelimit-policy", b'"hour";q=100;w=3600, "minute";q=10;w=60'),
        (b"ratelimit", f'"{d.window}";r={d.remaining};t={reset_in}'.encode()),
    ]


def test_from_rest_through_refusal() -> None:
    quota = Quota.of(per_hour=100, per_minute=10)
    assert quota is not None
    tats = [0, 0]
    for i in range(12):
        d, new = decide(quota, tats, T0 + i * 1000, consume=True)
        tats = new or tats
        assert RateLimits.headers(quota, d) == expected(d), i
    assert not d.allowed and d.window == "minute"
    assert dict(RateLimits.headers(quota, d))[b"ratelimit"] == b'"minute";r=0;t=60'


@pytest.mark.parametrize("reset_after", [0.0, 0.2, 59.5, 3600.0, 3600.4, 86_400.0])
def test_every_reset_time_formats_the_same(reset_after: float) -> None:
    # Reset times up to an hour come from a table; longer ones (not made by the shipped windows) are formatted.
    quota = Quota.of(per_hour=100, per_minute=10)
    assert quota is not None
    d = Decision(True, "hour", 100, 42, reset_after, 0.0, T0 / US, quota, [T0, T0], T0)
    assert RateLimits.headers(quota, d) == expected(d)


def test_the_limit_is_the_one_decided_against() -> None:
    # on_store_error: local decides against a share of the tier's limit: the headers say that limit.
    quota = Quota.of(per_hour=100, per_minute=10)
    assert quota is not None
    d = Decision(True, "minute", 5, 4, 12.0, 0.0, T0 / US, quota, [T0, T0], T0)
    assert dict(RateLimits.headers(quota, d))[b"x-ratelimit-limit"] == b"5"
    assert RateLimits.headers(quota, d)[1:] == expected(d)[1:]
