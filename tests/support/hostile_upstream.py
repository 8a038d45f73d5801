"""Hostile upstreams: a raw asyncio HTTP/1.1 server whose answers break the rules on purpose.

It runs on its own event loop in a thread of the test process, so a test can read what it
received. Each request is answered by the script named by the request body's `model` (the
gateway forwards it as the client sent it); every answer names the request's `input`, so a
test can tell whose answer a client got. Written byte by byte: no HTTP library between the
script and the socket.

Scripts (the `model`):
- `interim`: `100 Continue`, a pause, then the answer.
- `hints`: two `103 Early Hints` (one in the same write as the answer's head, one before).
- `double`: the answer and a second, stray answer in one write.
- `late`: the answer, then an unsolicited `100 Continue` a moment later.
- `status-NNN`: a final answer with status NNN.
- `endless`: a chunked JSON body that never ends (until the gateway closes the connection).
- `bomb`: a small gzip body that inflates to 256 MiB.
- `gzip`: the plain answer, gzip-compressed (as two gzip members).
- `long-line`: a stream whose one line grows without end.
- anything else: the plain answer.

Whatever the script, a request carrying `Expect: 100-continue` gets `100 Continue` first, as
from uvicorn (vLLM, FastAPI) and aiohttp.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
import time
import zlib
from typing import Any

from tests.support.procs import free_port

_SLOW = 0.2
"""How long a slow answer takes: long enough for other users' requests to queue behind it."""


def answer_body(marker: str) -> bytes:
    """The JSON Response that answers the request whose input was `marker`."""
    return json.dumps(
        {
            "id": f"resp_{marker}",
            "object": "response",
            "status": "completed",
            "output": [{"type": "message", "content": [{"type": "output_text", "text": marker}]}],
            "usage": {"input_tokens": 1, "output_tokens": 2, "total_tokens": 3},
        }
    ).encode()


def answer(marker: str, status: int = 200, extra: bytes = b"") -> bytes:
    """A complete keep-alive answer with a Content-Length."""
    body = answer_body(marker)
    return (
        f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n".encode()
        + extra
        + b"\r\n"
        + body
    )


def _gzip_bomb() -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b"\0" * (1024 * 1024)
    parts = [compressor.compress(block) for _ in range(256)]
    parts.append(compressor.flush())
    return b"".join(parts)


class HostileUpstream:
    """The server, started on a free port; `requests` holds every request's head and body."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[dict[str, Any]] = []
        self.connections = 0
        self.closed_by_peer: list[str] = []
        """The scripts whose endless answers the gateway cut by closing the connection."""
        self._bomb = _gzip_bomb()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def start(self) -> HostileUpstream:
        self._thread.start()
        if not self._ready.wait(5):
            raise RuntimeError("the hostile upstream did not start")
        return self

    def stop(self) -> None:
        assert self._loop is not None
        assert self._stopping is not None
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(10)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self._ready.set()
        async with server:
            await self._stopping.wait()
            server.close()
        # asyncio.run then cancels the connections still being served

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                headers = _headers(head)
                request = {"head": head, "headers": headers}
                self.requests.append(request)
                if headers.get("expect", "").lower() == "100-continue":
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # as uvicorn does
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                request["body"] = body
                fields = json.loads(body)
                if not await self._answer(str(fields["model"]), str(fields["input"]), writer):
                    return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the gateway closed the connection, or the server is stopping
        finally:
            writer.close()

    async def _answer(self, script: str, marker: str, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection is done."""
        if script == "interim":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(_SLOW)
            writer.write(answer(marker))
        elif script == "hints":
            writer.write(b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(_SLOW)
            writer.write(b"HTTP/1.1 103 Early Hints\r\nlink: </b.js>\r\n\r\n" + answer(marker))
        elif script == "double":
            await asyncio.sleep(_SLOW)
            writer.write(answer(marker) + answer("stray-" + marker))
        elif script == "late":
            writer.write(answer(marker))
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        elif script.startswith("status-"):
            writer.write(answer(marker, status=int(script.removeprefix("status-"))))
        elif script == "endless":
            return await self._endless(
                writer,
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                b"transfer-encoding: chunked\r\n\r\n",
                b"[" + b"0," * 32767,
                script,
            )
        elif script == "long-line":
            return await self._endless(
                writer,
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"transfer-encoding: chunked\r\n\r\n",
                b"data: " + b"x" * 65530,
                script,
                repeat=b"x" * 65536,
            )
        elif script == "gzip":
            body = answer_body(marker)
            packed = gzip.compress(body[:10]) + gzip.compress(body[10:])
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\n"
                + f"content-length: {len(packed)}\r\n\r\n".encode()
                + packed
            )
        elif script == "bomb":
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\n"
                + f"content-length: {len(self._bomb)}\r\n\r\n".encode()
                + self._bomb
            )
        else:
            writer.write(answer(marker))
        await writer.drain()
        return True

    async def _endless(
        self,
        writer: asyncio.StreamWriter,
        head: bytes,
        first: bytes,
        script: str,
        repeat: bytes | None = None,
        total: int = 512 * 1024 * 1024,
    ) -> bool:
        """Send `head`, then chunks of `first` (then `repeat`) until `total` bytes or the peer
        closes; the connection is not reused."""
        writer.write(head)
        sent = 0
        chunk = first
        deadline = time.monotonic() + 60
        try:
            while sent < total and time.monotonic() < deadline:
                writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                sent += len(chunk)
                await writer.drain()
                chunk = repeat or chunk
        except ConnectionError:
            self.closed_by_peer.append(script)
        return False


def _headers(head: bytes) -> dict[str, str]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    pairs = (line.split(":", 1) for line in lines if ":" in line)
    return {name.strip().lower(): value.strip() for name, value in pairs}
