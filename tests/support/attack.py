"""Raw-socket helpers for the attack tests (tests/security/): requests no HTTP client library would send.

``exchange`` sends bytes on a fresh socket (optionally from another loopback source address, so a test can
be two different clients honestly) and returns what came back, whether the server closed the connection,
and how long that took.
``responses`` splits a byte stream of HTTP/1.1 answers into (status, headers, body) triples.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass
from typing import Any


@dataclass
class Exchange:
    raw: bytes
    closed: bool  # the server closed the connection (EOF or reset) before the read deadline
    seconds: float  # from the first byte sent to the close (or the deadline)

    @property
    def status(self) -> int:
        return responses(self.raw)[0].status if self.raw.startswith(b"HTTP/") else 0

    @property
    def first(self) -> Response:
        return responses(self.raw)[0]


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        low = name.lower()
        for k, v in self.headers:
            if k.lower() == low:
                return v
        return None

    def json(self) -> Any:
        return json.loads(self.body)


def connect(port: int, source: str | None = None, timeout: float = 5.0) -> socket.socket:
    """A connected socket to the gateway on 127.0.0.1:port, from ``source`` (e.g. "127.0.0.2") if given."""
    return socket.create_connection(
        ("127.0.0.1", port), timeout=timeout, source_address=(source, 0) if source else None
    )


def exchange(port: int, data: bytes, *, source: str | None = None, timeout: float = 5.0, want: int = 1,
             linger: float = 0.1) -> Exchange:
    """Send ``data`` and read until the server closes or ``timeout`` passes; once ``want`` complete answers
    have arrived, wait only ``linger`` more seconds for the close (a kept-alive connection stays open)."""
    start = time.monotonic()
    with connect(port, source, timeout) as s:
        s.sendall(data)
        return read_all(s, start, timeout, want, linger)


def read_all(s: socket.socket, start: float, timeout: float, want: int = 1, linger: float = 0.1) -> Exchange:
    chunks: list[bytes] = []
    deadline = start + timeout
    closed = False
    done_at: float | None = None
    while True:
        now = time.monotonic()
        end = deadline if done_at is None else min(deadline, done_at + linger)
        if now >= end:
            break
        s.settimeout(end - now)
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            closed = True
            break
        if not chunk:
            closed = True
            break
        chunks.append(chunk)
        if done_at is None and len(responses(b"".join(chunks))) >= want:
            done_at = time.monotonic()
    return Exchange(b"".join(chunks), closed, time.monotonic() - start)


def responses(raw: bytes) -> list[Response]:
    """Every complete HTTP/1.1 answer in ``raw`` (Content-Length or chunked framing), in order."""
    out: list[Response] = []
    rest = raw
    while rest.startswith(b"HTTP/"):
        head, sep, rest = rest.partition(b"\r\n\r\n")
        if not sep:
            break
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        headers = []
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            headers.append((k.decode("latin-1").strip(), v.decode("latin-1").strip()))
        resp = Response(status, headers, b"")
        length = resp.header("content-length")
        if length is not None:
            resp.body, rest = rest[: int(length)], rest[int(length):]
        elif (resp.header("transfer-encoding") or "").lower() == "chunked":
            body = b""
            while True:
                size_line, _, rest = rest.partition(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    _, _, rest = rest.partition(b"\r\n")
                    break
                body, rest = body + rest[:size], rest[size + 2:]
            resp.body = body
        out.append(resp)
    return out


def request(method: str, target: str | bytes, *headers: bytes | str, body: bytes = b"",
            version: bytes = b"HTTP/1.1", host: bytes | None = b"gateway.test") -> bytes:
    """One request as bytes: ``headers`` are whole lines without CRLF (str or bytes)."""
    t = target.encode("latin-1") if isinstance(target, str) else target
    lines = [method.encode("latin-1") + b" " + t + b" " + version]
    if host is not None:
        lines.append(b"Host: " + host)
    lines += [h.encode("latin-1") if isinstance(h, str) else h for h in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body
