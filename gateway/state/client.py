"""Connecting to Redis as configured: one server, the primary that Sentinels name, or a Cluster.

`connect` builds the redis-py client; `pool_of` and `connection` give the hand-packed script
calls (`batch.py`) a connection to the node that holds a key: the client's own pool,
or in a Cluster the pool of the node serving the key's slot.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection, SSLConnection, parse_url
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.exceptions import MovedError, ResponseError
from redis.maint_notifications import MaintNotificationsConfig

from ..settings import RedisSettings

Client = aioredis.Redis | RedisCluster


def connect(
    settings: RedisSettings,
    url: str | None,
    pool_class: type[aioredis.BlockingConnectionPool] | None = None,
) -> Client:
    """The client for `settings` (`url`: the settings' url, or the embedded server's); the
    standalone pool is a `LeanPool` unless `pool_class` says otherwise (tests compare them)."""
    common: dict[str, Any] = {
        "socket_timeout": settings.timeout,
        "socket_connect_timeout": settings.timeout,
        "decode_responses": False,
        # Off, not redis-py 8's "auto": what they bring, relaxed timeouts during a server's
        # maintenance, the gateway's short `redis.timeout` overrides, and `LeanPool` then never
        # leaves its fast path. (redis-py 8.1's "auto" also skipped the check that finds a
        # pooled connection Redis closed; 8.2 no longer does. Sentinel's primary pool never
        # turns them on; the clients that ask the Sentinels do.)
        "maint_notifications_config": MaintNotificationsConfig(enabled=False),
    }
    if settings.mode == "sentinel":
        return _sentinel(settings, common)
    if url is None:  # settings refuse this; kept for the type checker
        raise ValueError("redis.url is required outside sentinel mode")
    options = {**parse_url(url), **common, **_credentials(settings)}
    if options.get("connection_class") is SSLConnection or settings.tls is not None:
        options.update(_tls(settings))
    if settings.mode == "cluster":
        options.pop("connection_class", None)
        options.pop("db", None)
        # A Cluster keeps redis-py's default: its nodes' pools have no check to skip (the
        # gateway's connection class is that check), and with "auto" redis-py follows the slot
        # migrations a server announces.
        options.pop("maint_notifications_config")
        cluster = RedisCluster(max_connections=settings.max_connections, **options)
        checked_connections(cluster)
        return cluster
    if options.pop("ssl", False):
        options["connection_class"] = SSLConnection
    # A bounded pool that makes callers wait for a free connection: a burst then reuses a few
    # warm connections instead of opening hundreds at once.
    pool = (pool_class or LeanPool)(
        max_connections=settings.max_connections,
        timeout=None,  # the wait is bounded by `RedisStore.call`'s own timeout
        **options,
    )
    return aioredis.Redis.from_pool(pool)  # (closing the client closes the pool's connections)


class LeanPool(aioredis.BlockingConnectionPool):
    """redis-py's bounded pool (standalone Redis; Sentinel and Cluster keep redis-py's) without
    what it costs per use while a connection is free: its lock, wait and timeout contexts and
    the awaits of its observability hooks took 11 µs per acquire and release, 2.4 µs here, and
    every pipeline of script calls pays it (3 to 4 µs of gateway CPU per keyed request; see
    docs/performance.md). A free connection is checked as the pool checks it
    (`ensure_connection`) and handed out. Everything else takes redis-py's own path: a caller
    who must wait and the release that wakes it (waiting as redis-py's: not first come, first
    served), the pool in maintenance (never, with maintenance notifications off as `connect`
    sets them), and a connection that re-authenticates on release (token credentials). Left out
    of the fast path: the pool's OpenTelemetry counts of connections in use (the gateway enables
    none)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._waiting = 0
        """Callers in redis-py's `get_connection`: a release must wake one of them."""

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        if self._available_connections and not self._waiting and not self._in_maintenance:
            conn = self._available_connections.pop()
            self._in_use_connections.add(conn)
            try:
                await self.ensure_connection(conn)
            except BaseException:
                await self.release(conn)
                raise
            return conn
        self._waiting += 1
        try:
            return await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        finally:
            self._waiting -= 1

    async def release(self, connection: Any) -> None:
        if (
            self._waiting
            or self._in_maintenance
            or getattr(connection, "_re_auth_token", None) is not None
        ):
            await super().release(connection)  # wakes a waiter; re-authenticates
            return
        self._in_use_connections.remove(connection)
        try:
            if connection.should_reconnect():
                await connection.disconnect()
        finally:  # back in the pool even if cancelled meanwhile
            self._available_connections.append(connection)


class ClusterConnection(Connection):
    """A Cluster node's connection that says it must reconnect once the node closed it (an
    idle timeout, a restart, a failover, CLIENT KILL): see `checked_connections`."""

    def should_reconnect(self) -> bool:
        return _closed(self) or bool(super().should_reconnect())  # type: ignore[no-untyped-call]


class ClusterSSLConnection(SSLConnection):
    """`ClusterConnection` over TLS."""

    def should_reconnect(self) -> bool:
        return _closed(self) or bool(super().should_reconnect())  # type: ignore[no-untyped-call]


_CHECKED: dict[type[Connection], type[Connection]] = {
    Connection: ClusterConnection,
    SSLConnection: ClusterSSLConnection,
}


def _closed(conn: Connection) -> bool:
    """The socket is open but the server closed it (end of file) or reset it; what the event
    loop learnt while the connection sat in the pool, without a read."""
    reader = conn._reader
    return reader is not None and (reader.at_eof() or reader.exception() is not None)


