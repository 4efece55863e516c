"""Splits a py-spy profile of the gateway (``loadtests/profile.sh``'s collapsed stacks) into the layers of one
proxied request: server parse, ASGI conversion, gate, pipeline, upstream client, write to the client,
observability, the event loop itself, and other threads.

Each sample goes to the layer of the innermost frame that belongs to one (so time in a C call or in the stdlib
is charged to whoever called it). Usage: ``python3 loadtests/profile_split.py /tmp/gw-profile/profile.txt``.
"""

from __future__ import annotations

import collections
import sys

# (layer, predicate over "Function (path/file.py:line)"), tried innermost frame first, first match wins.
_SERVER_PARSE = ("data_received", "on_message_begin", "on_url", "on_header", "on_headers_complete", "on_body",
                 "on_message_complete", "_head_check", "connection_made", "connection_lost", "on_response_complete")
_WRITE = ("JoinedHeadCycle._body", "JoinedHeadCycle.send", "RequestResponseCycle.send", "JoinedHeadCycle._start",
          "_send_held")


def layer(frame: str) -> str | None:
    func, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0]
    if "/aiohttp/" in f"/{path}" or path.startswith(("yarl/", "multidict/")) or path.endswith(
            ("doors/proxy/forwarder.py", "doors/proxy/upstream.py", "doors/proxy/pool.py")):
        return "upstream client"
    if path.startswith(("gateway/gate/", "gateway/keys/", "gateway/ratelimit/", "gateway/policy/",
                        "gateway/network/")):
        return "gate"
    if path.startswith("gateway/observability/"):
        return "observability (access log, metrics)"
    if path.startswith("uvicorn/protocols/http/") or path.endswith("doors/proxy/protocol.py"):
        short = func.rsplit(".", 1)[-1]
        if func in _WRITE or short in ("send",):
            return "write to client (head build, transport.write)"
        if short in _SERVER_PARSE:
            return "server parse (httptools + uvicorn callbacks)"
        return "ASGI conversion (request cycle, receive, message dicts)"
    if path.endswith("doors/proxy/pipeline.py"):
        return "pipeline (header pass, dispatch, identity headers)"
    if path.endswith("gateway/app.py"):
        return "ASGI conversion (request cycle, receive, message dicts)"
    return None


def main(path: str) -> None:
    split: collections.Counter[str] = collections.Counter()
    total = 0
    for line in open(path):
        stack, _, n = line.rstrip().rpartition(" ")
        count = int(n)
        total += count
        frames = stack.split(";")
        if any(f.startswith(("Thread.run ", "Thread._bootstrap ", "WorkerThread.run ")) for f in frames):
            split["other threads (store, usage flush)"] += count
            continue
        for frame in reversed(frames):
            found = layer(frame)
            if found is not None:
                split[found] += count
                break
        else:
            split["event loop (uvloop, epoll, callbacks)"] += count
    print(f"samples: {total}")
    for name, count in split.most_common():
        print(f"{100 * count / total:5.1f}%  {name}")


if __name__ == "__main__":
    main(sys.argv[1])
