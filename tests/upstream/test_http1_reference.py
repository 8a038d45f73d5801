"""The upstream client's exchange checked against h11, the reference HTTP/1.1 state machine.

Hypothesis generates what an upstream may send for one request: interim 1xx answers, a final
answer framed by Content-Length, chunks or the end of the connection, bytes after it (a
second answer, an unsolicited 100, garbage, empty lines), broken framing and early closes,
cut into pieces at any points. The same bytes go to `gateway.upstream`'s connection (through a
transport that records nothing but writes) and to an `h11.Connection` in the client role;
the two must agree on the answer, and the connection may go back to the pool only where h11
says the exchange ended cleanly with nothing after it.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

import h11
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.upstream.connection import _Connection
from gateway.upstream.errors import UpstreamError
from gateway.upstream.http1 import Pool
from gateway.upstream.response import Response

REQUEST_BODY = b'{"model":"m","input":"hi"}'
REQUEST = (
    b"POST /v1/responses HTTP/1.1\r\nhost: upstream\r\ncontent-length: "
    + str(len(REQUEST_BODY)).encode()
    + b"\r\n\r\n"
    + REQUEST_BODY
)

_TOKEN = st.text("abcdefghijklmnopqrstuvwxyz-0123456789", min_size=1, max_size=12)
_VALUE = (
    st.text("abcdefghijklmnopqrstuvwxyzABC 0123456789=;,/", min_size=1, max_size=30)
    .map(str.strip)
    .filter(bool)
)
_RESERVED = {"content-length", "transfer-encoding", "connection", "trailer"}
_HEADERS = st.lists(st.tuples(_TOKEN.filter(lambda n: n not in _RESERVED), _VALUE), max_size=4)


def _head(status: int, headers: list[tuple[str, str]], version: str = "1.1") -> bytes:
    lines = [f"HTTP/{version} {status} Reason"] + [f"{n}: {v}" for n, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@st.composite
def _interim(draw: st.DrawFn) -> bytes:
    return _head(draw(st.sampled_from([100, 102, 103])), draw(_HEADERS))


@st.composite
def _final(draw: st.DrawFn) -> bytes:
    # 101, 600 and 999: not a final answer a client can be given
    status = draw(st.sampled_from([200, 201, 204, 400, 404, 429, 500, 503, 599, 101, 600, 999]))
    headers = draw(_HEADERS)
    body = draw(st.binary(max_size=200)) if status != 204 else b""
    framing = draw(st.sampled_from(["length", "chunked", "close"]))
    if draw(st.booleans()):
        headers = [*headers, ("connection", draw(st.sampled_from(["close", "keep-alive"])))]
    if status == 204:
        return _head(status, headers)
    if framing == "length":
        return _head(status, [*headers, ("content-length", str(len(body)))]) + body
    if framing == "close":
        return _head(status, [*headers, ("connection", "close")]) + body
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=4)))
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    chunked = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in pieces if p)
    trailers = draw(st.lists(st.tuples(_TOKEN, _VALUE), max_size=2))
    ending = b"0\r\n" + b"".join(f"{n}: {v}\r\n".encode() for n, v in trailers) + b"\r\n"
    return _head(status, [*headers, ("transfer-encoding", "chunked")]) + chunked + ending


_AFTER = st.sampled_from(
    [
        b"",
        b"",
        b"\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstray",
        b"garbage",
        b"\x00\xff",
    ]
)


def _corrupt(data: bytes, draw: st.DrawFn) -> bytes:
    """Bad framing: a byte replaced, or the stream cut short."""
    at = draw(st.integers(0, len(data) - 1))
    if draw(st.booleans()):
        return data[:at]
    byte = draw(st.sampled_from([b"\n", b"\r", b"z", b" ", b":", b"\x00", b"\x80"]))
    return data[:at] + byte + data[at + 1 :]


@dataclass
class Stream:
    """What the upstream sends for one request."""

    data: bytes
    cuts: list[int]
    close: bool
    """The upstream closes the connection after its last byte."""
    corrupted: bool
    """A byte was replaced or the stream cut: the client may be stricter than h11 here."""

    @property
    def parts(self) -> list[bytes]:
        edges = [0, *sorted(set(self.cuts)), len(self.data)]
        return [self.data[a:b] for a, b in itertools.pairwise(edges) if b > a]


@st.composite
def streams(draw: st.DrawFn) -> Stream:
    data = b"".join(draw(st.lists(_interim(), max_size=3))) + draw(_final()) + draw(_AFTER)
    corrupted = draw(st.integers(0, 3)) == 0
    if corrupted:
        data = _corrupt(data, draw)
    cuts = draw(st.lists(st.integers(0, len(data)), max_size=8))
    return Stream(data, cuts, draw(st.booleans()), corrupted)


@dataclass
class Outcome:
    """One side's view of the exchange."""

    status: int | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    complete: bool = False
    error: bool = False
    reusable: bool = False
    trailing: bytes = b""
    """(h11) Bytes received after the answer."""


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _ours(stream: Stream) -> Outcome:
    async def run() -> Outcome:
        pool = Pool(
            "http://upstream/v1",
            max_connections=1,
            connect_timeout=1,
            read_timeout=5,
            idle_timeout=60,
        )
        conn = _Connection(pool)
        pool._open = 1
        transport = _Transport()
        conn.connection_made(transport)
        response, head = conn.begin(REQUEST)
        for part in stream.parts:
            if transport.closed:
                break  # a closed socket delivers nothing more
            conn.data_received(part)
        if stream.close or transport.closed:
            conn.connection_lost(None)
        outcome = Outcome()
        if not head.done():
            outcome.error = transport.closed
            response.close()
            return outcome
        if head.exception() is not None:
            assert isinstance(head.exception(), UpstreamError)
            outcome.error = True
            return outcome
        outcome.status = response.status
        outcome.headers = [(n.lower(), v) for n, v in response.raw_headers]
        outcome.body, outcome.complete, outcome.error = _drain(response)
        response.release()
        outcome.reusable = conn in pool._idle
        return outcome

    return asyncio.run(run())


