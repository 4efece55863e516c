"""Sends the requests the gateway's guarded HTTP protocol refuses to a running server and prints each answer.

    .venv/bin/python loadtests/guard_probe.py PORT [--slow]

Used to compare servers of the same gateway app (serve_for_bench.sh with GW_SERVER=uvicorn or granian): the
checks of gateway/doors/proxy/protocol.py live in uvicorn's protocol subclass, so another server has only its
own. One line per probe: what was sent, the status line that came back (or how the connection ended). No key is
sent: a probe that gets past the server reaches the gateway's auth and gets its 401. Loopback only. ``--slow``
adds the head-deadline probe (a head that never ends, against ``limits.header_timeout_seconds`` 10 s; waits 15 s).
"""

from __future__ import annotations

import argparse
import socket
import time

PROBES: list[tuple[str, bytes]] = [
    ("absolute-form target", b"GET http://evil.example/v1/servers HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("CONNECT", b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n"),
    ("asterisk-form target", b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("fragment in target", b"GET /v1/servers#x HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("HTTP/0.9 request line", b"GET /v1/servers\r\n\r\n"),
    ("HTTP/2.0 in an HTTP/1 head", b"GET /v1/servers HTTP/2.0\r\nHost: a\r\n\r\n"),
    ("target of 9,000 bytes", b"GET /v1/" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("150 header lines", b"GET /v1/servers HTTP/1.1\r\nHost: a\r\n"
     + b"".join(b"X-H%d: v\r\n" % i for i in range(150)) + b"\r\n"),
    ("header block of 20,000 bytes", b"GET /v1/servers HTTP/1.1\r\nHost: a\r\nX-Big: " + b"v" * 20000 + b"\r\n\r\n"),
]

UNFINISHED_HEAD = b"GET /v1/servers HTTP/1.1\r\nHost: a\r\n"


def probe(port: int, data: bytes, wait: float = 5.0) -> str:
    """Send ``data`` on a fresh connection; the first line of the answer, or how the connection ended."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        start = time.monotonic()
        try:
            s.sendall(data)
            answer = s.recv(4096)
        except TimeoutError:
            return f"no answer in {wait:.0f} s"
        except ConnectionError as exc:
            return f"connection reset ({type(exc).__name__})"
        if not answer:
            return f"closed without an answer after {time.monotonic() - start:.1f} s"
        return answer.split(b"\r\n", 1)[0].decode("latin-1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("--slow", action="store_true", help="also the head-deadline probe (15 s)")
    args = parser.parse_args()
    for name, data in PROBES:
        print(f"{name:32} {probe(args.port, data)}")
    if args.slow:
        print(f"{'head never ends (15 s)':32} {probe(args.port, UNFINISHED_HEAD, 15.0)}")


if __name__ == "__main__":
    main()
