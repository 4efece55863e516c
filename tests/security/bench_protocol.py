"""What gateway.doors.proxy.protocol's protocol costs per request head, next to uvicorn's plain httptools protocol.

Not a test (pytest does not collect it): a measurement for docs/security.md. Both protocols parse the same
keep-alive request head 50 000 times on a uvloop event loop, in process, with the ASGI task start skipped in
both, so only parsing and the protocol callbacks are measured. CPU time (``time.process_time``), best of 5,
is steadier than wall time on a shared machine.

Run: .venv/bin/python -m tests.security.bench_protocol
"""

from __future__ import annotations

import time
from typing import Any

import uvicorn
import uvloop
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from gateway.config.settings import load_settings
from gateway.doors.proxy.protocol import http_protocol

HEAD = (b"GET /v1/servers/srv-1 HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: python-httpx/0.28\r\n"
        b"Accept: */*\r\nAccept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\n"
        b"Authorization: Bearer dep_live_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\nX-Request-ID: 4b1c2f0e-1111\r\n\r\n")


class _Transport:
    """Just enough of an asyncio transport for the protocol to talk to (nothing is sent anywhere)."""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8080), "peername": ("127.0.0.1", 5555)}.get(name, default)

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _app(scope: Any, receive: Any, send: Any) -> None:
    pass


def per_head(cls: type[HttpToolsProtocol], loop: Any, n: int = 50_000) -> float:
    config = uvicorn.Config(_app, lifespan="off", log_level="critical")
    config.load()

    class Measured(cls):  # type: ignore[valid-type, misc]
        def _start_asgi_task(self, cycle: Any, app: Any) -> None:
            cycle.response_complete = True  # as if answered at once: the next head is not pipelined

    proto = Measured(config=config, server_state=ServerState(), app_state={}, _loop=loop)
    proto.connection_made(_Transport())
    for _ in range(2000):
        proto.data_received(HEAD)
    best = float("inf")
    for _ in range(5):
        start = time.process_time()
        for _ in range(n):
            proto.data_received(HEAD)
        best = min(best, (time.process_time() - start) / n * 1e6)
    proto.connection_lost(None)
    return best


def main() -> None:
    loop = uvloop.new_event_loop()
    guarded = http_protocol(load_settings(None, environ={}))
    for _ in range(3):
        plain, ours = per_head(HttpToolsProtocol, loop), per_head(guarded, loop)
        print(f"CPU per request head: uvicorn httptools {plain:.2f} us, gateway guard {ours:.2f} us")
    loop.close()


if __name__ == "__main__":
    main()
