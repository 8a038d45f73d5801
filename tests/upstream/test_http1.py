"""The lean upstream client: keep-alive, stale connections, limits, flow control, framing.

Each scenario runs a raw HTTP server on a loopback socket (asyncio streams, written here byte
by byte so every framing case is exact) and drives `gateway.upstream.http1.Pool` against it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from gateway.upstream.errors import (
    ConnectError,
    Disconnected,
    ProtocolError,
    TooLarge,
    UpstreamTimeout,
)
from gateway.upstream.http1 import Pool
from tests.support.procs import free_port

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + await reader.readexactly(length)


def _run(
    handler: Handler, scenario: Callable[[Pool, list[int]], Awaitable[None]], **options: float
) -> list[int]:
    """Serve `handler` on a free port and run `scenario` with a pool to it; returns how many
    connections the server accepted, one entry per connection."""
    accepted: list[int] = []

    async def main() -> None:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(1)
            try:
                await handler(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        port = free_port()
        server = await asyncio.start_server(serve, "127.0.0.1", port)
        settings = {
            "max_connections": 8,
            "connect_timeout": 2.0,
            "read_timeout": 2.0,
            "idle_timeout": 30.0,
            **options,
        }
        pool = Pool(f"http://127.0.0.1:{port}/v1", **settings)  # type: ignore[arg-type]
        try:
            await scenario(pool, accepted)
        finally:
            pool.close()
            server.close()

    asyncio.run(main())
    return accepted


async def _keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        await _read_request(reader)
        writer.write(OK)
        await writer.drain()


def test_connection_is_reused() -> None:
    """Sequential requests share one keep-alive connection."""

    async def scenario(pool: Pool, _accepted: list[int]) -> None:
        for _ in range(5):
            response = await pool.request(b"/v1/responses", b"", b"{}")
            assert await response.read() == b"{}"
            response.release()

    assert len(_run(_keep_alive, scenario)) == 1


def test_request_bytes_on_the_wire() -> None:
    """The request line, Host, Content-Length, the given headers and the body go out as is."""
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await _read_request(reader))
        writer.write(OK)
        await writer.drain()

    async def scenario(pool: Pool, _accepted: list[int]) -> None:
        response = await pool.request(b"/v1/responses", b"x-a: 1\r\n", b'{"k": 1}')
        await response.read()
        response.release()

    _run(handler, scenario)
    port_part = seen[0].split(b"host: 127.0.0.1:")[1].split(b"\r\n")[0]
    assert seen[0] == (
        b"POST /v1/responses HTTP/1.1\r\nhost: 127.0.0.1:"
        + port_part
        + b'\r\ncontent-length: 8\r\nx-a: 1\r\n\r\n{"k": 1}'
    )


def test_stale_connection_is_retried_once() -> None:
    """A kept connection the server closed without answering is replaced transparently."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(OK)
        await writer.drain()
        # then the next request on this connection is read and dropped without an answer
        await reader.readuntil(b"\r\n\r\n")

    async def scenario(pool: Pool, _accepted: list[int]) -> None:
        for _ in range(2):
            response = await pool.request(b"/v1/responses", b"", b"")
            assert await response.read() == b"{}"
            response.release()

    assert len(_run(handler, scenario)) == 2


def test_fresh_connection_closed_without_answer_is_an_error() -> None:
    """On a new connection, a server closing without answering is `Disconnected`, not retried."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)

    async def scenario(pool: Pool, _accepted: list[int]) -> None:
        with pytest.raises(Disconnected):
            await pool.request(b"/v1/responses", b"", b"")

    assert len(_run(handler, scenario)) == 1


def test_idle_connections_expire() -> None:
    """A connection idle longer than `idle_timeout` is not reused."""

    async def scenario(pool: Pool, _accepted: list[int]) -> None:
        for _ in range(2):
            response = await pool.request(b"/v1/responses", b"", b"")
            await response.read()
            response.release()
            await asyncio.sleep(0.15)

    assert len(_run(_keep_alive, scenario, idle_timeout=0.1)) == 2


def test_max_connections_queue() -> None:
    """Beyond `max_connections`, requests wait for a connection instead of opening more."""

    async def scenario(pool: Pool, accepted: list[int]) -> None:
        async def one() -> None:
            response = await pool.request(b"/v1/responses", b"", b"")
            await response.read()
            response.release()

        await asyncio.gather(*(one() for _ in range(20)))
        assert len(accepted) <= 2

    _run(_keep_alive, scenario, max_connections=2)


def test_streamed_chunks_and_end_of_body() -> None:
    """A chunked body arrives chunk by chunk and ends at its terminating chunk."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        for part in (b"data: 1\n\n", b"data: 2\n\n"):
            writer.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            await writer.drain()
            await asyncio.sleep(0.02)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await reader.read()

    async def scenario(pool: Pool, _accepted: list[int]) -> None:
        response = await pool.request(b"/v1/responses", b"", b"")
        assert response.status == 200
        assert response.header(b"content-type") == b"text/event-stream"
        chunks = [chunk async for chunk in response.iter_chunks()]
        assert chunks == [b"data: 1\n\n", b"data: 2\n\n"]
        response.release()

    _run(handler, scenario)


