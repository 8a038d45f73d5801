"""One keep-alive connection to an upstream and its exact exchange, parsed by httptools.

- `read_timeout` bounds every wait for the peer: the response head and each body chunk.
- The exchange is exact (see `_Connection`): 1xx interim answers are dropped, a final status
  outside 200-599 or any framing anomaly is a `ProtocolError`, and a connection is reused only
  after exactly one complete answer with not one byte after it.
- Memory is bounded: the head (with interim answers) by `_MAX_HEAD_BYTES` and `_MAX_HEADERS`
  (the body's bounds are `response.py`'s).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import httptools

from .errors import Disconnected, ProtocolError, UpstreamError, UpstreamTimeout
from .response import Response

if TYPE_CHECKING:
    from .http1 import Pool

_MAX_HEAD_BYTES = 256 * 1024
"""Most bytes a response head may take, interim responses before it included."""
_MAX_HEADERS = 256
_REASON_BYTES = b"\t" + bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))


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
