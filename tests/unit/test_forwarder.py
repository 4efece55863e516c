"""The upstream client (gateway.doors.proxy.forwarder) in process, against real loopback sockets served by
threads of this process: its pool bound, its refusal to write a head a value could split, and backpressure up
(a request body is read from the client only as fast as the upstream takes it)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

import pytest

from gateway.doors.proxy.forwarder import Forwarder
from gateway.errors import UpstreamTimeout, UpstreamUnavailable

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Server:
    """Accepts connections on loopback; each is served by ``handle`` in a thread of its own."""

    def __init__(self, handle: Any) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.handle = handle
        self.open = self.most = self.accepted = 0
        self.lock = threading.Lock()
        self.heads: list[bytes] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.open += 1
                self.accepted += 1
                self.most = max(self.most, self.open)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                conn.settimeout(10)
                self.handle(self, conn)
        except OSError:
            pass
        finally:
            with self.lock:
                self.open -= 1

    def close(self) -> None:
        self.sock.close()


def read_head(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return b""
        data += chunk
    return data


def slow_answers(server: Server, conn: socket.socket) -> None:
    while head := read_head(conn):
        server.heads.append(head)
        time.sleep(0.2)
        conn.sendall(OK)


def never_reads(server: Server, conn: socket.socket) -> None:
    time.sleep(8)


async def _get(fwd: Forwarder, headers: list[tuple[str, str]] | None = None) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await fwd.forward("GET", b"/v1/x", b"", headers or [("accept", "*/*")], False, receive, send)
    return sent


def _forwarder(url: str, **kwargs: Any) -> Forwarder:
    return Forwarder(url, connect_timeout=2, read_timeout=kwargs.pop("read_timeout", 5),
                     pool_size=kwargs.pop("pool_size", 10), **kwargs)


def test_never_more_connections_than_the_pool_size() -> None:
    server = Server(slow_answers)

    async def run() -> list[list[dict[str, Any]]]:
        fwd = _forwarder(server.url, pool_size=2)
        await fwd.start()
        try:
            return await asyncio.gather(*(_get(fwd) for _ in range(6)))
        finally:
            await fwd.close()

    try:
        answers = asyncio.run(run())
    finally:
        server.close()
    assert [a[0]["status"] for a in answers] == [200] * 6
    assert [a[1]["body"] for a in answers] == [b"ok"] * 6
    assert server.most == 2 and server.accepted == 2  # the two connections were kept alive and reused


@pytest.mark.parametrize("value", ["a\r\nX-Injected: 1", "a\nX-Injected: 1", "a\rb"])
def test_a_value_that_would_split_the_head_is_never_sent(value: str) -> None:
    """RFC 9110 5.5: field values hold no CR or LF; the key's metadata or a server that let one through must not
    add a header line of its own."""
    server = Server(slow_answers)

    async def run() -> None:
        fwd = _forwarder(server.url)
        await fwd.start()
        try:
            with pytest.raises(UpstreamUnavailable):
                await _get(fwd, [("x-auth-key-name", value)])
            assert (await _get(fwd))[0]["status"] == 200  # the forwarder still works
        finally:
            await fwd.close()

    try:
        asyncio.run(run())
    finally:
        server.close()
    assert len(server.heads) == 1 and b"x-injected" not in server.heads[0].lower()


def test_a_body_is_read_only_as_fast_as_the_upstream_takes_it() -> None:
    """Backpressure up: an upstream that reads nothing stops the client's body being read (the socket buffers
    fill, then the writer waits), and after ``read_timeout`` seconds of that the answer is 504."""
    server = Server(never_reads)
    block = b"b" * 65536
    pulled = 0

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": block, "more_body": pulled < 2000}  # 125 MiB offered

    async def send(message: dict[str, Any]) -> None:
        raise AssertionError("nothing is answered")

    async def run() -> None:
        fwd = _forwarder(server.url, read_timeout=1)
        await fwd.start()
        try:
            with pytest.raises(UpstreamTimeout):
                await fwd.forward("POST", b"/v1/x", b"", [("content-length", str(2000 * len(block)))], True,
                                  receive, send)
        finally:
            await fwd.close()

    started = time.monotonic()
    try:
        asyncio.run(run())
    finally:
        server.close()
    assert time.monotonic() - started < 6
    assert pulled < 200, f"{pulled} blocks of 64 KiB read from the client for an upstream that reads nothing"


def test_an_https_upstream_is_verified_and_spoken_to_over_tls(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """``https://`` upstreams: TLS with the certificate verified against the trusted CAs (here a self-signed
    certificate made trusted through SSL_CERT_FILE) and the host name checked; an untrusted one is a 502."""
    import ssl
    import subprocess

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)

    def tls_answers(server: Server, conn: socket.socket) -> None:
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                slow_answers(server, tls)
        except (ssl.SSLError, OSError):
            return

    server = Server(tls_answers)
    port = server.sock.getsockname()[1]

    async def run(expect_ok: bool) -> None:
        fwd = _forwarder(f"https://localhost:{port}")
        await fwd.start()
        try:
            if expect_ok:
                sent = await _get(fwd)
                assert sent[0]["status"] == 200 and sent[1]["body"] == b"ok"
            else:
                with pytest.raises(UpstreamUnavailable):
                    await _get(fwd)
        finally:
            await fwd.close()

    try:
        asyncio.run(run(expect_ok=False))  # the self-signed certificate is not trusted yet
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        asyncio.run(run(expect_ok=True))
    finally:
        server.close()
    assert server.heads and server.heads[0].startswith(b"GET /v1/x HTTP/1.1\r\nHost: localhost:")


def test_idle_connections_are_closed_after_the_keep_alive(monkeypatch: pytest.MonkeyPatch) -> None:
    """An idle pooled connection is closed KEEP_ALIVE seconds after its last use, even when nothing else comes
    (shortened here from 15 s to 0.3 s)."""
    from gateway.doors.proxy import pool

    monkeypatch.setattr(pool, "KEEP_ALIVE", 0.3)
    server = Server(slow_answers)

    async def run() -> tuple[int, int]:
        fwd = _forwarder(server.url)
        await fwd.start()
        try:
            await asyncio.gather(_get(fwd), _get(fwd))
            await asyncio.sleep(0.1)
            during = server.open
            await asyncio.sleep(1.5)
            return during, server.open
        finally:
            await fwd.close()

    try:
        during, after = asyncio.run(run())
    finally:
        server.close()
    assert (during, after) == (2, 0)


def test_a_request_given_up_while_waiting_for_a_connection_leaks_no_slot() -> None:
    """pool_size 1: a request that waits for the one connection and is cancelled (its client went away) leaves
    the connection to the next in line, and requests waiting are served first come, first served."""
    server = Server(slow_answers)
    order: list[str] = []

    async def named(fwd: Forwarder, name: str) -> None:
        await _get(fwd)
        order.append(name)

    async def run() -> None:
        fwd = _forwarder(server.url, pool_size=1)
        await fwd.start()
        try:
            first = asyncio.ensure_future(named(fwd, "first"))
            await asyncio.sleep(0.05)
            given_up = asyncio.ensure_future(named(fwd, "given-up"))
            await asyncio.sleep(0.05)
            second = asyncio.ensure_future(named(fwd, "second"))
            await asyncio.sleep(0.05)
            third = asyncio.ensure_future(named(fwd, "third"))
            given_up.cancel()
            await asyncio.wait_for(asyncio.gather(first, second, third), 5)
        finally:
            await fwd.close()

    try:
        asyncio.run(run())
    finally:
        server.close()
    assert order == ["first", "second", "third"]
    assert server.accepted == 1


def test_credentials_in_the_upstream_url_become_basic_authentication() -> None:
    """An upstream URL with credentials sends them as ``Authorization: Basic`` (RFC 7617), percent-decoded, and
    never in the Host header; a request with its own Authorization (``forward_authorization``) keeps it alone."""
    server = Server(slow_answers)

    async def run() -> None:
        fwd = _forwarder(server.url.replace("http://", "http://svc:pa%3Ass@"))
        await fwd.start()
        try:
            await _get(fwd)
            await _get(fwd, [("authorization", "Bearer theirs")])
        finally:
            await fwd.close()

    try:
        asyncio.run(run())
    finally:
        server.close()
    plain, own = server.heads
    assert b"\r\nAuthorization: Basic c3ZjOnBhOnNz\r\n" in plain  # svc:pa:ss
    assert f"\r\nHost: {server.url.removeprefix('http://')}\r\n".encode() in plain
    assert b"Basic" not in own and own.lower().count(b"authorization:") == 1


def test_response_header_names_arrive_in_lower_case_and_hop_by_hop_ones_in_any_case_are_dropped() -> None:
    """The upstream connection lowers each response field name once (RFC 9110 5.1: they are case-insensitive);
    the hop-by-hop filter, which no longer lowers them itself, must still drop ``Keep-Alive`` and whatever a
    ``CONNECTION`` header names, whatever their spelling."""
    answer = (b"HTTP/1.1 200 OK\r\nX-Custom-Thing: Kept\r\nCONNECTION: X-Secret-Hop\r\nKeep-Alive: timeout=5\r\n"
              b"x-SECRET-hop: dropped\r\nContent-Length: 2\r\n\r\nok")

    def answers(server: Server, conn: socket.socket) -> None:
        while read_head(conn):
            conn.sendall(answer)

    server = Server(answers)

    async def main() -> list[dict[str, Any]]:
        fwd = _forwarder(server.url)
        await fwd.start()
        try:
            return await _get(fwd)
        finally:
            await fwd.close()

    try:
        sent = asyncio.run(main())
    finally:
        server.close()
    assert sent[0]["status"] == 200
    assert sent[0]["headers"] == [(b"x-custom-thing", b"Kept"), (b"content-length", b"2")]
    assert sent[1]["body"] == b"ok"
