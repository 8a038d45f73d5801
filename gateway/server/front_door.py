"""The server's side of a client connection: what a client may send before the app sees it.

uvicorn's httptools protocol, with the limits it lacks (httptools has none of its own):

- the request head (request line and headers) at most `max_header_bytes`, counted as the bytes
  arrive and before the parser sees them, so that a huge header is cut off there instead of
  being buffered (llhttp hands a header over in pieces that httptools joins by copying, which
  stalled the event loop for seconds on a 128 MiB header); at most `max_headers` lines: 431;
- the head complete within `header_timeout` of the connection opening (a connection that sends
  nothing is closed), or of its first bytes on a kept-alive connection (408); a body that arrives
  slower than `body_min_rate` on average once `body_rate_grace` has passed: 408. Time during
  which the gateway is not reading the body (flow control) is not held against the client;
- at most `max_connections` connections per worker process: a connection beyond is closed at
  once, before anything is read from it (a load balancer or the client tries elsewhere); the cap
  is logged when reached and when left, not per connection (`refusals.py`);
- an `Upgrade` other than WebSocket (`h2c`, sent by `curl --http2` and Java's HttpClient over
  http://) is ignored and the request served as HTTP/1.1 with its body: llhttp takes the bytes
  after such a head for the new protocol's, so the body is handed to a second parser;
- an answer to HTTP/1.0 without a Content-Length ends when the connection closes (RFC 9112
  §6.3): uvicorn would send it chunked, which an HTTP/1.0 client cannot read;
- a chunked body's trailer fields are dropped: uvicorn would add them to the request's
  headers (an `Expect`, an `openai-beta` the client's proxy never saw as a header).

A rejection is answered in the OpenAI error shape with `Connection: close` (the answer is
`refusals.py`'s); the connection is then half-closed and what the client still sends is read and
dropped for `LINGER_SECONDS`, so that the client reads the answer rather than a reset.
"""

from __future__ import annotations

import asyncio
import contextlib
from asyncio import TimerHandle
from typing import Any

import httptools
import uvicorn
from uvicorn._types import ASGISendEvent
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from ..errors import GatewayError, InvalidRequest, RequestHeaderFieldsTooLarge, RequestTimeout
from ..settings import ServerSettings
from .refusals import FrontDoor

LINGER_SECONDS = 2.0
"""After a rejection, how long what the client still sends is read and dropped."""


class ServerConfig(uvicorn.Config):
    """uvicorn's configuration, serving with `FrontDoorProtocol` under `limits`. Worker
    processes receive it pickled; each makes its own `FrontDoor` when it loads it."""

    def __init__(self, app: Any, limits: ServerSettings, **kwargs: Any) -> None:
        super().__init__(app, http=FrontDoorProtocol, **kwargs)
        self.limits = limits
        self.front_door: FrontDoor | None = None

    def load(self) -> None:
        super().load()
        self.front_door = FrontDoor(self.limits)


class FrontDoorProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits above (see the module's docstring)."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        if not isinstance(config, ServerConfig) or config.front_door is None:
            raise TypeError("FrontDoorProtocol serves a loaded ServerConfig only")
        self.front = config.front_door
        self._max_head = config.limits.max_header_bytes
        self._max_headers = config.limits.max_headers
        self._in_head = True
        """Between requests or inside a head: the bytes that arrive count against the head's."""
        self._head_bytes = 0
        self._body_since = 0.0
        self._body_bytes = 0
        self._deadline: TimerHandle | None = None
        self._upgrade_ignored = False
        """llhttp ended the message at its head, taking the body for another protocol's bytes."""
        self._priming = False
        """The second parser is being told the body's framing: its head is no request."""
        self._lingering = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # uvicorn's own signature
        super().connection_made(transport)
        if self.front.refuse(len(self.connections)):
            transport.abort()
            return
        self._arm(self.front.limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)
        if self.front.at_cap:
            self.front.closed(len(self.connections))

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # a rejected connection: read and dropped
        self._unset_keepalive_if_required()
        while data:
            if self._in_head:
                room = self._max_head - self._head_bytes
                if len(data) > room:
                    piece, data = data[:room], data[room:]
                else:
                    piece, data = data, b""
                self._head_bytes += len(piece)
            else:
                piece, data = data, b""
                self._body_bytes += len(piece)
            try:
                self.parser.feed_data(piece)
            except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
                rest = self._parse_stopped(piece, exc)
                if rest is None:
                    return
                data = rest + data
                continue
            if self._in_head and self._head_bytes >= self._max_head:
                error = RequestHeaderFieldsTooLarge(
                    f"The request head is larger than the {self._max_head} bytes this gateway "
                    "accepts."
                )
                self._reject(error, "header_too_large")
                return
        if self._deadline is None:
            if self._in_head:
                if self._head_bytes:  # a head begun, not complete: it must be within the timeout
                    self._arm(self.front.limits.header_timeout)
            elif self.cycle is not None and self.cycle.more_body:
                self._body_since, self._body_bytes = self.loop.time(), 0
                self._arm(self.front.limits.body_rate_grace)

    def _parse_stopped(self, piece: bytes, exc: Exception) -> bytes | None:
        """The parser stopped inside `piece`: the bytes to parse next, or None once the
        connection is no longer this protocol's to read."""
        if isinstance(exc, httptools.HttpParserUpgrade):
            if self._upgrade_ignored and self._resume_without_upgrade():
                return piece[exc.args[0] :]
            if not self._upgrade_ignored:
                self.handle_websocket_upgrade()  # the only upgrade not ignored
            return None
        if len(self.headers) > self._max_headers:
            error: GatewayError = RequestHeaderFieldsTooLarge(
                f"The request has more than the {self._max_headers} header lines this gateway "
                "accepts."
            )
            self._reject(error, "too_many_headers")
        else:
            self._reject(InvalidRequest("Invalid HTTP request."), "invalid_http")
        return None

    def _resume_without_upgrade(self) -> bool:
        """Go on parsing the request's body (and the requests after it) as HTTP/1.1: a new
        parser, first told the body's framing by a head of its own, which is no request."""
        self._upgrade_ignored = False
        framing = b"content-length: 0\r\n"
        for name, value in self.cycle.scope["headers"]:
            if name == b"content-length":
                framing = b"content-length: " + value + b"\r\n"
            elif name == b"transfer-encoding":
                framing = b"transfer-encoding: " + value + b"\r\n"
                break
        self.parser = httptools.HttpRequestParser(self)
        with contextlib.suppress(AttributeError):  # as uvicorn does (httptools < 0.6.3 lacks it)
            self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
        self._priming = True
        try:
            self.parser.feed_data(b"POST / HTTP/1.1\r\n" + framing + b"\r\n")
        except httptools.HttpParserError:
            self.transport.close()  # a framing llhttp would have refused
            return False
        finally:
            self._priming = False
        return True

    def on_header(self, name: bytes, value: bytes) -> None:
        # After the head, llhttp reports a chunked body's trailer fields (and the primed
        # parser's framing) here too, and uvicorn would append them to the request's headers,
        # the very list the app reads once the body is in: a trailer is never a header.
        if self._in_head:
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._priming:
            return
        # Counted here, not line by line: the byte cap already bounds the parser's work.
        if len(self.headers) > self._max_headers:
            raise _TooManyHeaders
        self._in_head = False
        if self._deadline is not None:
            self._disarm()
        if self.parser.should_upgrade() and not self._should_upgrade():
            self._upgrade_ignored = True
        HttpToolsProtocol.on_headers_complete(self)  # (cheaper than super(): once per request)
        cycle = self.cycle
        if self.scope["http_version"] == "1.0" and cycle is not None and cycle.scope is self.scope:
            cycle.__class__ = _CloseDelimitedCycle

    def on_message_complete(self) -> None:
        if self._upgrade_ignored:
            return  # llhttp's end of the message is its head's: the body is still to come
        self._in_head, self._head_bytes = True, 0
        if self._deadline is not None:
            self._disarm()
        HttpToolsProtocol.on_message_complete(self)

    def _arm(self, seconds: float) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_later(seconds, self._deadline_passed)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _deadline_passed(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        limits = self.front.limits
        if self._in_head:
            if self.cycle is not None and not self.cycle.response_complete:
                self._arm(limits.header_timeout)  # a pipelined head waits for its predecessor
                return
            if not self._head_bytes:
                self.transport.close()  # a connection that never sent a request
            else:
                error = RequestTimeout(
                    f"The request head did not arrive within {limits.header_timeout:g} s."
                )
                self._reject(error, "header_timeout")
            return
        now = self.loop.time()
        if self.flow.read_paused:  # the gateway is not reading: the client is not to blame
            self._body_since, self._body_bytes = now, 0
            self._arm(limits.body_rate_grace)
            return
        # when the average rate since the body's start falls below the floor
        due = self._body_since + max(
            limits.body_rate_grace, self._body_bytes / limits.body_min_rate
        )
        if now < due:
            self._arm(due - now)
            return
        self._reject(
            RequestTimeout(f"The request body arrived slower than {limits.body_min_rate} bytes/s."),
            "body_too_slow",
        )

    def _reject(self, error: GatewayError, reason: str) -> None:
        """Answer `error` and close, reading and dropping what the client still sends."""
        self._disarm()
        cycle = self.cycle  # in a head: the previous request's, still in flight or not
        if cycle is not None and (not self._in_head or not cycle.response_complete):
            if cycle.response_started:  # answered, or being answered: no room for another
                self.transport.close()
                return
            cycle.disconnected = True  # the app's request ends as if its client left
            cycle.message_event.set()
        self.transport.write(self.front.rejected(error, reason, self.server_state.default_headers))
        self._lingering = True
        self.flow.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._deadline = self.loop.call_later(LINGER_SECONDS, self.transport.close)


class _TooManyHeaders(Exception):
    """Raised inside the parser's callback, which turns it into an `HttpParserError`."""


class _CloseDelimitedCycle(RequestResponseCycle):
    """An HTTP/1.0 exchange: a body of unknown length ends when the connection closes (uvicorn
    closes HTTP/1.0 connections after the answer), not chunked."""

    _close_delimited = False

    async def send(self, message: ASGISendEvent) -> None:
        if message["type"] == "http.response.start" and not self.response_started:
            names = {name.lower() for name, _ in message.get("headers", ())}
            if (
                b"content-length" not in names
                and message["status"] not in (204, 304)
                and self.scope["method"] != "HEAD"
            ):
                self.chunked_encoding = False  # uvicorn chooses chunked only while it is None
                self._close_delimited = True
        elif message["type"] == "http.response.body" and self._close_delimited:
            # uvicorn counts each piece against a declared length: declare the piece's own
            self.expected_content_length = len(message.get("body", b""))
        await super().send(message)