def test_body_cut_mid_chunk_is_disconnected() -> None:
    """A chunked body the server abandons raises `Disconnected` after what did arrive."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()

    async def scenario(pool: Pool, _accepted: list[int]) -> None:
        response = await pool.request(b"/v1/responses", b"", b"")
        received = []
        with pytest.raises(Disconnected):  # noqa: PT012  (the failure ends the loop)
            async for chunk in response.iter_chunks():
                received.append(chunk)
        assert received == [b"hello"]
        response.close()

    _run(handler, scenario)


def test_body_until_close() -> None:
    """A body with neither length nor chunking ends, complete, when the server closes."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\neverything")
        await writer.drain()

    async def scenario(pool: Pool, _accepted: list[int]) -> None:
        response = await pool.request(b"/v1/responses", b"", b"")
        assert await response.read() == b"everything"
        response.release()

    _run(handler, scenario)


def test_silence_times_out() -> None:
    """No head within `read_timeout` is `UpstreamTimeout`, and so is a silent body."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await reader.read()

    async def no_head(pool: Pool, _accepted: list[int]) -> None:
        with pytest.raises(UpstreamTimeout):
            await pool.request(b"/v1/responses", b"", b"")

    _run(silent, no_head, read_timeout=0.2)

    async def stalls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        await writer.drain()
        await reader.read()

    async def no_body(pool: Pool, _accepted: list[int]) -> None:
        response = await pool.request(b"/v1/responses", b"", b"")
        with pytest.raises(UpstreamTimeout):
            await response.read()
        response.close()

    _run(stalls, no_body, read_timeout=0.2)


def test_invalid_http_is_protocol_error() -> None:
    """Bytes that are not an HTTP response are a `ProtocolError`."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await writer.drain()
        await reader.read()

    async def scenario(pool: Pool, _accepted: list[int]) -> None:
        with pytest.raises(ProtocolError):
            await pool.request(b"/v1/responses", b"", b"")

    _run(handler, scenario)


def test_refused_connection() -> None:
    """A closed port is a `ConnectError`."""

    async def main() -> None:
        pool = Pool(
            f"http://127.0.0.1:{free_port()}/v1",
            max_connections=1,
            connect_timeout=1,
            read_timeout=1,
            idle_timeout=1,
        )
        with pytest.raises(ConnectError):
            await pool.request(b"/v1/responses", b"", b"")

    asyncio.run(main())


def test_slow_reader_pauses_upstream() -> None:
    """While the caller does not read, the client stops reading from the upstream."""
    sent: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 67108864\r\n\r\n")
        block = b"x" * 65536
        for _ in range(1024):  # 64 MiB offered
            writer.write(block)
            sent.append(len(block))
            await asyncio.wait_for(writer.drain(), 0.5)

    async def scenario(pool: Pool, _accepted: list[int]) -> None:
        response = await pool.request(b"/v1/responses", b"", b"")
        chunks = response.iter_chunks()
        await chunks.__anext__()
        await asyncio.sleep(1.0)  # do not read: the server's drain must block and time out
        assert sum(sent) < 16 * 1024 * 1024
        response.close()

    _run(handler, scenario)


def test_bytes_while_idle_close_the_connection() -> None:
    """An unsolicited answer arriving while the connection sits idle closes it: the next
    request opens a fresh connection and gets its own answer, not the stray one."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(OK)
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstray")
        await writer.drain()
        while True:  # a connection that misbehaved once, still answering
            await _read_request(reader)
            writer.write(OK)
            await writer.drain()

    async def scenario(pool: Pool, accepted: list[int]) -> None:
        response = await pool.request(b"/v1/responses", b"", b"")
        assert await response.read() == b"{}"
        response.release()
        await asyncio.sleep(0.2)
        response = await pool.request(b"/v1/responses", b"", b"")
        assert await response.read() == b"{}"
        response.release()
        assert len(accepted) == 2

    _run(handler, scenario)


def test_a_body_over_the_limit_is_too_large() -> None:
    """`read` stops at `max_body_bytes`, whether the length is declared or the body runs on."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5000\r\n\r\n" + b"x" * 5000)
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(10):
            writer.write(b"3e8\r\n" + b"y" * 1000 + b"\r\n")
        await writer.drain()
        await reader.read()

    async def scenario(pool: Pool, _accepted: list[int]) -> None:
        for _ in range(2):
            response = await pool.request(b"/v1/responses", b"", b"")
            with pytest.raises(TooLarge):
                await response.read()
            response.close()

    _run(handler, scenario, max_body_bytes=4096)


def test_an_endless_head_is_a_protocol_error() -> None:
    """A response head (interim answers included) past 256 KiB is a `ProtocolError`."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nx-long: ")
        for _ in range(64):
            writer.write(b"v" * 8192)
            await writer.drain()
        await reader.read()

    async def scenario(pool: Pool, _accepted: list[int]) -> None:
        with pytest.raises(ProtocolError):
            await pool.request(b"/v1/responses", b"", b"")

    _run(handler, scenario)


def test_trailers_are_not_headers() -> None:
    """Trailer fields of a chunked answer are not added to its headers."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n"
            b"0\r\nset-cookie: a=b\r\ncontent-type: text/html\r\n\r\n"
        )
        await writer.drain()
        await reader.read()

    async def scenario(pool: Pool, _accepted: list[int]) -> None:
        response = await pool.request(b"/v1/responses", b"", b"")
        assert await response.read() == b"{}"
        assert response.raw_headers == [(b"transfer-encoding", b"chunked")]
        response.release()

    _run(handler, scenario)