def _drain(response: Response) -> tuple[bytes, bool, bool]:
    """The body received so far, whether it is complete, whether it broke (without waiting:
    everything the upstream sent has been fed)."""
    body = b"".join(response._chunks)
    return body, response._done and response._error is None, response._error is not None


def _reference(stream: Stream) -> Outcome:
    conn = h11.Connection(h11.CLIENT)
    conn.send(
        h11.Request(
            method="POST",
            target="/v1/responses",
            headers=[("host", "upstream"), ("content-length", str(len(REQUEST_BODY)))],
        )
    )
    conn.send(h11.Data(data=REQUEST_BODY))
    conn.send(h11.EndOfMessage())
    outcome = Outcome()
    try:
        for part in [*stream.parts, *([b""] if stream.close else [])]:
            conn.receive_data(part)
            while True:
                event = conn.next_event()
                if event in (h11.NEED_DATA, h11.PAUSED):
                    break
                if isinstance(event, h11.Response):
                    outcome.status = event.status_code
                    outcome.headers = [(bytes(n), bytes(v)) for n, v in event.headers]
                elif isinstance(event, h11.Data):
                    outcome.body += bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    outcome.complete = True
                elif isinstance(event, h11.ConnectionClosed):
                    break
    except h11.RemoteProtocolError:
        outcome.error = True
    trailing, closed = conn.trailing_data
    outcome.trailing = bytes(trailing)
    outcome.reusable = (
        outcome.complete
        and not outcome.error
        and conn.our_state is h11.DONE
        and conn.their_state is h11.DONE
        and not closed
        and not stream.close
        and not trailing.strip(b"\r\n")
    )
    return outcome


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams())
def test_the_exchange_agrees_with_h11(stream: Stream) -> None:
    """For any bytes an upstream sends, cut anywhere: a complete answer is h11's answer, a
    final status outside 200-599 is an error, and the connection is reused only where h11
    sees exactly one clean exchange and nothing after it (but empty lines, which carry
    nothing: llhttp skips them between messages). Where the bytes are well formed, the
    client is no stricter than h11; where they are corrupt, it may be (llhttp refuses a bare
    LF that h11 lets pass)."""
    ours, ref = _ours(stream), _reference(stream)
    if ours.complete:
        assert ref.complete, (ours, ref)
        assert (ours.status, ours.headers, ours.body) == (ref.status, ref.headers, ref.body)
        assert 200 <= (ours.status or 0) <= 599
    if ours.reusable:
        assert ref.reusable, (ours, ref)
    if ref.status is not None and not 200 <= ref.status <= 599:
        assert ours.error, (ours, ref)
        assert not ours.complete, (ours, ref)
    elif ref.complete and not ref.error and not stream.corrupted:
        assert ours.complete, (ours, ref)  # not stricter than h11 where h11 is content
        if ref.reusable and not ref.trailing:
            assert ours.reusable, (ours, ref)  # nor closing a connection that is fine
