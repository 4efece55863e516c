"""The random part of new trace ids (W3C Trace Context 3.2.2.3: a trace id SHOULD be random, so that two
processes never make the same one; https://www.w3.org/TR/trace-context/)."""

from __future__ import annotations

import os

from gateway.observability.tracing import random_hex


def test_a_forked_process_draws_its_own_random_bytes() -> None:
    """Random bytes are drawn from os.urandom in batches: a forked child must not hand out the parent's."""
    random_hex(8)  # the parent holds a batch now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        try:
            os.write(write, random_hex(24).encode())
        finally:
            os._exit(0)
    os.close(write)
    child = os.read(read, 100).decode()
    os.close(read)
    os.waitpid(pid, 0)
    mine = random_hex(24)
    assert len(child) == len(mine) == 48 and int(child, 16) and int(mine, 16)
    assert child != mine


def test_values_do_not_repeat_across_batches() -> None:
    seen = {random_hex(16) for _ in range(2000)}  # several os.urandom batches
    assert len(seen) == 2000 and all(len(v) == 32 and v == v.lower() for v in seen)
