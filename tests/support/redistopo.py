"""Real Redis topologies for the tests: a master with a replica watched by a Sentinel, and a 3-master Cluster.

Every server is a real ``redis-server`` process on a free loopback port with its own directory; nothing is
mocked. Each class has ``stop()`` (idempotent), which the fixtures call in their finalizers.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import redis
from redis.crc import key_slot

from tests.support.procs import _stop, free_port, wait_port

SERVICE = "gwmaster"


def _binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (.ci/run installs it from Debian's packages)")
    return binary


def _wait(what: str, check: Any, timeout: float, every: float = 0.05) -> Any:
    """Poll ``check()`` until it returns something true; that value (fails after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
        except (redis.RedisError, OSError) as exc:
            last, value = exc, None
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"{what} not within {timeout} s (last error: {last!r})")


class Node:
    """One redis-server process (no persistence) started with extra config directives."""

    def __init__(self, work: Path, *directives: str, sentinel: bool = False) -> None:
        self.port = free_port()
        self.work = work / f"{'sentinel' if sentinel else 'node'}-{self.port}"
        self.work.mkdir(parents=True, exist_ok=True)
        self.sentinel = sentinel
        self.directives = directives
        self.bus = 0  # the cluster bus port, when there is one
        self.proc: subprocess.Popen[Any] | None = None
        self.start()

    def start(self) -> None:
        conf = self.work / "redis.conf"  # a Sentinel rewrites its file: it must be writable and its own
        persistence = [] if self.sentinel else ['save ""', "appendonly no"]
        conf.write_text("\n".join([
            f"port {self.port}", "bind 127.0.0.1", *persistence, f'dir "{self.work}"', "daemonize no",
            "loglevel notice", f'logfile "{self.work / "redis.log"}"', *self.directives, "",
        ]))
        args = [_binary(), str(conf), *(["--sentinel"] if self.sentinel else [])]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, self.proc)

    def client(self, **kwargs: Any) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, **kwargs)

    def kill(self) -> None:
        """SIGKILL: the server is gone at once, as a crashed host is."""
        if self.proc is not None:
            _stop(self.proc, signal.SIGKILL)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None


