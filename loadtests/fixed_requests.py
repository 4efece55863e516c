"""Send exactly N keep-alive ``GET /v1/servers`` requests over C connections, then print ``done non2xx``.

The load for ``instructions_per_request.sh``: wrk runs for a time, not a count, and a proxy under callgrind
needs a count. Plain sockets, Content-Length or chunked answers; one request in flight per connection.

Usage: fixed_requests.py HOST PORT KEY N [C]
"""

from __future__ import annotations

import asyncio
import sys


async def _connection(host: str, port: int, request: bytes, left: list[int], tally: list[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    while left[0] > 0:
        left[0] -= 1
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        if not 200 <= int(head[9:12]) < 300:
            tally[1] += 1
        length, chunked = 0, False
        for line in head.lower().split(b"\r\n"):
            if line.startswith(b"content-length:"):
                length = int(line[15:])
            elif line.startswith(b"transfer-encoding:") and b"chunked" in line:
                chunked = True
        if chunked:
            while (size := int((await reader.readuntil(b"\r\n")).strip(), 16)) > 0:
                await reader.readexactly(size + 2)
            await reader.readexactly(2)
        else:
            await reader.readexactly(length)
        tally[0] += 1
    writer.close()


async def main(host: str, port: int, key: str, n: int, c: int) -> None:
    request = f"GET /v1/servers HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {key}\r\n\r\n".encode()
    left, tally = [n], [0, 0]
    await asyncio.gather(*(_connection(host, port, request, left, tally) for _ in range(c)))
    print(tally[0], tally[1])


if __name__ == "__main__":
    if len(sys.argv) not in (5, 6):
        sys.exit(__doc__)
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]),
                     int(sys.argv[5]) if len(sys.argv) == 6 else 32))
