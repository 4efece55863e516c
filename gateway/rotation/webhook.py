"""The rotation webhook: a JSON notice POSTed to ``rotation.webhook_url`` for each automatic rotation."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

# Pauses before the 2nd and 3rd delivery attempt of a notice. The key is already rotated when the notice is sent
# (and with rotation.deliver_value the notice carries its value), so a passing network hiccup or a restarting
# receiver is worth a retry.
BACKOFF = (0.2, 1.0)


async def post_notice(url: str, payload: dict[str, Any]) -> str | None:
    """POST one notice, retrying on 5xx or no answer; returns what went wrong (never the payload) or None."""
    problem: str | None = None
    async with httpx.AsyncClient(timeout=10.0) as client:
        for pause in (0.0, *BACKOFF):
            await asyncio.sleep(pause)
            try:
                resp = await client.post(url, json=payload)
            except httpx.HTTPError as exc:
                problem = f"webhook failed: {exc.__class__.__name__}"
                continue
            if resp.status_code < 300:
                return None
            problem = f"webhook answered {resp.status_code}"
            if resp.status_code < 500:
                break  # the receiver refuses this notice: asking again will not change its mind
    return problem
