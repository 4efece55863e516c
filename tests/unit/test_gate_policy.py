"""What the gate does with a path no policy rule matches: deny (the reverse proxy's rule), or authenticate
only and leave the scopes to the application (the ASGI middleware's ``unmatched="authenticate"``); and which
route is the management API's key check that spends no request.

Driven on the gate directly, over a real SQLite store in a temporary directory."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from gateway.config.settings import Settings, load_settings
from gateway.doors.assembly import GateService, build_components
from gateway.gate import Allow, Deny
from gateway.keys.service import create_key

SECRET = "unit-secret-0123456789abcdef0123456789"
POLICY = """
routes:
  - {path: /v1/servers/**, methods: [GET], scopes: [servers:read]}
scopes: [reports:read]
"""


def settings_for(tmp_path: Path) -> Settings:
    (tmp_path / "policy.yaml").write_text(POLICY)
    return load_settings(None, environ={}, overrides={
        "store": {"url": f"sqlite:///{tmp_path / 'keys.db'}"},
        "policies": str(tmp_path / "policy.yaml"),
        "secret": SECRET,
        "management": {"enabled": False},
    })


async def decide(settings: Settings, unmatched: str | None, path: bytes, key: bool = True,
                 times: int = 1) -> tuple[Any, Any]:
    components = build_components(settings)
    value, record = await create_key(components.store, components.pepper, settings.key_format, name="app",
                                     permissions=["reports:read"], rate_limit_tier="limited")
    kwargs = {} if unmatched is None else {"unmatched": unmatched}
    service = GateService(settings, components, **kwargs)
    await service.start()
    try:
        auth = [f"Bearer {value}".encode()] if key else []
        for _ in range(times - 1):
            await service.gate.decide("GET", path, auth, "127.0.0.1", [])
        return await service.gate.decide("GET", path, auth, "127.0.0.1", []), record
    finally:
        await service.stop()


def test_unmatched_path_is_denied_by_default(tmp_path: Path) -> None:
    """The proxy's behaviour: a path no rule matches is refused, 403, even with a valid key."""
    decision, _ = asyncio.run(decide(settings_for(tmp_path), None, b"/reports"))
    assert isinstance(decision, Deny)
    assert decision.status == 403 and decision.code == "insufficient_permissions"


def test_unmatched_authenticate_lets_a_valid_key_through(tmp_path: Path) -> None:
    """With ``unmatched="authenticate"`` the key is checked (and its rate limit spent), the scopes are not."""
    decision, record = asyncio.run(decide(settings_for(tmp_path), "authenticate", b"/reports"))
    assert isinstance(decision, Allow), decision.error
    assert decision.route is None
    assert decision.principal.record.id == record.id
    assert decision.applied is not None  # the limited tier: one of its 10 per minute spent
    assert (b"x-ratelimit-limit", b"10") in decision.response_headers


def test_unmatched_authenticate_still_needs_a_credential(tmp_path: Path) -> None:
    """No credential on an unmatched path: 401, as on any gated route (RFC 6750 3.1: no error attribute)."""
    decision, _ = asyncio.run(decide(settings_for(tmp_path), "authenticate", b"/reports", key=False))
    assert isinstance(decision, Deny)
    assert decision.code == "authentication_required"


def test_matched_route_keeps_its_scopes_under_unmatched_authenticate(tmp_path: Path) -> None:
    """Only unmatched paths change: a policy route still needs its scopes."""
    decision, _ = asyncio.run(decide(settings_for(tmp_path), "authenticate", b"/v1/servers"))
    assert isinstance(decision, Deny)
    assert decision.code == "insufficient_permissions"


def test_unmatched_takes_only_deny_or_authenticate(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    with pytest.raises(ValueError, match="deny.*authenticate"):
        GateService(settings, build_components(settings), unmatched="allow")


def test_auth_test_path_spends_nothing_only_with_the_management_api(tmp_path: Path) -> None:
    """``{prefix}/auth/test`` only looks at the rate limit when it is the management API's own key check; with
    the management API off, a policy rule of that name is an ordinary route and spends a request."""
    rule = "{path: /v1/auth/test, methods: [GET], scopes: [reports:read]}"
    (tmp_path / "policy.yaml").write_text(f"routes:\n  - {rule}\n")
    settings = load_settings(None, environ={}, overrides={
        "store": {"url": f"sqlite:///{tmp_path / 'keys.db'}"},
        "policies": str(tmp_path / "policy.yaml"),
        "secret": SECRET,
        "management": {"enabled": False},
    })
    decision, _ = asyncio.run(decide(settings, None, b"/v1/auth/test", times=3))
    assert isinstance(decision, Allow), decision.error
    assert (b"x-ratelimit-remaining", b"7") in decision.response_headers
