"""What a broken or hostile upstream answers never reaches a client as something else.

A real ``gateway serve`` (its upstream client, gateway/doors/proxy/forwarder.py) in front of a loopback
upstream of this process that answers each path with fixed bytes on a kept-alive connection, then serves the
connection's next request honestly (``/v1/servers/honest``). So a response the upstream smuggled after the one
asked for would be handed to the gateway's next request if the connection were reused after it.

"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import httpx
import pytest

from tests.support.core import assert_deployerp_error, bearer, store_key
from tests.support.procs import Gateway

HONEST = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{"honest":true}'
SMUGGLED_BODY = b'{"smuggled":true}'
SMUGGLED = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 17\r\n\r\n" + SMUGGLED_BODY)

ANSWERS = {
    # RFC 9112 6.3 (3): both headers "ought to be handled as an error".
    b"/v1/servers/cl-and-te": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                              b"0\r\n\r\n" + SMUGGLED,
    # RFC 9112 6.3 (5): differing Content-Length values are unrecoverable.
    b"/v1/servers/two-cl": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!",
    b"/v1/servers/not-http": b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
    # An upgrade that was never asked for (Upgrade is not forwarded).
    b"/v1/servers/upgrade": b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n",
    # A second response after the first: response splitting; it must never answer another request.
    b"/v1/servers/split": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + SMUGGLED,
    # Interim answers are skipped (RFC 9110 15.2); the final one is forwarded.
    b"/v1/servers/early-hints": b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
                                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    # Neither Content-Length nor Transfer-Encoding: the body ends with the connection (RFC 9112 6.3 (8)).
    b"/v1/servers/until-close": b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it",
    # A chunk size that is not hex, after a valid head: too late for a 502, the client must see a broken body.
    b"/v1/servers/bad-chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\nzz\r\n" + SMUGGLED,
    # Past aiohttp's client limits, which the direct client keeps: 128 fields, 8190 bytes a field.
    b"/v1/servers/many-headers": b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(129))
                                 + b"Content-Length: 2\r\n\r\nok",
    b"/v1/servers/long-field": b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 8191 + b"\r\nContent-Length: 2\r\n\r\nok",
    # A head that never ends (one field, 2 MiB and counting): refused once 1 MiB has come without its end.
    b"/v1/servers/endless-head": b"HTTP/1.1 200 OK\r\nX-Endless: " + b"a" * 2**21,
}


def _read_head(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    return data


class ScriptedUpstream:
    """Answers the first request on each connection from ANSWERS (by path), then anything else honestly, keeping
    the connection open unless the answer is read to its end by the connection closing."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            try:
                while head := _read_head(conn):
                    target = head.split(b" ", 2)[1]
                    answer = ANSWERS.get(target)
                    if answer is None:
                        conn.sendall(HONEST)
                        continue
                    conn.sendall(answer)
                    if target == b"/v1/servers/until-close":
                        return
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def upstream() -> Iterator[ScriptedUpstream]:
    up = ScriptedUpstream()
    yield up
    up.close()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, upstream: ScriptedUpstream) -> Iterator[tuple[Gateway, str]]:
    # One pooled connection: a reused connection is the one the smuggled bytes were sent on.
    g = Gateway(tmp_path_factory.mktemp("hostile"), upstream.url, {"upstream": {"pool_size": 1}})
    made = store_key(g, "k", "servers:read")
    yield g, made["value"]
    g.stop()
    assert "Traceback" not in g.log()
    assert made["value"] not in g.log()


def _honest_next(c: httpx.Client, key: str) -> None:
    """The next request gets its own answer, never bytes the upstream sent after the previous one."""
    for _ in range(2):
        resp = c.get("/v1/servers/honest", headers=bearer(key))
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"honest": True}


@pytest.mark.parametrize("path", ["cl-and-te", "two-cl", "not-http", "upgrade", "many-headers", "long-field",
                                  "endless-head"])
def test_invalid_response_framing_is_502(gw: tuple[Gateway, str], path: str) -> None:
    g, key = gw
    with g.client() as c:
        assert_deployerp_error(c.get(f"/v1/servers/{path}", headers=bearer(key)), "upstream_unavailable")
        _honest_next(c, key)


def test_a_response_split_in_two_never_answers_the_next_request(gw: tuple[Gateway, str]) -> None:
    g, key = gw
    with g.client() as c:
        resp = c.get("/v1/servers/split", headers=bearer(key))
        assert resp.status_code == 200 and resp.content == b"ok"
        _honest_next(c, key)


def test_interim_answers_are_skipped(gw: tuple[Gateway, str]) -> None:
    g, key = gw
    with g.client() as c:
        resp = c.get("/v1/servers/early-hints", headers=bearer(key))
        assert resp.status_code == 200 and resp.content == b"ok"
        _honest_next(c, key)


def test_a_body_delimited_by_the_connection_arrives_whole(gw: tuple[Gateway, str]) -> None:
    g, key = gw
    with g.client() as c:
        resp = c.get("/v1/servers/until-close", headers=bearer(key))
        assert resp.status_code == 200 and resp.content == b"all of it"
        _honest_next(c, key)


def test_a_broken_chunked_body_reaches_the_client_broken(gw: tuple[Gateway, str]) -> None:
    g, key = gw
    with g.client() as c:
        with pytest.raises(httpx.RemoteProtocolError):
            c.get("/v1/servers/bad-chunk", headers=bearer(key))
    with g.client() as c:
        _honest_next(c, key)


def test_head_answer_with_a_length_has_no_body(gw: tuple[Gateway, str]) -> None:
    """RFC 9110 9.3.2: the answer to HEAD carries the GET's Content-Length and no body."""
    g, key = gw
    with g.client() as c:
        resp = c.head("/v1/servers/honest", headers=bearer(key))
        assert resp.status_code == 200 and resp.content == b""
        assert resp.headers["content-length"] == "15"
        _honest_next(c, key)
