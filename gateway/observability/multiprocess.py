"""One ``/metrics`` over every worker of ``gateway serve --workers N``: prometheus_client's multiprocess mode.

Each worker counts in its own memory exactly as a single process does (gateway/observability/metrics.py: a few dict
updates per request, nothing more on the hot path). :class:`SharedMetrics` copies those values into the
worker's own files in the directory the supervisor made (``PROMETHEUS_MULTIPROC_DIR``: private, fresh for
each run, removed when the supervisor exits; gateway/workers.py), through prometheus_client's own
``MultiProcessValue`` (the same files and keys its ``Counter`` and ``Histogram`` write in that mode):

* once a second, from a task on the worker's event loop;
* just before the worker that answers a scrape reads every worker's files (so its own values are current);
* once more when the worker shuts down (so nothing it counted is lost).

A scrape is answered by prometheus_client's ``MultiProcessCollector`` over all the files:

* counters (``*_total``) and histograms (buckets, ``_sum``, ``_count``) are summed over the workers, and keep
  the counts of a worker that has ended (a counter never goes down because a worker was replaced);
* gauges are states, not amounts: written with ``multiprocess_mode="mostrecent"`` and stamped at every write,
  so the answer is the value most recently written by a live worker (``gateway_readiness`` as the answering
  worker sees it this moment; ``gateway_build_info``, the same in every worker);
* ``process_*`` (prometheus_client's ``ProcessCollector``) once per live worker, with a ``pid`` label: CPU,
  memory and file descriptors are per process, and a sum of start times means nothing.

What a scrape shows of the other workers is at most :data:`PUBLISH_SECONDS` old.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, values
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from gateway.background import Background
from gateway.observability.metrics import Metrics

PUBLISH_SECONDS = 1.0
ENV = "PROMETHEUS_MULTIPROC_DIR"  # where prometheus_client's multiprocess values write
GAUGE_MODE = "mostrecent"

# (type, gauge mode, family name, sample name, labels): one value in this worker's files.
_Key = tuple[str, str, str, str, tuple[tuple[str, str], ...]]


def _samples(family: Metric) -> Iterator[tuple[str, dict[str, str], float]]:
    """The samples of ``family`` as the multiprocess files hold them: a histogram's buckets each on their own
    (the collector adds them up, and makes ``_count``), no ``_created``."""
    if family.type == "histogram":
        below: dict[tuple[tuple[str, str], ...], float] = {}
        for s in family.samples:
            if s.name.endswith("_bucket"):
                series = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
                yield s.name, s.labels, s.value - below.get(series, 0.0)  # buckets come in ascending order
                below[series] = s.value
            elif s.name.endswith("_sum"):
                yield s.name, s.labels, s.value
    elif family.type in ("counter", "gauge"):
        for s in family.samples:
            if not s.name.endswith("_created"):
                yield s.name, s.labels, s.value


class SharedMetrics:
    """One worker's part of the shared metrics: it writes its values to its files and answers a scrape with the
    values of every worker."""

    def __init__(self, metrics: Metrics, path: str) -> None:
        if os.environ.get(ENV) != path:
            raise ValueError(f"{ENV} must name {path}: prometheus_client writes where that variable says")
        self.metrics = metrics
        # The files of this process, as prometheus_client opened them for any metric of its own (the value class
        # is chosen when prometheus_client is imported, and the supervisor sets the variable before that).
        value_class = values.ValueClass
        self._value_class: Any = (
            value_class if value_class._multiprocess
            else values.MultiProcessValue())  # type: ignore[no-untyped-call]  # prometheus_client is untyped here
        self._values: dict[_Key, Any] = {}
        self._written: dict[_Key, float] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        MultiProcessCollector(self.registry, path)  # type: ignore[no-untyped-call]
        self.registry.register(WorkerProcesses(path))
        self._task = Background("metrics-publisher")

    def publish(self) -> None:
        """Write this worker's current values (only those that changed; every gauge, with the time now)."""
        now = time.time()
        for family in self.metrics.collect():
            gauge = family.type == "gauge"
            mode = GAUGE_MODE if gauge else ""
            for name, labels, value in _samples(family):
                key = (family.type, mode, family.name, name, tuple(labels.items()))
                if not gauge and self._written.get(key) == value:
                    continue
                holder = self._values.get(key)
                if holder is None:
                    holder = self._values[key] = self._value_class(
                        family.type, family.name, name, list(labels), list(labels.values()), family.documentation,
                        multiprocess_mode=mode)
                holder.set(value, timestamp=now if gauge else None)
                self._written[key] = value

    def render(self) -> bytes:
        """The text exposition of every worker's values (this worker's written first)."""
        self.publish()
        return generate_latest(self.registry)

    def start(self) -> None:
        """Write now, and then every :data:`PUBLISH_SECONDS` (a task on the running loop)."""
        self.publish()
        self._task.start(self._every_second)

    async def _every_second(self) -> None:
        while True:
            await asyncio.sleep(PUBLISH_SECONDS)
            self.publish()

    async def stop(self) -> None:
        """Stop the task and write the last values (at shutdown, after the last request)."""
        await self._task.stop()
        self.publish()


_FILE = re.compile(r"counter_(\d+)\.db")


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat[stat.rindex(b")") + 2:].split()[1])  # after "pid (comm) state": the parent's pid


def _constant(pid: int) -> Callable[[], int]:
    return lambda: pid


class WorkerProcesses:
    """``process_*`` of every live worker, each sample labelled with its ``pid``.

    The workers are the processes that wrote counter files here (every worker does, at start-up) and are still
    children of this worker's supervisor (so a pid the system gave to another process since is left out)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._supervisor = os.getppid()
        self._collectors: dict[int, ProcessCollector] = {}

    def workers(self) -> list[int]:
        pids = sorted(int(m.group(1)) for name in os.listdir(self.path) if (m := _FILE.fullmatch(name)))
        return [pid for pid in pids if _parent_of(pid) == self._supervisor]

    def collect(self) -> Iterable[Metric]:
        live = self.workers()
        for gone in self._collectors.keys() - set(live):
            del self._collectors[gone]
        families: dict[str, Metric] = {}
        for pid in live:
            collector = self._collectors.get(pid)
            if collector is None:
                collector = self._collectors[pid] = ProcessCollector(pid=_constant(pid), registry=None)
            for family in collector.collect():
                out = families.get(family.name)
                if out is None:
                    out = families[family.name] = Metric(family.name, family.documentation, family.type,
                                                         family.unit)
                for s in family.samples:
                    out.add_sample(s.name, {**s.labels, "pid": str(pid)}, s.value)
        return list(families.values())