def checked_connections(cluster: RedisCluster) -> None:
    """Make every connection of `cluster`'s nodes a `ClusterConnection`.

    redis-py's Cluster nodes hand out their pooled connections unchecked, where its standalone
    pool checks each one first. After a node closed them all, the first command failed on one
    and asked for a topology refresh, which queried the nodes through their pooled connections,
    as dead: since redis-py 8.2 a command whose refresh reached no node gives up
    (`RedisClusterUnreachableError`) instead of retrying, and the requests got the failure
    policy. (redis-py 8.1 marked every connection for reconnection at each refresh, which hid
    it.) Every use of a node's connection, a command's, a pipeline's, a refresh's, or
    `connection` here, first asks it `should_reconnect()`: `ClusterConnection` answers yes for
    a socket the node closed, so it reconnects instead of failing.

    redis-py's Cluster takes no connection class: it is set where its nodes read it, the
    connection options its `NodesManager` builds nodes with and the nodes already built (the
    one of the URL). `tests/state/test_redis_cluster.py` pins this contract by name."""
    options = cluster.connection_kwargs
    built = options.get("connection_class")
    if built not in _CHECKED:
        raise TypeError(f"redis-py's Cluster builds {built!r}, not a class this checks")
    options["connection_class"] = checked = _CHECKED[built]
    for node in cluster.nodes_manager.startup_nodes.values():
        node.connection_class = checked


def _sentinel(settings: RedisSettings, common: dict[str, Any]) -> aioredis.Redis:
    secure = _tls(settings) if settings.tls is not None else {}
    addresses = [
        (host.strip("[]"), int(port))
        for host, port in (a.rsplit(":", 1) for a in settings.sentinels)
    ]
    asked: dict[str, Any] = {**common, **secure}  # Sentinels: the same TLS, their own password
    if settings.sentinel_password is not None:
        asked["password"] = settings.sentinel_password
    sentinel = Sentinel(
        addresses, sentinel_kwargs=asked, **common, **secure, **_credentials(settings)
    )
    primary: aioredis.Redis = sentinel.master_for(
        settings.sentinel_master,
        db=settings.db,
        max_connections=settings.max_connections,
    )
    return primary


def _credentials(settings: RedisSettings) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if settings.username is not None:
        found["username"] = settings.username
    if settings.password is not None:
        found["password"] = settings.password
    return found


def _tls(settings: RedisSettings) -> dict[str, Any]:
    tls = settings.tls
    options: dict[str, Any] = {"ssl": True, "ssl_cert_reqs": "required"}
    if tls is not None:
        options.update(
            ssl_ca_certs=tls.ca_file,
            ssl_certfile=tls.cert_file,
            ssl_keyfile=tls.key_file,
            ssl_check_hostname=tls.check_hostname,
        )
    return options


async def ready(client: Client) -> None:
    """Learn a Cluster's nodes and slots (once; later calls return at once)."""
    if isinstance(client, RedisCluster):
        await client.initialize()


async def moved(client: Client, error: MovedError) -> None:
    """A node answered MOVED: its slot is served elsewhere now (resharding, failover). Trust
    the node the answer names for that slot, as redis-py does (a full rediscovery per MOVED
    would reconnect to every node in the middle of a resharding)."""
    if isinstance(client, RedisCluster):
        await client.nodes_manager.move_slot(error)


def unreachable(client: Client) -> None:
    """A node did not answer (it may have failed over): learn the Cluster's nodes and slots
    again before the next call, as redis-py does after a connection error (since 8.2, at most
    once a second). redis-py has no public call for this; `_initialize` is the flag its own
    `initialize()` reads (`tests/state/test_redis_cluster.py` pins it)."""
    if isinstance(client, RedisCluster):
        client._initialize = True


def pool_of(client: Client, key: str) -> Any:
    """The pool of connections to the node that serves `key` (hashable)."""
    if isinstance(client, RedisCluster):
        return client.get_node_from_key(key)
    return client.connection_pool


@contextlib.asynccontextmanager
async def connection(pool: Any) -> AsyncIterator[Connection]:
    """A connection from `pool` (from `pool_of`), returned to it afterwards. One whose reply
    may be left unread (the caller failed midway) is disconnected before it goes back."""
    if isinstance(pool, ClusterNode):
        conn = pool.acquire_connection()
    else:
        conn = await pool.get_connection()
    try:
        if isinstance(pool, ClusterNode):
            # as redis-py's own commands take one: reconnected if the node closed it
            # (`checked_connections`); inside the try, so cancelled here it still goes back
            await pool.disconnect_if_needed(conn)
        yield conn
    except BaseException:
        await conn.disconnect()
        raise
    finally:
        if isinstance(pool, ClusterNode):
            pool.release(conn)
        else:
            await pool.release(conn)


async def memory(client: Client, key: str) -> tuple[int, int]:
    """``used_memory`` and ``maxmemory`` (0: no limit) of the node that serves `key`, from its
    ``INFO memory``."""
    async with connection(pool_of(client, key)) as conn:
        await conn.send_command("INFO", "memory", check_health=False)
        reply = await conn.read_response()
    text = reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
    fields = dict(line.strip().split(":", 1) for line in text.splitlines() if ":" in line)
    used, limit = fields.get("used_memory", ""), fields.get("maxmemory", "")
    if not (used.isdigit() and limit.isdigit()):  # a proxy or a Redis-like server's INFO
        raise ResponseError(f"INFO memory without used_memory and maxmemory: {text[:100]!r}")
    return int(used), int(limit)


async def close(client: Client) -> None:
    """Close the client's connections, and in sentinel mode those to the Sentinels."""
    await client.aclose()
    pool = getattr(client, "connection_pool", None)
    if isinstance(pool, SentinelConnectionPool):
        for sentinel in pool.sentinel_manager.sentinels:
            await sentinel.aclose()
