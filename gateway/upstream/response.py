"""An upstream response as its caller reads it: the head, then the body chunk by chunk.

- Memory is bounded: a body read whole by `max_body_bytes`, a streamed body by the flow
  control below (the head's bounds are `connection.py`'s).
- Flow control: reading from the upstream pauses while more than 256 KiB wait for the client.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from .errors import TooLarge, UpstreamError

if TYPE_CHECKING:
    from .connection import _Connection

_HIGH_WATER = 256 * 1024


class Response:
    """An upstream response whose head has arrived; the body follows as it comes."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_conn",
        "_done",
        "_error",
        "_waiter",
        "raw_headers",
        "status",
    )

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._done = False
        self._error: UpstreamError | None = None
        self._waiter: asyncio.Future[None] | None = None

    def header(self, name: bytes) -> bytes | None:
        """The first value of a header, by its lower-case name."""
        for key, value in self.raw_headers:
            if key.lower() == name:
                return value
        return None

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives, each time all that is buffered (raises `UpstreamError` if
        the body breaks off)."""
        while True:
            if self._chunks:
                # what has piled up goes out as one chunk: fewer sends when the reader lags
                chunk = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
                self._chunks.clear()
                self._buffered = 0
                self._conn.resume()
                yield chunk
            elif self._error is not None:
                raise self._error
            elif self._done:
                return
            else:
                await self._wait()

    async def read(self, limit: int | None = None) -> bytes:
        """The whole body; `TooLarge` as soon as it is known to exceed `limit` bytes (by
        default the pool's `max_body_bytes`)."""
        if limit is None:
            limit = self._conn.pool.max_body_bytes
        declared = self.header(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise TooLarge(f"the upstream's body of {int(declared)} bytes exceeds {limit}")
        parts: list[bytes] = []
        total = 0
        async for chunk in self.iter_chunks():
            total += len(chunk)
            if total > limit:
                raise TooLarge(f"the upstream's body exceeds {limit} bytes")
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def release(self) -> None:
        """The caller is done: the connection goes back to the pool if it can be reused."""
        self._conn.finish(reusable=self._done and self._error is None)

    def close(self) -> None:
        """Abandon the exchange: the connection is closed, which the upstream sees."""
        self._conn.finish(reusable=False)

    async def _wait(self) -> None:
        self._waiter = self._conn.loop.create_future()
        await self._conn.wait(self._waiter)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if self._buffered > _HIGH_WATER:
            self._conn.pause()
        self._wake()

    def _finish(self, error: UpstreamError | None = None) -> None:
        if error is not None and not self._done:
            self._error = error
        self._done = True
        self._wake()
