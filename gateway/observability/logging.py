"""JSON logs: one object per line for every event, and one access line per request.

Every log record of ``gateway serve`` goes through :class:`JSONFormatter`: ``ts`` (UTC, milliseconds),
``level``, ``logger``, ``pid`` (which process wrote it: with ``--workers``, which worker), ``event`` and
``message``, plus the fields given as ``extra={"fields": {...}}``. A
message that is itself a JSON object (the brute-force guard writes those) is merged in rather than quoted.

The access line is built by :func:`access_line` once, when the request has ended, and written through the
``gateway.access`` logger, whose handler prints it as it is (no second encoding). Probes and metrics are not
logged unless ``ops.access_log_probes`` is on.

Nothing here ever sees a credential: the pipeline passes the key *id*, never its value, hash or a JWT, and the
path without its query string (a query may carry a token some client put there).
"""

from __future__ import annotations

import asyncio
import atexit
import itertools
import json
import logging
import os
import sys
import time
from typing import Any

from gateway.observability.tracing import TRACEPARENT, trace_id_of

ACCESS_LOGGER = "gateway.access"

_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def _timestamp(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


class JSONFormatter(logging.Formatter):
    """A log record as one JSON object on one line."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        doc: dict[str, Any] = {"ts": _timestamp(record.created), "level": record.levelname.lower(),
                               "logger": record.name, "pid": record.process}
        if message.startswith("{") and message.endswith("}") and len(message) > 2:
            try:
                parsed = json.loads(message)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict) and not set(parsed) & set(doc):
                # Already an event object (the audit trail, the brute-force guard): kept as its writer spelt
                # it (first, so a search for its opening still matches), timestamp, level and logger after it.
                tail = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
                return message[:-1] + "," + tail[1:]
        doc["event"] = getattr(record, "event", None) or "log"
        doc["message"] = message
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            doc.update(fields)
        for name, value in record.__dict__.items():
            # Anything else passed as extra= (not "fields"/"event", handled above) is kept too.
            if name not in _STANDARD and name not in ("fields", "event", "color_message") and name not in doc:
                doc[name] = value if isinstance(value, str | int | float | bool) or value is None else str(value)
        if record.exc_info:
            # The exception's class and message only: a traceback can carry local values (a key, a token).
            exc = record.exc_info[1]
            doc["error"] = f"{exc.__class__.__name__}: {exc}" if exc is not None else "unknown"
        return json.dumps(doc, ensure_ascii=False, default=str, separators=(",", ":"))


class _Verbatim(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return record.getMessage()


def configure_logging(fmt: str = "json", level: int = logging.INFO) -> None:
    """Route every logger (uvicorn's too) to stderr, as JSON lines (``fmt="json"``) or plain text."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    access = logging.getLogger(ACCESS_LOGGER)
    for h in list(access.handlers):
        access.removeHandler(h)
    verbatim = logging.StreamHandler(sys.stderr)
    verbatim.setFormatter(_Verbatim())
    access.addHandler(verbatim)
    access.propagate = False
    access.setLevel(logging.INFO)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True


def event(logger: logging.Logger, name: str, message: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one named event with structured fields (JSON under ``gateway serve``)."""
    logger.log(level, message, extra={"event": name, "fields": fields})


# --- request ids ---------------------------------------------------------------------------------------------

_ID_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


def valid_request_id(value: bytes) -> bool:
    """1 to 128 characters of ``[A-Za-z0-9._-]``: safe to log, forward and echo as they are."""
    return 0 < len(value) <= 128 and _ID_CHARS.issuperset(value)


_ID_PREFIX = os.urandom(6).hex()  # per process: ids from different processes and restarts do not collide
_ID_COUNTER = itertools.count(int.from_bytes(os.urandom(3), "big"))


def new_request_id() -> str:
    """24 hex characters: a random per-process prefix and a counter. Unique without a system call per request
    (a request id is a correlation handle, not a secret: that it is guessable does not matter)."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFFFFFF:012x}"


def _quoted(value: str) -> str:
    """A JSON string: quoted as it is when nothing in it needs escaping (the common case), else by json."""
    if value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        return f'"{value}"'
    return json.dumps(value)


# The milliseconds of a timestamp and the "Z" after them, formatted once: ".000Z" to ".999Z".
_MILLIS = tuple(f".{ms:03d}Z" for ms in range(1000))


class AccessLog:
    """Formats and writes the one access line per request.

    The line is assembled by hand rather than through ``json.dumps`` of a dict and written straight to the
    access handler's stream under its lock rather than through ``Logger.info`` (a LogRecord, a formatter call):
    together they cost about a quarter as much, which matters at one line per request. Strings that can hold
    anything (the path) go through :func:`_quoted`; route templates, methods and deny reasons come from small
    fixed sets and are quoted once and remembered.

    Lines are written once per event-loop pass rather than once per request: the requests that end in the
    same pass share one write to the stream (one system call instead of one each under load; a line is at
    most one pass late, and lines written outside a running loop go out at once)."""

    def __init__(self) -> None:
        self._log = logging.getLogger(ACCESS_LOGGER)
        handler = next((h for h in self._log.handlers if type(h) is logging.StreamHandler), None)
        self._handler: logging.StreamHandler[Any] | None = handler
        self._second = -1
        self._prefix = ""
        self._quoted: dict[str | None, str] = {None: "null"}
        # The constant part after the timestamp, this process's pid included (each worker builds its own).
        self._head = f'","level":"info","event":"request","pid":{os.getpid()},"request_id":"'
        self._pending: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None  # asyncio.get_running_loop() costs a getpid()
        if handler is not None:
            atexit.register(self.flush)  # a pass the loop never finished


    def _q(self, value: str | None) -> str:
        quoted = self._quoted.get(value)
        if quoted is None:
            quoted = _quoted(value)  # type: ignore[arg-type]  # None is in the dict
            if len(self._quoted) < 10_000:  # bounded: these sets are small, but never trust that
                self._quoted[value] = quoted
        return quoted

    def write(self, now: float, request_id: str, trace_id: str, method: str, route: str | None, path: str, status: int,
              duration: float, upstream: float | None, key_id: str | None, client: str | None, bytes_in: int,
              bytes_out: int, deny_reason: str | None) -> None:
        second = int(now)
        if second != self._second:  # strftime once a second, not once a request
            self._second = second
            self._prefix = time.strftime('{"ts":"%Y-%m-%dT%H:%M:%S', time.gmtime(second))
        q, known = self._q, self._quoted.get  # known(v) or q(v): a Python call only for a value not yet quoted
        line = (
            f'{self._prefix}{_MILLIS[int((now - second) * 1000)]}{self._head}{request_id}","trace_id":"{trace_id}",'
            f'"method":{known(method) or q(method)},"route":{known(route) or q(route)},"path":{_quoted(path)},'
            f'"status":{status},"duration_ms":{duration * 1000:.3f},"upstream_ms":'
            f'{"null" if upstream is None else format(upstream * 1000, ".3f")},'
            f'"key_id":{known(key_id) or q(key_id)},"client_ip":{known(client) or q(client)},'
            f'"bytes_in":{bytes_in},"bytes_out":{bytes_out},"deny_reason":{known(deny_reason) or q(deny_reason)}}}\n'
        )
        if self._handler is None:
            self._log.info(line[:-1])
            return
        pending = self._pending
        pending.append(line)
        if len(pending) == 1:
            loop = self._loop
            if loop is None or not loop.is_running():
                try:
                    loop = self._loop = asyncio.get_running_loop()
                except RuntimeError:  # no loop running here: write now
                    self.flush()
                    return
            loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write the lines of this loop pass (called by the loop, and at exit)."""
        pending, handler = self._pending, self._handler
        if not pending or handler is None:
            return
        text = "".join(pending)
        pending.clear()
        with handler.lock:  # type: ignore[union-attr]  # the same lock logging's own emit takes
            handler.stream.write(text)
            handler.flush()


def logged(app: Any, access: AccessLog, route: str) -> Any:
    """Wrap a probe (or the metrics endpoint) so that it writes access lines (``ops.access_log_probes``)."""

    async def probe(scope: Any, receive: Any, send: Any) -> None:
        start = time.perf_counter()
        seen = {"status": 0, "out": 0}

        async def observe(message: Any) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
            else:
                seen["out"] += len(message.get("body", b""))
            await send(message)

        try:
            await app(scope, receive, observe)
        finally:
            client = scope.get("client")
            trace = trace_id_of([v for n, v in scope["headers"] if n == TRACEPARENT])
            access.write(time.time(), new_request_id(), trace, scope["method"], route, scope["path"],
                         seen["status"] or 499, time.perf_counter() - start, None, None,
                         client[0] if client else None, 0, seen["out"], None)

    return probe
