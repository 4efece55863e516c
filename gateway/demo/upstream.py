"""A small sample upstream shaped like the deployERP API, or like the DeployAlly one.

deployERP: ``/v1/servers``, ``/v1/instances``, ``/v1/backups``, ``/v1/teams`` and ``/v1/invoices`` (and ``/{id}``
below each) answer JSON with sample data and an ``echo`` of the method, path, query, ``X-Forwarded-For`` and the
``X-Auth-*`` headers they received, so a user can see what the gateway passes on.

DeployAlly (``--platform deployally``): ``/api/v1/templates``, ``/definitions``, ``/instances``, ``/deployments``
and ``/servers`` the same way, in DeployAlly's ``{"success": true, "data": ...}``; and ``GET /api/v1/user/profile``,
the dashboard user the gateway vouches for (``X-Auth-User-Email``, ``X-Auth-User-Role``). The login itself is the
gateway's own (gateway.accounts: the demo creates the guide's ``usuario@exemplo.com`` / ``senha`` in its store).
Run it alone with ``python -m gateway.demo.upstream --port 9000 [--platform deployally]``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from aiohttp import web

SAMPLES: dict[str, list[dict[str, Any]]] = {
    "servers": [
        {"id": "srv_01", "name": "web-1", "region": "eu-west", "status": "running"},
        {"id": "srv_02", "name": "db-1", "region": "eu-west", "status": "running"},
    ],
    "instances": [{"id": "ins_01", "server_id": "srv_01", "app": "shop", "status": "running"}],
    "backups": [{"id": "bak_01", "instance_id": "ins_01", "created_at": "2026-11-01T03:00:00Z"}],
    "teams": [{"id": "team_01", "name": "platform", "members": 4}],
    "invoices": [{"id": "inv_2026_10", "amount": "49.00", "currency": "EUR", "status": "paid"}],
}


ALLY_SAMPLES: dict[str, list[dict[str, Any]]] = {
    "templates": [{"id": "tpl_01", "name": "wordpress", "version": "6.4"},
                  {"id": "tpl_02", "name": "postgres", "version": "16"}],
    "definitions": [{"id": "def_01", "template_id": "tpl_01", "name": "blog"}],
    "instances": [{"id": "ins_01", "definition_id": "def_01", "status": "running"}],
    "deployments": [{"id": "dep_01", "instance_id": "ins_01", "status": "succeeded"}],
    "servers": [{"id": "srv_01", "name": "sp-1", "region": "sa-east", "status": "running"}],
}
# The DeployAlly guide's own login example ("Login"): the demo's one dashboard user (`gateway demo` creates it in
# the gateway's store, role admin).
DEMO_USER = {"email": "usuario@exemplo.com", "password": "senha", "name": "Usuário de Exemplo", "role": "admin"}


def _echo(request: web.Request) -> dict[str, Any]:
    return {
        "method": request.method,
        "path": request.raw_path.split("?", 1)[0],
        "query": request.query_string,
        "forwarded_for": request.headers.get("X-Forwarded-For"),  # the client address the gateway vouches for
        "auth_headers": {k: v for k, v in request.headers.items() if k.lower().startswith("x-auth-")},
    }


async def resource(request: web.Request) -> web.Response:
    name = request.match_info["resource"]
    item_id = request.match_info.get("item")
    items = SAMPLES.get(name)
    if items is None:
        return web.json_response({"error": {"code": "not_found", "message": "No such resource"}}, status=404)
    body = await request.read() if request.can_read_body else b""
    if request.method in ("POST", "PUT", "PATCH"):
        try:
            sent = json.loads(body) if body else {}
        except ValueError:
            sent = {"raw_bytes": len(body)}
        status = 201 if request.method == "POST" else 200
        return web.json_response({"data": {"id": item_id or f"{name[:3]}_new", **(sent if isinstance(sent, dict)
                                  else {"value": sent})}, "echo": _echo(request)}, status=status)
    if request.method == "DELETE":
        return web.json_response({"data": {"id": item_id, "deleted": True}, "echo": _echo(request)})
    if item_id is not None:
        match = next((i for i in items if i["id"] == item_id), {"id": item_id})
        return web.json_response({"data": match, "echo": _echo(request)})
    return web.json_response({"data": items, "echo": _echo(request)})


async def ally_resource(request: web.Request) -> web.Response:
    """A DeployAlly resource: the same samples and echo, wrapped as DeployAlly answers."""
    name = request.match_info["resource"]
    item_id = request.match_info.get("item")
    items = ALLY_SAMPLES.get(name)
    if items is None:
        return web.json_response({"success": False, "error": {"code": "NOT_FOUND", "message": "Recurso inexistente"}},
                                 status=404)
    body = await request.read() if request.can_read_body else b""
    if request.method in ("POST", "PUT", "PATCH"):
        try:
            sent = json.loads(body) if body else {}
        except ValueError:
            sent = {"raw_bytes": len(body)}
        data = {"id": item_id or f"{name[:3]}_new", **(sent if isinstance(sent, dict) else {"value": sent})}
        return web.json_response({"success": True, "data": data, "echo": _echo(request)},
                                 status=201 if request.method == "POST" else 200)
    if request.method == "DELETE":
        return web.json_response({"success": True, "data": {"id": item_id, "deleted": True}, "echo": _echo(request)})
    if item_id is not None:
        match = next((i for i in items if i["id"] == item_id), {"id": item_id})
        return web.json_response({"success": True, "data": match, "echo": _echo(request)})
    return web.json_response({"success": True, "data": items, "echo": _echo(request)})


async def profile(request: web.Request) -> web.Response:
    """The calling dashboard user, as the gateway vouches for it (``X-Auth-User-*``, added by the gateway only)."""
    email = request.headers.get("X-Auth-User-Email")
    if email is None:
        return web.json_response({"success": False, "error": {"code": "NOT_FOUND", "message": "Usuário inexistente"}},
                                 status=404)
    name = DEMO_USER["name"] if email == DEMO_USER["email"] else email
    return web.json_response({"success": True, "data": {
        "id": request.headers.get("X-Auth-User-Id"), "email": email, "name": name,
        "role": request.headers.get("X-Auth-User-Role")}, "echo": _echo(request)})


def make_app(platform: str = "deployerp") -> web.Application:
    """The sample upstream of ``platform``."""
    app = web.Application()
    if platform == "deployally":
        app.router.add_route("GET", "/api/v1/user/profile", profile)
        app.router.add_route("*", "/api/v1/{resource}", ally_resource)
        app.router.add_route("*", "/api/v1/{resource}/{item}", ally_resource)
        app.router.add_route("*", "/api/v1/{resource}/{item}/{action}", ally_resource)
        return app
    app.router.add_route("*", "/v1/{resource}", resource)
    app.router.add_route("*", "/v1/{resource}/{item}", resource)
    app.router.add_route("*", "/v1/{resource}/{item}/{action}", resource)
    return app


async def start(host: str = "127.0.0.1", port: int = 0,
                platform: str = "deployerp") -> tuple[web.AppRunner, int]:
    """Start the sample upstream in the running loop; returns the runner (to clean up) and the port."""
    runner = web.AppRunner(make_app(platform), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner, int(runner.addresses[0][1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--platform", choices=("deployerp", "deployally"), default="deployerp")
    args = parser.parse_args()
    web.run_app(make_app(args.platform), host=args.host, port=args.port, access_log=None,
                print=None)


if __name__ == "__main__":
    main()
