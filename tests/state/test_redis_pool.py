"""`LeanPool`, the standalone connection pool, against a real redis-server: it stays bounded,
makes callers wait for a free connection and wakes them, fares as redis-py's own pool when
Redis closes its connections, and hands out no connection with a reply left unread."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import ConnectionError

from gateway.settings import RedisSettings
from gateway.state.client import LeanPool, connect, connection
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.processes  # a redis-server per test

PING = b"*1\r\n$4\r\nPING\r\n"


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


def _pool(url: str, max_connections: int, kind: type[BlockingConnectionPool] = LeanPool) -> Any:
    """The pool the gateway's client would have (`kind`: redis-py's own, to compare)."""
    client = connect(RedisSettings(url=url, max_connections=max_connections), url, kind)
    assert isinstance(client, Redis)
    pool = client.connection_pool
    assert type(pool) is kind
    return pool


async def _ping(pool: LeanPool, hold: float = 0.0) -> bytes:
    async with connection(pool) as conn:
        await conn.send_packed_command(PING, check_health=False)
        reply: bytes = await conn.read_response()
        await asyncio.sleep(hold)
        return reply


def test_callers_beyond_the_bound_wait_and_are_woken(redis: RedisServer) -> None:
    """40 callers holding a connection 20 ms each through a pool of 3: all are served, no more
    than 3 are in use at once, and every connection goes back."""

    async def run() -> tuple[list[bytes], int]:
        pool = _pool(redis.url, 3)
        seen = 0

        async def watch() -> None:
            nonlocal seen
            while True:
                seen = max(seen, len(pool._in_use_connections))
                await asyncio.sleep(0.002)

        watcher = asyncio.get_running_loop().create_task(watch())
        replies = await asyncio.wait_for(
            asyncio.gather(*(_ping(pool, hold=0.02) for _ in range(40))), timeout=10
        )
        watcher.cancel()
        assert not pool._in_use_connections
        assert len(pool._available_connections) <= 3
        await pool.disconnect()
        return replies, seen

    replies, seen = asyncio.run(run())
    assert replies == [b"PONG"] * 40
    assert 1 < seen <= 3
    assert int(redis.client().info("clients")["connected_clients"]) == 1  # the test's own


def test_many_callers_coming_and_going_and_cancelled(
    redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """300 callers arriving at random, holding a connection for a random time, a third of them
    cancelled by a timeout at any point (waiting included), through a pool of 3: each reads its
    own reply, no connection is held by two at once, no more than 3 ever exist, none is lost
    or left in use; callers meeting a free connection and no one waiting skip redis-py's
    `get_connection`."""
    slow = 0
    own_get = BlockingConnectionPool.get_connection

    async def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal slow
        slow += 1
        return await own_get(self, *args, **kwargs)  # type: ignore[no-untyped-call]

    monkeypatch.setattr(BlockingConnectionPool, "get_connection", counted)
    rng = random.Random(7)

    async def run() -> tuple[int, int, set[int]]:
        pool = _pool(redis.url, 3)
        held: set[int] = set()
        ever: set[int] = set()
        done = cancelled = 0

        async def caller(i: int) -> None:
            nonlocal done, cancelled
            await asyncio.sleep(rng.random() * 0.3)
            token = f"t{i}".encode()
            command = b"*2\r\n$4\r\nECHO\r\n$%d\r\n%s\r\n" % (len(token), token)
            try:
                async with asyncio.timeout(rng.choice([None, None, rng.random() * 0.01])):
                    async with connection(pool) as conn:
                        assert id(conn) not in held, "a connection held by two callers"
                        held.add(id(conn))
                        ever.add(id(conn))
                        try:
                            await conn.send_packed_command(command, check_health=False)
                            await asyncio.sleep(rng.random() * 0.004)
                            assert await conn.read_response() == token
                        finally:
                            held.discard(id(conn))
                done += 1
            except TimeoutError:
                cancelled += 1

        await asyncio.wait_for(asyncio.gather(*(caller(i) for i in range(300))), timeout=30)
        available, in_use = set(pool._available_connections), pool._in_use_connections
        assert not in_use
        assert pool._waiting == 0
        assert len(available) <= 3
        before = slow
        assert [await _ping(pool) for _ in range(50)] == [b"PONG"] * 50
        assert slow == before, "an uncontended caller took redis-py's path"
        await pool.disconnect()
        return done, cancelled, ever

    done, cancelled, ever = asyncio.run(run())
    assert done + cancelled == 300
    assert cancelled > 20
    assert len(ever) <= 3 + cancelled  # a cancelled caller's connection is replaced, not reused
    assert slow < 300, "no caller took the fast path"


def test_the_redis_py_internals_it_uses_are_there() -> None:
    """LeanPool reads redis-py's pool internals: a redis-py that renamed them fails here,
    by name, rather than in every call to Redis."""
    pool = LeanPool(max_connections=2)
    assert isinstance(pool._available_connections, list)
    assert isinstance(pool._in_use_connections, set)
    assert pool._in_maintenance is False
    assert callable(pool.ensure_connection)
    assert callable(pool.make_connection().should_reconnect)  # type: ignore[no-untyped-call]


def test_connections_redis_closed_are_replaced_before_use(redis: RedisServer) -> None:
    """Redis closes the idle connections (CLIENT KILL, then a restart): no call fails, through
    LeanPool as through redis-py's own pool built with the same options (redis-py 8.1, its
    maintenance notifications left on "auto", failed the first call on each)."""

    async def run(pool: Any) -> list[str]:
        outcomes = [
            r.decode() for r in await asyncio.gather(*(_ping(pool, hold=0.01) for _ in range(4)))
        ]

        async def ping() -> str:
            try:
                return (await _ping(pool, hold=0.01)).decode()
            except ConnectionError as exc:
                return type(exc).__name__

        assert redis.client().client_kill_filter(_type="normal", skipme=True) == 4
        await asyncio.sleep(0.05)  # the close reaches the client's sockets
        outcomes += await asyncio.gather(*(ping() for _ in range(4)))  # all four connections
        redis.stop()
        redis.start()
        await asyncio.sleep(0.05)  # as above
        outcomes += await asyncio.gather(*(ping() for _ in range(4)))
        await pool.disconnect()
        return outcomes

    own = asyncio.run(run(_pool(redis.url, 4, BlockingConnectionPool)))
    lean = asyncio.run(run(_pool(redis.url, 4)))
    assert own == ["PONG"] * 12
    assert lean == own


def test_a_caller_that_fails_midway_leaves_no_reply_for_the_next(redis: RedisServer) -> None:
    """A caller that failed between sending and reading: `connection` disconnects its
    connection before it goes back (a Cluster node's pool would hand it out unchecked), so the
    next caller reads its own reply, not the stale one."""

    async def run() -> list[bytes]:
        pool = _pool(redis.url, 1)

        async def fail_before_reading() -> None:
            async with connection(pool) as conn:
                await conn.send_packed_command(b"*2\r\n$4\r\nECHO\r\n$5\r\nstale\r\n")
                await asyncio.sleep(0.05)  # the reply is in the socket
                raise RuntimeError("the caller failed before reading")

        with pytest.raises(RuntimeError):
            await fail_before_reading()
        assert not pool._available_connections[-1].is_connected  # dropped, not only skipped
        replies = [await _ping(pool) for _ in range(3)]
        await pool.disconnect()
        return replies

    assert asyncio.run(run()) == [b"PONG"] * 3
