"""The ``messages`` setting through a real ``gateway serve``: the operator's words replace the catalogue's in the
configured format, in the body and the WWW-Authenticate challenge, at the proxy, the management API and the
protocol's own refusals alike; a bad override stops the gateway at start, naming the id (exit status 2)."""

from __future__ import annotations

from collections.abc import Callable

from tests.support.procs import Gateway, Upstream, raw_request, run_cli, status_of

OVERRIDES = {
    "authentication_required": "Envie sua API Key: Authorization: Bearer da_...",
    "validation_error.string_too_long": "O campo {where} aceita até {max_length} caracteres",
    "headers_too_large": "Cabeçalhos demais",
}


def test_overrides_are_answered_by_every_door(make_gateway: Callable[..., Gateway],
                                              fresh_upstream: Upstream) -> None:
    gw = make_gateway(fresh_upstream.url, settings={"error_format": "deployally", "messages": OVERRIDES})
    key = gw.create_key("admin", "*")["value"]
    with gw.client() as c:
        missing = c.get("/v1/servers")
        assert missing.status_code == 401
        assert missing.json() == {"success": False, "error": {"code": "UNAUTHORIZED",
                                                              "message": OVERRIDES["authentication_required"]}}
        long = c.post("/v1/api-keys", headers={"Authorization": f"Bearer {key}"},
                      json={"name": "n" * 201, "permissions": ["servers:read"]})
        assert long.status_code == 422
        assert long.json()["error"]["message"] == "O campo name aceita até 200 caracteres"
        # the ids not overridden keep the catalogue's Portuguese
        unknown = c.get("/v1/servers", headers={"Authorization": "Bearer dep_live_" + "0" * 32})
        assert unknown.json()["error"]["message"] == "API Key inválida ou não fornecida"
        assert 'error_description="API Key invalida ou nao fornecida"' in unknown.headers["www-authenticate"]
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(101))
    raw = raw_request(gw.port, b"GET /v1/servers HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
    assert status_of(raw) == 431 and "Cabeçalhos demais".encode() in raw, raw[:300]
    assert fresh_upstream.records() == []


def test_an_unknown_message_id_stops_serve_naming_it(make_gateway: Callable[..., Gateway],
                                                     fresh_upstream: Upstream) -> None:
    gw = make_gateway(fresh_upstream.url, settings={"messages": {"invalid_tokn": "x"}}, start=False)
    proc = run_cli("serve", "--config", str(gw.config), env=gw.env, check=False, cwd=gw.work, timeout=30)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "messages.invalid_tokn: unknown message id" in proc.stderr and "Traceback" not in proc.stderr
