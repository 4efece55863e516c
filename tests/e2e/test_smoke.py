"""A first end-to-end check of the harness: a key created with the CLI passes a real gateway process."""

from __future__ import annotations

from tests.support.procs import Gateway, Upstream


def test_key_from_cli_reaches_upstream(gateway: Gateway, fresh_upstream: Upstream) -> None:
    key = gateway.create_key("smoke", "servers:read")
    with gateway.client() as c:
        ok = c.get("/v1/servers", headers={"Authorization": f"Bearer {key['value']}"})
        denied = c.get("/v1/servers")
    assert ok.status_code == 200
    assert ok.json()["path"] == "/v1/servers"
    assert denied.status_code == 401
    assert denied.json()["error"]["code"] == "authentication_required"
    seen = fresh_upstream.records()
    assert len(seen) == 1
    assert any(k.lower() == "x-auth-key-id" and v == key["id"] for k, v in seen[0]["headers"])
