"""A lean HTTP/1.1 client for the upstream hot path: asyncio protocol + httptools parser.

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
- `read_timeout` bounds every wait for the peer: the response head and each body chunk.
- The exchange is exact (see `_Connection`): 1xx interim answers are dropped, a final status
  outside 200-599 or any framing anomaly is a `ProtocolError`, and a connection is reused only
  after exactly one complete answer with not one byte after it.
- Memory is bounded: the head (with interim answers) by `_MAX_HEAD_BYTES` and `_MAX_HEADERS`,
  a body read whole by `max_body_bytes`, a streamed body by the flow control below.
- Flow control: reading from the upstream pauses while more than 256 KiB wait for the client.

Errors (`UpstreamError` and subclasses) are mapped to client-facing ones in `upstream`.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httptools

_HIGH_WATER = 256 * 1024
_MAX_HEAD_BYTES = 256 * 1024
"""Most bytes a response head may take, interim responses before it included."""
_MAX_HEADERS = 256
_REASON_BYTES = b"\t" + bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))


class UpstreamError(Exception):
    """The upstream could not be reached or broke the exchange."""


class ConnectError(UpstreamError):
    """No connection could be opened."""


class UpstreamTimeout(UpstreamError, TimeoutError):
    """The upstream was silent for longer than allowed."""


class Disconnected(UpstreamError):
    """The upstream closed the connection before its answer was complete."""


class ProtocolError(UpstreamError):
    """The upstream's bytes are not an HTTP/1.1 answer the gateway can relay."""


class TooLarge(UpstreamError):
    """The upstream's body is larger than the caller accepts."""


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


class _Trailing(Exception):
    """Raised inside the parser when a second message begins after the final one."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection; carries one exchange at a time, each with a parser of its own.

    The exchange is exact: interim (1xx) responses are read and dropped, the final response is
    the one answer to the one request sent, and anything the peer sends after it (a byte, a
    second response, bytes while the connection sits idle) or any parser anomaly means the
    connection is closed, never reused: a stray answer must not reach the next request.
    """

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.used = False
        self.holds_slot = True
        """Counted among the pool's open connections until it closes."""
        self._parser: httptools.HttpResponseParser | None = None
        self._response: Response | None = None
        self._head: asyncio.Future[None] | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._interim = False
        self._complete = False
        self._received = False
        self._until_eof = True
        self._keep_alive = False
        self._paused = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport

    def data_received(self, data: bytes) -> None:
        self._received = True
        parser = self._parser
        if parser is None or self._complete:
            # unsolicited: while idle, or after the answer was complete
            self._close()
            return
        waiting_for_head = self._head is not None
        try:
            parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._parser = None  # a parser that failed is never fed again
            if not self._complete:
                cause = exc.__context__
                self._fail(
                    cause
                    if isinstance(cause, ProtocolError)
                    else ProtocolError(f"invalid HTTP from upstream: {type(exc).__name__} {exc}")
                )
            self._close()  # a second message, or bytes that are not HTTP, after the answer
            return
        if waiting_for_head and self._head is not None:
            self._head_bytes += len(data)
            if self._head_bytes > _MAX_HEAD_BYTES:
                self._fail(ProtocolError("the upstream's response head is too large"))
                self._close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        response = self._response
        if response is not None and not response._done:
            if self._head is None and self._until_eof:
                response._finish()  # a body delimited by the end of the connection
            else:
                self._fail(Disconnected("the upstream closed the connection mid-answer"))
        elif self._head is not None:
            self._fail(Disconnected("the upstream closed the connection before answering"))
        self.pool.discard(self)

    # httptools callbacks (the parser exists only during an exchange)

    def on_message_begin(self) -> None:
        if self._complete:
            raise _Trailing
        self._headers = []

    def on_status(self, reason: bytes) -> None:
        # RFC 9112 §4: HTAB, SP, visible characters and obs-text; llhttp lets controls pass
        if reason.translate(None, _REASON_BYTES):
            raise ProtocolError("the upstream's status line holds control characters")

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self._headers
        headers.append((name, value.rstrip(b" \t")))  # llhttp keeps trailing whitespace
        if len(headers) > _MAX_HEADERS:
            raise ProtocolError(f"the upstream sent more than {_MAX_HEADERS} headers")

    def on_headers_complete(self) -> None:
        parser, response = self._parser, self._response
        if parser is None or response is None:  # never: the parser lives with the exchange
            return
        status = parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self._interim = True  # 100 Continue, 103 Early Hints...: the answer is still to come
            return
        if not 200 <= status <= 599:
            raise ProtocolError(f"the upstream answered with status {status}, not a final one")
        response.status = status
        response.raw_headers, self._headers = self._headers, []  # trailers are not headers
        self._until_eof = not any(
            name.lower() in (b"content-length", b"transfer-encoding")
            for name, _ in response.raw_headers
        )
        # httptools answers this only while the message is being parsed, not after it
        self._keep_alive = parser.should_keep_alive()
        head, self._head = self._head, None
        if head is not None and not head.done():
            head.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self._response is not None:
            self._response._feed(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self._complete = True
        if self._response is not None:
            self._response._finish()

    # used by the pool and the response

    def begin(self, request: bytes) -> tuple[Response, asyncio.Future[None]]:
        """Send a request; returns its response and the future of its head."""
        self._response = response = Response(self)
        self._head = head = self.loop.create_future()
        self._parser = httptools.HttpResponseParser(self)
        self._headers = []
        self._head_bytes = 0
        self._interim = False
        self._complete = False
        self._received = False
        self._until_eof = True
        self._keep_alive = False
        self.used = True
        if self.transport is None or self.closed:
            self._fail(Disconnected("the connection closed before the request was sent"))
        else:
            self.transport.write(request)
        return response, head

    @property
    def answered_nothing(self) -> bool:
        """The peer closed without sending a byte of this exchange's answer."""
        return self.closed and not self._received

    async def wait(self, future: asyncio.Future[None]) -> None:
        """Wait for the peer, at most `read_timeout` seconds."""
        timer = self.loop.call_later(self.pool.read_timeout, _expire, future)
        try:
            await future
        finally:
            timer.cancel()

    def pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    def finish(self, reusable: bool) -> None:
        """The exchange is over; keep the connection for the next one only if exactly one
        complete answer was read and nothing came after it."""
        if self._response is None:
            return
        keep = (
            reusable
            and self._complete
            and self._parser is not None
            and not self.closed
            and self._keep_alive
        )
        self._response = None
        self._head = None
        self._parser = None
        self._headers = []
        self.resume()
        if keep:
            self.pool.put_back(self)
        else:
            self._close()

    def _fail(self, error: UpstreamError) -> None:
        head, self._head = self._head, None
        if head is not None and not head.done():
            head.set_exception(error)
        if self._response is not None:
            self._response._finish(error)

    def _close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        self.pool.discard(self)


def _expire(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_exception(UpstreamTimeout("the upstream was silent for too long"))


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
