"""A real WebSocket upstream (the ``websockets`` library's server) for the proxy's WebSocket tests.

Every handshake it accepts, and every close it sees, is appended as one JSON line to the ``--records`` file:
``{"path", "headers" (lower-cased name, value pairs), "subprotocol"}`` and ``{"path", "closed", "reason"}``.

Paths: ``.../echo`` sends every message back as it came (text as text, binary as binary);
``.../close`` reads one text message ``"<code> <reason>"`` and closes with that code and reason;
anything else waits for the client to close.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--records", type=Path, required=True)
    args = parser.parse_args()
    records: Path = args.records

    def write(record: dict[str, Any]) -> None:
        with records.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def select(conn: ServerConnection, offered: list[str]) -> str | None:
        return "logs.v1" if "logs.v1" in offered else None

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        path = ws.request.path
        write({"path": path, "headers": [[k.lower(), v] for k, v in ws.request.headers.raw_items()],
               "subprotocol": ws.subprotocol})
        try:
            if path.split("?")[0].endswith("/echo"):
                async for message in ws:
                    await ws.send(message)
            elif path.split("?")[0].endswith("/close"):
                code, reason = str(await ws.recv()).split(" ", 1)
                await ws.close(int(code), reason)
            else:
                await ws.wait_closed()
        except ConnectionClosed:
            pass
        write({"path": path, "closed": ws.close_code, "reason": ws.close_reason})

    async def run() -> None:
        async with serve(handler, "127.0.0.1", args.port, select_subprotocol=select) as server:
            await server.serve_forever()

    asyncio.run(run())


if __name__ == "__main__":
    main()
