"""The usage chart of the dashboard's key page (gateway/admin/dashboard/chart.py): one bar a day over the last
``days`` days, scaled to the busiest day, days without requests drawn as empty bars."""

from __future__ import annotations

from datetime import date, timedelta

from gateway.admin.dashboard.chart import HEIGHT, chart, fill_days

TODAY = date(2026, 12, 4)


def test_every_day_of_the_window_has_a_bar_oldest_first() -> None:
    series = fill_days([(TODAY, 5), (TODAY - timedelta(days=3), 2)], 7, TODAY)
    assert [d for d, _ in series] == [TODAY - timedelta(days=6 - i) for i in range(7)]
    assert [c for _, c in series] == [0, 0, 0, 2, 0, 0, 5]


def test_days_outside_the_window_are_not_drawn_and_one_day_given_twice_is_added_up() -> None:
    series = fill_days([(TODAY - timedelta(days=30), 9), (TODAY, 1), (TODAY, 2)], 3, TODAY)
    assert [c for _, c in series] == [0, 0, 3]


def test_bars_are_scaled_to_the_busiest_day() -> None:
    c = chart([(TODAY, 100), (TODAY - timedelta(days=1), 50)], 10, TODAY)
    assert c.top == 100 and c.total == 150 and len(c.bars) == 10
    last, before = c.bars[-1], c.bars[-2]
    assert last.height == 2 * before.height > 0
    assert last.y + last.height == before.y + before.height == HEIGHT - 24  # every bar stands on the axis
    assert all(b.height == 0 for b in c.bars[:-2])
    assert all(later.x > earlier.x for earlier, later in zip(c.bars, c.bars[1:], strict=False))


def test_a_day_with_a_few_requests_beside_a_busy_one_is_still_visible() -> None:
    c = chart([(TODAY, 100_000), (TODAY - timedelta(days=1), 1)], 2, TODAY)
    assert c.bars[0].height >= 1


def test_no_requests_at_all_draws_flat_bars_without_dividing_by_zero() -> None:
    c = chart([], 30, TODAY)
    assert c.top == 0 and c.total == 0 and all(b.height == 0 for b in c.bars)
    assert c.labels[-1].day == TODAY  # the last day is always labelled
