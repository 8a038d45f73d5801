"""`LeanPool`, the standalone connection pool, against a real redis-server: it stays bounded,
makes callers wait for a free connection and wakes them, fares as redis-py's own pool when
Redis closes its connections, and hands out no connection with a reply left unread."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import ConnectionError

from gateway.redis_client import LeanPool, connect, connection
from gateway.settings import RedisSettings
from tests.support.redis_server import RedisServer

PING = b"*1\r\n$4\r\nPING\r\n"


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


def _pool(url: str, max_connections: int) -> LeanPool:
    client = connect(RedisSettings(url=url, max_connections=max_connections), url)
    assert isinstance(client, Redis)
    pool = client.connection_pool
    assert isinstance(pool, LeanPool)
    return pool


async def _ping(pool: LeanPool, hold: float = 0.0) -> bytes:
    async with connection(pool) as conn:
        await conn.send_packed_command(PING, check_health=False)
        reply: bytes = await conn.read_response()
        await asyncio.sleep(hold)
        return reply


def test_callers_beyond_the_bound_wait_and_are_woken(redis: RedisServer) -> None:
    """40 callers holding a connection 20 ms each through a pool of 3: all are served, Redis
    never sees more than 3 connections from it, and every connection goes back."""

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


def test_connections_redis_closed_fare_as_in_redis_pys_own_pool(redis: RedisServer) -> None:
    """Redis closes the idle connections (CLIENT KILL, then a restart): each call after that
    succeeds or fails exactly as it would through redis-py's own BlockingConnectionPool (whose
    check misses a close it has not read yet: one call fails, its connection is dropped)."""

    async def run(pool: Any) -> list[str]:
        outcomes = [
            r.decode() for r in await asyncio.gather(*(_ping(pool, hold=0.01) for _ in range(4)))
        ]

        async def ping() -> str:
            try:
                return (await _ping(pool)).decode()
            except ConnectionError as exc:
                return type(exc).__name__

        assert redis.client().client_kill_filter(_type="normal", skipme=True) == 4
        await asyncio.sleep(0.05)  # the close reaches the client's sockets
        outcomes += [await ping() for _ in range(6)]
        redis.stop()
        redis.start()
        outcomes += [await ping() for _ in range(6)]
        await pool.disconnect()
        return outcomes

    own = asyncio.run(run(BlockingConnectionPool.from_url(redis.url, max_connections=4)))
    lean = asyncio.run(run(_pool(redis.url, 4)))
    assert lean == own
    assert lean[:4] == ["PONG"] * 4
    assert lean[-3:] == ["PONG"] * 3  # working again


def test_a_caller_that_fails_midway_leaves_no_reply_for_the_next(redis: RedisServer) -> None:
    """A caller that failed between sending and reading: `connection` disconnects its
    connection before it goes back, so the next caller reads its own reply, not the stale
    one. (The pool's own check would not catch it: redis-py 8.1 skips it while
    `maint_notifications` is "auto", its default.)"""

    async def run() -> list[bytes]:
        pool = _pool(redis.url, 1)

        async def fail_before_reading() -> None:
            async with connection(pool) as conn:
                await conn.send_packed_command(b"*2\r\n$4\r\nECHO\r\n$5\r\nstale\r\n")
                await asyncio.sleep(0.05)  # the reply is in the socket
                raise RuntimeError("the caller failed before reading")

        with pytest.raises(RuntimeError):
            await fail_before_reading()
        replies = [await _ping(pool) for _ in range(3)]
        await pool.disconnect()
        return replies

    assert asyncio.run(run()) == [b"PONG"] * 3