class SentinelSetup:
    """A master, one replica and one Sentinel (quorum 1) that fails over 0.5 s after the master stops answering.

    ``url`` is the gateway's ``redis+sentinel://`` URL for database ``db``.
    """

    DOWN_AFTER_MS = 500

    def __init__(self, work: Path, db: int = 0) -> None:
        self.nodes: list[Node] = []
        self.sentinel: Node | None = None
        try:
            master = Node(work)
            self.nodes.append(master)
            self.nodes.append(Node(work, f"replicaof 127.0.0.1 {master.port}"))
            self.sentinel = Node(
                work, f"sentinel monitor {SERVICE} 127.0.0.1 {master.port} 1",
                f"sentinel down-after-milliseconds {SERVICE} {self.DOWN_AFTER_MS}",
                f"sentinel failover-timeout {SERVICE} 5000", f"sentinel parallel-syncs {SERVICE} 1",
                sentinel=True,
            )
            self.url = f"redis+sentinel://127.0.0.1:{self.sentinel.port}/{SERVICE}/{db}"
            self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def sentinel_client(self) -> redis.Redis:
        assert self.sentinel is not None
        return self.sentinel.client()

    def master_port(self) -> int:
        with self.sentinel_client() as s:
            host, port = s.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        return int(port)

    def node_on(self, port: int) -> Node:
        return next(n for n in self.nodes if n.port == port)

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Until the replica is in sync and the Sentinel knows it (it can then fail over)."""
        def ready() -> bool:
            master = self.node_on(self.master_port())
            with master.client() as m:
                if m.info("replication").get("connected_slaves", 0) < 1:
                    return False
            with self.sentinel_client() as s:
                replicas = s.execute_command("SENTINEL", "REPLICAS", SERVICE)
                return bool(replicas)
        _wait("Sentinel set-up ready", ready, timeout)

    def sync_replica(self) -> None:
        """Wait until the replica has every write the master acknowledged (WAIT), before a failover."""
        with self.node_on(self.master_port()).client() as m:
            assert m.execute_command("WAIT", 1, 2000) >= 1

    def kill_master(self) -> int:
        """SIGKILL the current master; its port."""
        port = self.master_port()
        self.node_on(port).kill()
        return port

    def wait_new_master(self, old_port: int, timeout: float = 15.0) -> int:
        """Until the Sentinel names another master and that one accepts writes; its port."""
        def promoted() -> int:
            port = self.master_port()
            if port == old_port:
                return 0
            with self.node_on(port).client() as m:
                return port if m.info("replication").get("role") == "master" else 0
        return int(_wait("failover", promoted, timeout))

    def stop(self) -> None:
        if self.sentinel is not None:
            self.sentinel.stop()
        for node in self.nodes:
            node.stop()


class ClusterSetup:
    """Three masters, no replicas, all 16384 slots split between them (CLUSTER ADDSLOTSRANGE and MEET by hand).

    ``nodes`` are in name order ("127.0.0.1:<port>", the order the gateway's invalidation listener tries them
    in) and get the slot ranges in that order, so the store's ``{gw}`` keys (slot 7373) live on the middle
    node and the first node holds none of them: a test can stop the first node and keep the store.
    ``cluster-require-full-coverage no``: with one node gone the others keep serving their slots.
    Each node's bus port is a free port of its own (``cluster-port``), not port + 10000, which could be taken
    or out of range. ``url`` is the gateway's ``redis+cluster://`` URL naming every node.
    """

    def __init__(self, work: Path, size: int = 3) -> None:
        self.nodes: list[Node] = []
        try:
            for _ in range(size):
                bus = free_port()
                self.nodes.append(Node(work, "cluster-enabled yes", f"cluster-port {bus}",
                                       "cluster-config-file nodes.conf", "cluster-node-timeout 2000",
                                       "cluster-require-full-coverage no"))
                self.nodes[-1].bus = bus
            self.nodes.sort(key=lambda n: f"127.0.0.1:{n.port}")
            self._create()
            self.url = "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)
        except BaseException:
            self.stop()
            raise

    def _create(self) -> None:
        step = 16384 // len(self.nodes)
        for i, node in enumerate(self.nodes):
            first, last = i * step, (16383 if i == len(self.nodes) - 1 else (i + 1) * step - 1)
            with node.client() as r:
                r.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
                r.execute_command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
        with self.nodes[0].client() as r:
            for node in self.nodes[1:]:
                r.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port, node.bus)

        self.wait_ok()

    def wait_ok(self, timeout: float = 20.0) -> None:
        """Until every node knows every other, sees none failing, and says the cluster is ok."""
        def ok() -> bool:
            for node in self.nodes:
                with node.client() as r:
                    info = r.execute_command("CLUSTER", "INFO").decode()
                    if "cluster_state:ok" not in info or f"cluster_known_nodes:{len(self.nodes)}" not in info:
                        return False
                    if b"fail" in r.execute_command("CLUSTER", "NODES"):
                        return False
            return True
        _wait("cluster state ok on every node", ok, timeout)

    def heal(self) -> None:
        """Start every stopped node again (same directory: it rejoins with its slots) and wait until ok."""
        stopped = [n for n in self.nodes if n.proc is None]
        for node in stopped:
            node.start()
        if stopped:
            self.wait_ok()

    def cluster_client(self) -> redis.RedisCluster:
        return redis.RedisCluster(host="127.0.0.1", port=self.nodes[0].port, socket_timeout=2)

    def node_for(self, key: str) -> Node:
        """The node that serves ``key``'s slot."""
        step = 16384 // len(self.nodes)
        return self.nodes[min(key_slot(key.encode()) // step, len(self.nodes) - 1)]

    def flush(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(redis.RedisError), node.client() as r:
                r.flushall()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
