"""Redis clients: the one place that turns a Redis URL and a timeout into a client (key store, limiter).

The URL forms are :mod:`gateway.redisurl`'s: one server, the master of a Sentinel service, or a Cluster.
Every client bounds every exchange by ``timeout_ms`` (connect and each read; a timeout is never retried, a
broken connection once), and queues at most :data:`POOL_WAIT` for a free connection when the process is busy.

- One server: redis-py's client on a blocking pool, as the URL says.
- Sentinel: a new connection first asks the Sentinels (in turn, each bounded) where the master is, so the
  client follows a failover as soon as Sentinel has promoted a replica; a master demoted under an open
  connection answers READONLY, which redis-py turns into a reconnection.
- Cluster: :class:`BoundedCluster`. A broken connection makes redis-py reload the slot map from the nodes it
  knows and retry once; redis-py's cluster errors outside the RedisError tree are mapped into it, so callers
  catch one family.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis
from redis._parsers.commands import AsyncCommandsParser
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.cluster import PRIMARY
from redis.exceptions import ClusterDownError, RedisClusterException, SlotNotCoveredError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.redisurl import SINGLE_SCHEMES, RedisURLError, Topology, check, parse, scheme_of

POOL_WAIT = 1.0  # seconds a command may queue for a free pooled connection (this process's load, not Redis)


def _retry_broken_once() -> Retry:
    return Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))


class _SentinelBlockingPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """Sentinel's master-following pool with the blocking pool's bounded wait for a free connection."""


class SentinelRedis(aioredis.Redis):
    """The master of a Sentinel service; closing it also closes the connections to the Sentinels."""

    # Not "sentinel": that name is redis-py's SENTINEL command method, which this attribute would hide.
    sentinels: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.sentinels is not None:
            await self.sentinels.aclose()


class ClusterUnavailable(RedisConnectionError):
    """redis-py's cluster errors outside the RedisError tree (no reachable node, slots not covered), mapped in."""


class _Pipeline(ClusterPipeline):
    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> list[Any]:
        try:
            return await super().execute(raise_on_error, allow_redirections)
        except RedisClusterException as exc:
            raise ClusterUnavailable(f"Redis Cluster: {exc.__class__.__name__}") from None


class _CommandsParser(AsyncCommandsParser):
    """redis-py loads the command table (COMMAND) from the slot map's first master only, and gives up on the
    whole client when that master is down, though the others serve their slots: ask the others in turn, and
    make the one that answers the default node."""

    def __init__(self, cluster: RedisCluster) -> None:
        super().__init__()
        self._cluster = cluster

    async def initialize(self, node: ClusterNode | None = None) -> None:
        manager = self._cluster.nodes_manager
        first = node or manager.default_node
        others = [n for n in manager.nodes_cache.values() if n is not first and n.server_type == PRIMARY]
        failure: BaseException | None = None
        for candidate in [first, *others]:
            if candidate is None:
                continue
            try:
                await super().initialize(candidate)
            except (RedisConnectionError, RedisTimeoutError) as exc:
                failure = exc
                continue
            manager.default_node = candidate
            return
        raise failure or ClusterUnavailable("Redis Cluster: no node to load the command table from")


class BoundedCluster(RedisCluster):
    """RedisCluster with the single-server client's behaviour: a command queues (at most :data:`POOL_WAIT`)
    for a free connection instead of failing, a timeout is not retried, and every failure is a RedisError."""

    # A timeout is not retried (it would double the bound); a broken connection is, after a slot-map reload.
    ERRORS_ALLOW_RETRY = (RedisConnectionError, ClusterDownError, SlotNotCoveredError)  # type: ignore[assignment]

    def __init__(self, *args: Any, max_connections: int = 64, pool_wait: float = POOL_WAIT, **kwargs: Any) -> None:
        super().__init__(*args, max_connections=max_connections, **kwargs)  # type: ignore[misc]
        self.topology: Topology | None = None
        self._pubsub_nodes: list[tuple[str, int]] = []
        self.commands_parser = _CommandsParser(self)
        self._free = asyncio.Semaphore(max_connections)
        self._pool_wait = pool_wait

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if self._free.locked():
            try:
                async with asyncio.timeout(self._pool_wait):
                    await self._free.acquire()
            except TimeoutError:
                raise RedisConnectionError("No connection available.") from None
        else:
            await self._free.acquire()
        try:
            # Load the slot map first: redis-py 8.1 sends a command that comes before it to a random node
            # (and retries it to random nodes), where a dead node makes a keyed command fail.
            await self.initialize()
            return await super().execute_command(*args, **kwargs)
        except RedisClusterException as exc:
            raise ClusterUnavailable(f"Redis Cluster: {exc.__class__.__name__}") from None
        finally:
            self._free.release()

    async def script_load(self, script: Any) -> Any:
        """SCRIPT LOAD on every master that answers. redis-py's needs all of them, so one master down (its
        slots lost) would stop every script on the others as well; a master that missed the script gets it
        from the next call's NOSCRIPT answer."""
        await self.initialize()
        results = await asyncio.gather(
            *(self.execute_command("SCRIPT LOAD", script, target_nodes=node) for node in self.get_primaries()),
            return_exceptions=True,
        )
        for result in results:
            if not isinstance(result, BaseException):
                return result
        raise next((r for r in results if isinstance(r, Exception)), ClusterUnavailable("Redis Cluster: no master"))

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> ClusterPipeline:
        if shard_hint:
            raise RedisClusterException("shard_hint is deprecated in cluster mode")
        return _Pipeline(self, transaction)  # type: ignore[abstract]  # redis-py sets _event_dispatcher itself

    async def node_client(self, attempt: int) -> aioredis.Redis:
        """A plain client on one node, for a pub/sub subscription, which any node serves (a PUBLISH reaches
        every node of a cluster). The ``attempt``-th of the nodes known (round robin): the URL's, then every
        node the last one reached listed in CLUSTER SLOTS, in name order, so a dead node is passed over.

        This does not go through redis-py's slot-map reload, which gives up while the first master of the map
        is down (redis-py 8.1: it sends COMMAND to that node)."""
        assert self.topology is not None
        known = self._pubsub_nodes or sorted(set(self.topology.hosts))
        host, port = known[attempt % len(known)]
        kw = self.connection_kwargs
        client = aioredis.Redis(
            host=host, port=port, username=kw.get("username"), password=kw.get("password"),
            ssl=self.topology.tls, socket_timeout=kw.get("socket_timeout"),
            socket_connect_timeout=kw.get("socket_connect_timeout"), retry=_retry_broken_once(),
        )
        try:
            slots = await client.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
        except BaseException:
            await client.aclose()
            raise
        learned = {(h.decode() if isinstance(h, bytes) else str(h), int(p))
                   for entry in slots for h, p, *_ in entry[2:] if h and h != b"?"}
        self._pubsub_nodes = sorted(learned | set(self.topology.hosts), key=lambda a: f"{a[0]}:{a[1]}")
        return client


