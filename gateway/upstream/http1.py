"""The lean HTTP/1.1 client of the upstream hot path: keep-alive connections to one origin.

Why not a general client: measured on this machine (`python -m bench.clients`), one core carries
about 580 requests/s with httpx's default transport and 8,200 with aiohttp, against 16,000 with
this one; with aiohttp the client took about 30% of the gateway's CPU per request. This client
does only what forwarding needs: POST a complete body, stream the response back chunk by chunk,
keep connections alive.

- One pool per upstream origin, at most `max_connections` open; callers queue beyond that.
- Idle connections are reused newest first and closed after `idle_timeout` seconds, before the
  usual server keep-alive timeouts (uvicorn's is 5 s) can race a new request.
- A reused connection the server closed before answering one byte is retried once on a fresh
  connection: the server dropped it as idle and never read the request.

Its parts: one connection and its exact exchange (asyncio protocol + httptools parser) in
`connection.py`, the response and its flow control in `response.py`, the errors (`UpstreamError`
and subclasses) in `errors.py`, mapped to client-facing ones in `pools.py`.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from urllib.parse import urlsplit

from .connection import _Connection
from .errors import ConnectError, Disconnected, UpstreamTimeout
from .response import Response


class Pool:
    """Keep-alive connections to one origin (scheme, host, port)."""

    def __init__(
        self,
        base_url: str,
        *,
        max_connections: int,
        connect_timeout: float,
        read_timeout: float,
        idle_timeout: float,
        max_body_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        parts = urlsplit(base_url)
        self.loop = asyncio.get_running_loop()
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl: ssl.SSLContext | None = (
            ssl.create_default_context() if parts.scheme == "https" else None
        )
        default_port = self.port == (443 if parts.scheme == "https" else 80)
        self.host_header = (self.host if default_port else f"{self.host}:{self.port}").encode()
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.idle_timeout = idle_timeout
        self.max_body_bytes = max_body_bytes
        self._idle: list[_Connection] = []
        self._open = 0
        self._queue: collections.deque[asyncio.Future[None]] = collections.deque()

    async def request(self, path: bytes, headers: bytes, body: bytes) -> Response:
        """POST `body` to `path` with pre-encoded `headers`; returns once the head is in."""
        request = b"".join(
            (
                b"POST ",
                path,
                b" HTTP/1.1\r\nhost: ",
                self.host_header,
                b"\r\ncontent-length: ",
                str(len(body)).encode(),
                b"\r\n",
                headers,
                b"\r\n",
                body,
            )
        )
        for attempt in (1, 2):
            conn = await self._acquire(fresh=attempt == 2)
            reused = conn.used
            response, head_future = conn.begin(request)
            try:
                await conn.wait(head_future)
            except Disconnected:
                if reused and attempt == 1 and conn.answered_nothing:
                    continue  # the server had dropped the idle connection: never read
                raise
            except BaseException:
                conn.finish(reusable=False)
                raise
            return response
        raise Disconnected("unreachable")  # pragma: no cover  (the loop returns or raises)

    async def _acquire(self, fresh: bool) -> _Connection:
        while True:
            if fresh and self._idle and self._open >= self.max_connections:
                self._idle.pop(0)._close()  # make room for the fresh connection
            if not fresh:
                conn = self._take_idle()
                if conn is not None:
                    return conn
            if self._open < self.max_connections:
                return await self._connect()
            waiter = self.loop.create_future()
            self._queue.append(waiter)
            await waiter

    def _take_idle(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and now - conn.idle_since < self.idle_timeout:
                return conn
            conn._close()
        return None

    async def _connect(self) -> _Connection:
        self._open += 1
        try:
            _, conn = await asyncio.wait_for(
                self.loop.create_connection(
                    lambda: _Connection(self), self.host, self.port, ssl=self.ssl
                ),
                self.connect_timeout,
            )
        except BaseException as exc:
            self._open -= 1
            self._wake_one()
            if isinstance(exc, TimeoutError):
                raise UpstreamTimeout(f"connecting to {self.host}:{self.port} timed out") from exc
            if isinstance(exc, OSError):
                raise ConnectError(
                    f"cannot connect to {self.host}:{self.port}: {exc.strerror or exc}"
                ) from exc
            raise
        return conn

    def put_back(self, conn: _Connection) -> None:
        """A connection finished its exchange and may serve the next one."""
        conn.idle_since = time.monotonic()
        self._idle.append(conn)
        self._wake_one()

    def discard(self, conn: _Connection) -> None:
        """A connection closed: forget it and free its slot."""
        if conn in self._idle:
            self._idle.remove(conn)
        if conn.holds_slot:
            conn.holds_slot = False
            self._open -= 1
            self._wake_one()

    def _wake_one(self) -> None:
        while self._queue:
            waiter = self._queue.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        """Close every idle connection (busy ones close as their exchanges end)."""
        for conn in list(self._idle):
            conn._close()
