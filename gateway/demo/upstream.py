"""A small sample upstream shaped like the deployERP API.

``/v1/servers``, ``/v1/instances``, ``/v1/backups``, ``/v1/teams`` and ``/v1/invoices`` (and ``/{id}`` below
each) answer JSON with sample data and an ``echo`` of the method, path, query, ``X-Forwarded-For`` and the
``X-Auth-*`` headers they received, so a user can see what the gateway passes on. Run it alone with
``python -m gateway.demo.upstream --port 9000``.
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


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/v1/{resource}", resource)
    app.router.add_route("*", "/v1/{resource}/{item}", resource)
    app.router.add_route("*", "/v1/{resource}/{item}/{action}", resource)
    return app


async def start(host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, int]:
    """Start the sample upstream in the running loop; returns the runner (to clean up) and the port."""
    runner = web.AppRunner(make_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner, int(runner.addresses[0][1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args()
    web.run_app(make_app(), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
