"""W3C Trace Context (https://www.w3.org/TR/trace-context/): the gateway as one hop of a distributed trace.

:func:`propagate` reads the ``traceparent`` and ``tracestate`` request headers and returns what the gateway
passes on to the upstream:

* a valid ``traceparent`` (section 3.2) is continued: the same trace id and trace flags, and a new parent id,
  the gateway's own span id (section 3.2.2.4, "the ID of this request as known by the caller");
* one that is missing or invalid (or sent more than once) starts a new trace (section 4.3): a random trace id
  and span id, and the sampled flag unset, since the gateway records no trace data itself (3.2.2.5.1) unless
  ``tracing.otlp_endpoint`` is set: then gateway.observability.otel makes these ids its server span's and
  forwards its sampling decision;
* ``tracestate`` is passed on only with a valid ``traceparent`` (3.3: "if the vendor failed to parse
  traceparent, it MUST NOT attempt to parse tracestate"), its header lines combined into one (3.3.1.1), and
  dropped when it holds more than 32 list members or more than 512 characters (3.3.1.1, 3.3.1.5).

The trace id goes into every access line (``trace_id``). The cost per request is a slice of pre-drawn random
bytes and, when a ``traceparent`` came, one regular-expression match.
"""

from __future__ import annotations

import os
import re

TRACEPARENT = b"traceparent"
TRACESTATE = b"tracestate"

# version-trace_id-parent_id-flags, lower-case hex only (3.2.2.2 to 3.2.2.5): one C call per request.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
MAX_TRACESTATE_CHARS = 512
MAX_TRACESTATE_MEMBERS = 32


def parse_traceparent(value: str) -> tuple[str, str] | None:
    """``(trace_id, flags)`` of a valid ``traceparent``, else None.

    Version 00 is exactly 55 characters (3.2.2). A higher version (not ``ff``, which is invalid, 3.2.2.1) is
    read as version 00 from its first 55 characters when it is at least that long and, if longer, continues
    with a ``-`` (3.2.4, versioning)."""
    m = _TRACEPARENT.match(value)
    if m is None:
        return None
    version, trace_id, parent_id, flags = m.groups()
    if version == "00":
        if len(value) != 55:
            return None
    elif version == "ff" or (len(value) > 55 and value[55] != "-"):
        return None
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    return trace_id, flags


# Random bytes are drawn from os.urandom a batch at a time: one system call per 256 new traces, not one per
# request. Each process draws its own (the batch is emptied in a forked child).
_BATCH = 24 * 256
_random = b""
_used = _BATCH


def _reset() -> None:
    global _random, _used
    _random, _used = b"", _BATCH


os.register_at_fork(after_in_child=_reset)


def random_hex(size: int) -> str:
    """``size`` random bytes (at most 24) as lower-case hex."""
    global _random, _used
    start = _used
    end = start + size
    if end > len(_random):
        _random, start, end = os.urandom(_BATCH), 0, size
    _used = end
    return _random[start:end].hex()


def propagate(traceparent: bytes | None, tracestate: list[bytes] | None) -> tuple[str, str, str | None]:
    """``(trace_id, traceparent, tracestate)`` to send upstream for a request that carried this ``traceparent``
    (None: none; ``b""``: more than one) and these ``tracestate`` lines (``tracestate`` None: send none)."""
    parsed = parse_traceparent(traceparent.decode("latin-1").strip(" \t")) if traceparent else None
    if parsed is None:
        new = random_hex(24)
        trace_id = new[:32]
        return trace_id, f"00-{trace_id}-{new[32:]}-00", None
    trace_id, flags = parsed
    state = None
    if tracestate:
        raw = tracestate[0] if len(tracestate) == 1 else b",".join(tracestate)
        text = raw.decode("latin-1").strip(" \t")
        if (text and len(text) <= MAX_TRACESTATE_CHARS and text.isascii() and text.replace("\t", " ").isprintable()
                and (text.count(",") < MAX_TRACESTATE_MEMBERS or _members(text) <= MAX_TRACESTATE_MEMBERS)):
            state = text
    return trace_id, f"00-{trace_id}-{random_hex(8)}-{flags}", state


def _members(text: str) -> int:
    """List members of a tracestate, empty ones not counted (3.3.1.1 allows them)."""
    return sum(1 for m in text.split(",") if m.strip(" \t"))


def trace_id_of(traceparent: list[bytes] | None) -> str:
    """The trace id a request's ``traceparent`` lines continue, or a new random one (for an access line)."""
    parsed = parse_traceparent(traceparent[0].decode("latin-1").strip(" \t")) if traceparent and len(
        traceparent) == 1 else None
    return parsed[0] if parsed is not None else random_hex(16)