def connect(url: str, timeout_ms: float, max_connections: int = 64) -> Any:
    """A client for ``url`` (any of :data:`SCHEMES`) whose every exchange with Redis is bounded by
    ``timeout_ms`` (connect and each read; a timeout is never retried, a broken connection once). The wait for
    a free pooled connection measures this process's own load, not Redis, and is bounded by :data:`POOL_WAIT`.

    Returns a ``redis.asyncio.Redis`` (one server, or a Sentinel master) or a :class:`BoundedCluster`; both
    take the same commands, scripts and ``aclose()``. Raises :class:`RedisURLError` for a URL that cannot work.
    """
    check(url)
    t = timeout_ms / 1000.0
    scheme = scheme_of(url)
    if scheme in SINGLE_SCHEMES:
        try:
            pool = aioredis.BlockingConnectionPool.from_url(
                url, max_connections=max_connections, timeout=POOL_WAIT, socket_timeout=t,
                socket_connect_timeout=t, retry=_retry_broken_once(),
            )
        except ValueError as exc:
            raise RedisURLError(f"not a Redis URL ({exc.__class__.__name__})") from None
        return aioredis.Redis.from_pool(pool)  # the client owns the pool: aclose() closes its connections
    topo = parse(url)
    if topo.kind == "sentinel":
        # No retry on a Sentinel: discover_master asks the next one instead (redis-py's default would back
        # off for seconds on each).
        sentinel_kwargs: dict[str, Any] = {
            "socket_timeout": t, "socket_connect_timeout": t, "ssl": topo.tls, "retry": Retry(NoBackoff(), 0),
            "username": topo.sentinel_username, "password": topo.sentinel_password,
        }
        # Called through Any: redis-py 8.1 leaves Sentinel.__init__ unannotated and 8.2 annotates it, so a
        # "type: ignore" would be an error on one of the versions pyproject.toml admits.
        make_sentinel: Any = Sentinel
        sentinel: Sentinel = make_sentinel(list(topo.hosts), sentinel_kwargs=sentinel_kwargs)
        master = sentinel.master_for(
            topo.service, redis_class=SentinelRedis, connection_pool_class=_SentinelBlockingPool,
            max_connections=max_connections, timeout=POOL_WAIT, socket_timeout=t, socket_connect_timeout=t,
            retry=_retry_broken_once(), db=topo.db, username=topo.username, password=topo.password, ssl=topo.tls,
        )
        master.sentinels = sentinel
        return master
    cluster = BoundedCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in topo.hosts], max_connections=max_connections,
        socket_timeout=t, socket_connect_timeout=t, retry=Retry(NoBackoff(), 1), username=topo.username,
        password=topo.password, ssl=topo.tls,
    )
    cluster.topology = topo
    return cluster


async def follow_master(client: Any) -> None:
    """Behind Sentinel: ask the Sentinels where the master is now and, if it moved, close ``client``'s idle
    connections, so its next command reaches the new master rather than waiting out a timeout on an old one
    that hangs (a connection only asks the Sentinels when it is made). Nothing to do for one server or a
    Cluster."""
    pool = getattr(client, "connection_pool", None)
    if isinstance(pool, SentinelConnectionPool) and pool.is_master:
        await pool.get_master_address()  # type: ignore[no-untyped-call]  # a new address closes idle connections


async def subscriber_client(client: Any, attempt: int) -> Any:
    """The client to hold a pub/sub subscription on: ``client`` itself (one server, Sentinel master), or on a
    cluster a plain client on one node, picked afresh (round robin) on each ``attempt``. The caller closes a
    client that is not ``client``."""
    if isinstance(client, BoundedCluster):
        return await client.node_client(attempt)
    return client
