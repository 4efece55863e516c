"""A key's requests per day as an inline SVG bar chart: drawn on the server, no script, no image request.

The chart is an ``<svg role="img">`` whose ``aria-labelledby`` names its title and summary, with one ``<rect>``
a day carrying a ``<title>`` (``2026-12-04: 17``) that browsers show on hover and screen readers read. Colours
are SVG presentation attributes, never ``style``, so the page's Content-Security-Policy (``style-src 'self'``)
lets it render. ``viewBox`` and ``width="100%"`` let it shrink to a 375 px screen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta

WIDTH, HEIGHT = 720, 200
LEFT, BOTTOM, TOP = 44, 24, 10  # room for the count axis, the date labels and the top label


@dataclass(frozen=True, slots=True)
class Bar:
    day: date
    count: int
    x: float
    y: float
    width: float
    height: float


@dataclass(frozen=True, slots=True)
class Chart:
    """What the template draws: the bars, the largest count (the axis' top), the labelled days, the total."""

    bars: tuple[Bar, ...]
    top: int
    labels: tuple[Bar, ...]
    total: int
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    base: int = HEIGHT - BOTTOM


def fill_days(counts: Sequence[tuple[date, int]], days: int, today: date) -> list[tuple[date, int]]:
    """Exactly ``days`` days ending ``today``, oldest first: the counts given, zero for a day without any."""
    by_day: dict[date, int] = {}
    for day, count in counts:
        by_day[day] = by_day.get(day, 0) + max(count, 0)
    first = today - timedelta(days=days - 1)
    return [(first + timedelta(days=i), by_day.get(first + timedelta(days=i), 0)) for i in range(days)]


def chart(counts: Sequence[tuple[date, int]], days: int, today: date) -> Chart:
    """The bars of ``counts`` over the last ``days`` days ending ``today`` (:func:`fill_days`)."""
    series = fill_days(counts, days, today)
    top = max((c for _, c in series), default=0)
    plot_w, plot_h = WIDTH - LEFT - 4, HEIGHT - BOTTOM - TOP
    step = plot_w / len(series)
    gap = min(2.0, step / 4)
    bars = []
    for i, (day, count) in enumerate(series):
        h = plot_h * count / top if top else 0.0
        if count and h < 1:
            h = 1.0  # a day with requests is never invisible
        bars.append(Bar(day, count, round(LEFT + i * step + gap / 2, 2), round(HEIGHT - BOTTOM - h, 2),
                        round(step - gap, 2), round(h, 2)))
    every = max(1, len(bars) // 6)  # about six date labels, the last day always one
    labels = tuple(b for i, b in enumerate(bars) if (len(bars) - 1 - i) % every == 0)
    return Chart(bars=tuple(bars), top=top, labels=labels, total=sum(c for _, c in series))
