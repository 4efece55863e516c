"""A recording upstream for the tests: a real aiohttp server process that remembers what it received.

Every request is recorded (method, raw target, headers as sent on the wire, body size) and answered with
that record as JSON, so a test can assert what the gateway passed on. Control endpoints (the test calls them
directly, never through the gateway):

    GET    /__records            the records so far, oldest first
    DELETE /__records            forget them
Special paths (reachable through the gateway when the policy allows them):
    GET    .../__download?bytes=N   streams N bytes in 64 KiB chunks
    GET    .../__slow?seconds=S     answers after S seconds
    GET    .../__cors               answers with CORS headers of its own (Access-Control-Allow-Origin: *)
Request bodies are counted while they stream in, never held in memory.

Run: python tests/support/upstream.py --port N
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from aiohttp import web

RECORDS: list[dict[str, Any]] = []
CHUNK = b"x" * 65536


async def records(request: web.Request) -> web.Response:
    if request.method == "DELETE":
        RECORDS.clear()
        return web.json_response({"cleared": True})
    return web.json_response(RECORDS)


async def anything(request: web.Request) -> web.StreamResponse:
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
    record = {
        "method": request.method,
        "target": request.raw_path,
        "path": request.raw_path.split("?", 1)[0],
        "query": request.query_string,
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers],
        "body_bytes": size,
        "version": f"{request.version.major}.{request.version.minor}",
    }
    RECORDS.append(record)
    path = record["path"]
    if path.endswith("/__download"):
        total = int(request.query.get("bytes", "0"))
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream",
                                           "Content-Length": str(total)})
        await resp.prepare(request)
        left = total
        while left > 0:
            piece = CHUNK if left >= len(CHUNK) else CHUNK[:left]
            await resp.write(piece)
            left -= len(piece)
        await resp.write_eof()
        return resp
    if path.endswith("/__slow"):
        await asyncio.sleep(float(request.query.get("seconds", "1")))
    if path.endswith("/__cors"):
        return web.json_response(record, headers={"X-Upstream": "recording", "Access-Control-Allow-Origin": "*",
                                                  "Access-Control-Allow-Credentials": "true",
                                                  "Access-Control-Expose-Headers": "X-Upstream"})
    return web.json_response(record, headers={"X-Upstream": "recording"})


def make_app() -> web.Application:
    app = web.Application(client_max_size=1024**4)
    app.router.add_route("*", "/__records", records)
    app.router.add_route("*", "/{tail:.*}", anything)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(make_app(), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
