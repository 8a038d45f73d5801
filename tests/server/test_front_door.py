"""The front door: what a client may send before the app sees it, through a real gateway.

Heads capped in size and lines (431), slow clients cut off (408, or a silent close), a cap on
connections per worker, `Upgrade: h2c` ignored, HTTP/1.0 answered without chunks, and
compressed bodies decoded within the body cap.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import zstandard

from tests.support.gateway import GatewayFactory, eventually, log_lines, upstream_requests
from tests.support.procs import ServerProcess
from tests.support.raw_http import RawConnection, RawResponse
from tests.support.scripted_upstream import STEERING_HEADERS
from tests.support.streams import edge_case_streams

HEADER_TIMEOUT = 1.0
BODY_GRACE = 1.0
BODY_MIN_RATE = 1000
MAX_BODY = 1024 * 1024
BODY = {"model": "scripted", "input": "hi"}


@pytest.fixture(scope="module")
def front(gateway_factory: GatewayFactory, scripted_upstream: ServerProcess) -> ServerProcess:
    """A gateway in front of the scripted upstream, with short timeouts for slow clients."""
    return gateway_factory(
        {
            "providers": {
                "scripted": {
                    "base_url": scripted_upstream.url + "/v1",
                    "api_key": "k",
                    "forward_headers": list(STEERING_HEADERS),  # x-replay-file
                }
            },
            "models": [{"name": "scripted", "provider": "scripted"}],
            "server": {
                "max_body_bytes": MAX_BODY,
                "header_timeout": HEADER_TIMEOUT,
                "body_rate_grace": BODY_GRACE,
                "body_min_rate": BODY_MIN_RATE,
            },
            "auth": {"enabled": False},
        }
    )


@pytest.fixture
def raw(front: ServerProcess) -> Iterator[Callable[[], RawConnection]]:
    """Open raw connections to the `front` gateway; all closed at the end."""
    opened: list[RawConnection] = []

    def connect() -> RawConnection:
        opened.append(RawConnection(front.port))
        return opened[-1]

    yield connect
    for connection in opened:
        connection.close()


def _post_head(headers: bytes = b"", version: bytes = b"1.1") -> bytes:
    return (
        b"POST /v1/responses HTTP/" + version + b"\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\n" + headers
    )


def _received(upstream: ServerProcess, request_id: str) -> dict[str, Any] | None:
    """What the upstream received for the request with this `x-request-id`, if anything."""
    for request in upstream_requests(upstream):
        headers = {k.lower(): v for k, v in request["headers"]}
        if headers.get("x-request-id") == request_id:
            return {"headers": headers, "body": request["body"]}
    return None


def _peak_memory(server: ServerProcess) -> int:
    """The gateway process's peak resident memory so far, in bytes."""
    assert server.proc is not None
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


def _assert_error(response: RawResponse, status: int, code: str) -> None:
    assert response.status == status, response.head
    assert response.headers["content-type"] == "application/json"
    assert response.headers["connection"] == "close"
    assert response.headers["x-request-id"]
    error = json.loads(response.body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["code"] == code


def test_head_over_the_size_limit_is_431(raw: Callable[[], RawConnection]) -> None:
    """A request head over 64 KiB is answered 431 in the OpenAI shape, the connection closed."""
    connection = raw()
    connection.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n")
    _assert_error(connection.read_response(), 431, "request_header_fields_too_large")
    assert connection.wait_closed(5)


def test_head_with_too_many_lines_is_431(raw: Callable[[], RawConnection]) -> None:
    """A head of 101 header lines, though small, is answered 431; 100 lines are served."""
    connection = raw()
    connection.send(b"GET /healthz HTTP/1.1\r\n" + b"a: b\r\n" * 99 + b"Host: x\r\n\r\n")
    assert connection.read_response().status == 200
    connection.send(b"GET /healthz HTTP/1.1\r\n" + b"a: b\r\n" * 100 + b"Host: x\r\n\r\n")
    _assert_error(connection.read_response(), 431, "request_header_fields_too_large")


class _HeaderStreamer(threading.Thread):
    """A client streaming one endless header line, 64 KiB every 2 ms (32 MB/s), 32 MiB at
    most; it notes how much it had sent when the answer came, and goes on sending until the
    server closes."""

    CHUNK = 64 * 1024
    MOST = 32 * 1024 * 1024

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.connection = RawConnection(port)
        self.sent = 0
        self.sent_at_answer: int | None = None
        self.started_streaming = threading.Event()

    def run(self) -> None:
        self.connection.send(_post_head(b"X-Huge: "))
        chunk = b"a" * self.CHUNK
        while self.sent < self.MOST and self.connection.send(chunk):
            self.sent += len(chunk)
            if self.sent >= 4 * self.CHUNK:
                self.started_streaming.set()
            answered = self.connection.readable(0.002)  # the pace, and the answer if it came
            if answered and self.sent_at_answer is None:
                self.sent_at_answer = self.sent
        self.started_streaming.set()


def test_huge_header_is_cut_off_while_others_are_served(
    front: ServerProcess, raw: Callable[[], RawConnection]
) -> None:
    """While one client streams a header of up to 32 MiB, it gets 431 early on, the gateway
    holds none of it, and other clients' requests complete promptly."""
    before = _peak_memory(front)
    streamer = _HeaderStreamer(front.port)
    streamer.start()
    assert streamer.started_streaming.wait(10)
    took = []
    with httpx.Client(base_url=front.url, timeout=10) as client:
        for _ in range(5):
            started = time.monotonic()
            assert client.post("/v1/responses", json=BODY).status_code == 200
            took.append(time.monotonic() - started)
    streamer.join(30)
    assert max(took) < 1.0, took
    assert streamer.sent_at_answer is not None, f"no answer after {streamer.sent} bytes"
    assert streamer.sent_at_answer <= streamer.MOST // 2  # the head limit plus socket buffers
    _assert_error(streamer.connection.read_response(), 431, "request_header_fields_too_large")
    assert _peak_memory(front) - before < 16 * 1024 * 1024


def test_connection_that_sends_nothing_is_closed(raw: Callable[[], RawConnection]) -> None:
    """A connection that never sends a request is closed after `server.header_timeout`."""
    connection = raw()
    started = time.monotonic()
    assert connection.wait_closed(HEADER_TIMEOUT + 4)
    assert time.monotonic() - started >= HEADER_TIMEOUT * 0.9


def test_trickled_head_is_408(raw: Callable[[], RawConnection]) -> None:
    """A head sent a byte every 50 ms, never idle, gets 408 once `header_timeout` is over."""
    connection = raw()
    head = _post_head(b"X-Padding: " + b"p" * 200)
    started = time.monotonic()
    for byte in head:
        connection.send(bytes([byte]))
        if connection.readable(0.05):
            break
    took = time.monotonic() - started
    _assert_error(connection.read_response(), 408, "request_timeout")
    assert HEADER_TIMEOUT * 0.9 <= took < HEADER_TIMEOUT + 3


def _send_paced(connection: RawConnection, data: bytes, piece: int, interval: float) -> bool:
    """Send `data` `piece` bytes at a time, `interval` apart; False if the server answered
    before the last piece was sent."""
    for position in range(0, len(data), piece):
        if position and connection.readable(interval):
            return False
        connection.send(data[position : position + piece])
    return True


def test_body_is_held_to_the_minimum_rate(
    scripted_upstream: ServerProcess, raw: Callable[[], RawConnection]
) -> None:
    """A body that takes longer than the grace at 4 times `body_min_rate` is served; one at a
    tenth of it gets 408 once the grace is over, and nothing of it reaches the upstream."""
    body = json.dumps({**BODY, "input": "x" * 6000}).encode()
    head = b"Content-Length: %d\r\n\r\n" % len(body)
    steady = raw()
    steady.send(_post_head(head))
    started = time.monotonic()
    assert _send_paced(steady, body, 400, 0.1), "answered before the body was complete"
    assert time.monotonic() - started > BODY_GRACE
    assert steady.read_response().status == 200

    slow = raw()
    slow.send(_post_head(b"X-Request-Id: slow-body\r\n" + head))
    started = time.monotonic()
    assert not _send_paced(slow, body, 10, 0.1), "the whole body was taken at 100 bytes/s"
    took = time.monotonic() - started
    _assert_error(slow.read_response(), 408, "request_timeout")
    assert BODY_GRACE * 0.9 <= took < BODY_GRACE + 3
    assert _received(scripted_upstream, "slow-body") is None


def test_slow_body_after_an_early_answer_is_cut_without_a_second_answer(
    raw: Callable[[], RawConnection],
) -> None:
    """A body still trickling in after the gateway answered without it (415) is cut once the
    grace is over, with no second answer after the first."""
    body = b"x" * 2000
    connection = raw()
    connection.send(
        b"POST /v1/responses HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    assert connection.read_response().status == 415
    started = time.monotonic()
    assert not _send_paced(connection, body, 10, 0.1), "the whole body was taken at 100 bytes/s"
    assert connection.wait_closed(5)
    assert BODY_GRACE * 0.9 <= time.monotonic() - started < BODY_GRACE + 3
    with pytest.raises(ConnectionError):  # nothing came before the close
        connection.read_response()


H2C = (
    b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
    b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"
)
"""What `curl --http2` (and Java's HttpClient) add to a request over http://."""


@pytest.mark.parametrize("framing", ["content-length", "chunked", "body-sent-later"])
def test_h2c_upgrade_is_ignored_and_the_body_arrives(
    scripted_upstream: ServerProcess, raw: Callable[[], RawConnection], framing: str
) -> None:
    """A request asking to upgrade to h2c is served as HTTP/1.1 with its whole body, and the
    connection goes on serving HTTP/1.1."""
    request_id = f"h2c-{framing}"
    body = json.dumps(BODY).encode()
    head = _post_head(H2C + b"X-Request-Id: " + request_id.encode() + b"\r\n")
    connection = raw()
    if framing == "chunked":
        connection.send(
            head + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        )
    else:
        connection.send(head + b"Content-Length: %d\r\n\r\n" % len(body))
        if framing == "body-sent-later":
            assert not connection.readable(0.1)
        connection.send(body)
    response = connection.read_response()
    assert response.status == 200, response.body
    received = _received(scripted_upstream, request_id)
    assert received is not None
    assert received["body"] == body.decode()
    assert "upgrade" not in received["headers"]
    assert "http2-settings" not in received["headers"]
    connection.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert connection.read_response().status == 200


def test_http10_client_gets_no_chunked_answer(
    raw: Callable[[], RawConnection], tmp_path: Path
) -> None:
    """HTTP/1.0 answers are never chunked: a stream's bytes run until the connection closes, a
    short answer keeps its Content-Length."""
    body = json.dumps(BODY).encode()
    short = raw()
    short.send(_post_head(b"Content-Length: %d\r\n\r\n" % len(body), b"1.0") + body)
    response = short.read_response()
    assert response.status == 200
    assert int(response.headers["content-length"]) == len(response.body)
    assert "transfer-encoding" not in response.headers

    stream = edge_case_streams()["lf_multibyte"]
    path = tmp_path / "stream.sse"
    path.write_bytes(stream)
    body = json.dumps({**BODY, "stream": True}).encode()
    replay = b"X-Replay-File: %s\r\nX-Replay-Max-Chunk: 64\r\n" % str(path).encode()
    streamed = raw()
    streamed.send(_post_head(replay + b"Content-Length: %d\r\n\r\n" % len(body), b"1.0") + body)
    response = streamed.read_response()
    assert response.status == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert "transfer-encoding" not in response.headers, response.head
    assert "content-length" not in response.headers
    assert response.headers["connection"] == "close"
    assert streamed.closed_by_server
    assert response.body == stream


def _zstd_frames(data: bytes) -> bytes:
    half = len(data) // 2
    compressor = zstandard.ZstdCompressor()
    return compressor.compress(data[:half]) + compressor.compress(data[half:])


def _zstd_streamed(data: bytes) -> bytes:
    """As a streaming encoder writes it (Codex's): no content size in the frame header."""
    compressor = zstandard.ZstdCompressor().compressobj()
    return compressor.compress(data) + compressor.flush()


ENCODERS: dict[str, tuple[str, Callable[[bytes], bytes]]] = {
    "gzip": ("gzip", gzip.compress),
    "gzip_two_members": ("gzip", lambda d: gzip.compress(d[:100]) + gzip.compress(d[100:])),
    "x-gzip": ("x-gzip", gzip.compress),
    "deflate": ("deflate", zlib.compress),
    "zstd": ("zstd", zstandard.ZstdCompressor().compress),
    "zstd_streamed": ("zstd", _zstd_streamed),
    "zstd_two_frames": ("zstd", _zstd_frames),
    "upper_case": ("GZIP", gzip.compress),
}


@pytest.mark.parametrize("case", ENCODERS)
def test_compressed_body_is_decoded_and_forwarded_decoded(
    front: ServerProcess, scripted_upstream: ServerProcess, case: str
) -> None:
    """A compressed body (300 KB decoded) is decoded before parsing; the upstream receives the
    decoded bytes, without `content-encoding`."""
    encoding, encode = ENCODERS[case]
    body = json.dumps({**BODY, "input": "All work and no play. " * 14_000}).encode()
    request_id = f"encoded-{case}"
    response = httpx.post(
        front.url + "/v1/responses",
        content=encode(body),
        headers={
            "content-type": "application/json",
            "content-encoding": encoding,
            "x-request-id": request_id,
        },
        timeout=10,
    )
    assert response.status_code == 200, response.text
    received = _received(scripted_upstream, request_id)
    assert received is not None
    assert received["body"] == body.decode()
    assert "content-encoding" not in received["headers"]


def _post_encoded(front: ServerProcess, content: bytes, encoding: str) -> httpx.Response:
    return httpx.post(
        front.url + "/v1/responses",
        content=content,
        headers={"content-type": "application/json", "content-encoding": encoding},
        timeout=30,
    )


@pytest.mark.parametrize("encoding", ["br", "compress", "gzip, zstd"])
def test_unknown_content_encoding_is_415(front: ServerProcess, encoding: str) -> None:
    """A Content-Encoding the gateway does not decode (or several at once) is 415."""
    response = _post_encoded(front, json.dumps(BODY).encode(), encoding)
    assert response.status_code == 415, response.text
    assert response.json()["error"]["code"] == "unsupported_media_type"


CORRUPT: dict[str, tuple[str, bytes]] = {
    "gzip_garbage": ("gzip", b"this is not gzip at all"),
    "gzip_cut_short": ("gzip", gzip.compress(json.dumps(BODY).encode())[:-6]),
    "deflate_garbage": ("deflate", b"this is not deflate"),
    "deflate_trailing_bytes": ("deflate", zlib.compress(json.dumps(BODY).encode()) + b"xx"),
    "zstd_garbage": ("zstd", b"this is not zstd either"),
    "zstd_cut_short": ("zstd", _zstd_streamed(json.dumps(BODY).encode())[:-3]),
    "zstd_empty": ("zstd", b""),
}


@pytest.mark.parametrize("case", CORRUPT)
def test_corrupt_compressed_body_is_400(front: ServerProcess, case: str) -> None:
    """A body that is not what its Content-Encoding says, or is cut short, is 400."""
    encoding, content = CORRUPT[case]
    response = _post_encoded(front, content, encoding)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_content_encoding"


def _bomb(encoding: str, size: int) -> bytes:
    """`size` zero bytes compressed, without ever holding them whole."""
    zeros = bytes(1024 * 1024)
    if encoding == "zstd":
        zstd = zstandard.ZstdCompressor().compressobj()
        return b"".join(zstd.compress(zeros) for _ in range(size // len(zeros))) + zstd.flush()
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    deflate = zlib.compressobj(1, zlib.DEFLATED, wbits)
    return b"".join(deflate.compress(zeros) for _ in range(size // len(zeros))) + deflate.flush()


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "zstd"])
def test_body_decoding_past_the_cap_is_413_without_the_memory(
    front: ServerProcess, encoding: str
) -> None:
    """A small body that decodes to 128 MiB is 413 (over `max_body_bytes`, 1 MiB, decoded), and
    the gateway's peak memory grows by far less than that."""
    bomb = _bomb(encoding, 128 * 1024 * 1024)
    assert len(bomb) < MAX_BODY
    before = _peak_memory(front)
    response = _post_encoded(front, bomb, encoding)
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "request_too_large"
    assert _peak_memory(front) - before < 32 * 1024 * 1024


@pytest.fixture(scope="module")
def capped(gateway_factory: GatewayFactory, scripted_upstream: ServerProcess) -> ServerProcess:
    """A gateway that takes 4 connections at most."""
    return gateway_factory(
        {
            "providers": {"scripted": {"base_url": scripted_upstream.url + "/v1", "api_key": "k"}},
            "models": [{"name": "scripted", "provider": "scripted"}],
            "server": {"max_connections": 4},
            "auth": {"enabled": False},
        }
    )


def _events(server: ServerProcess, name: str) -> list[dict[str, Any]]:
    return [line for line in log_lines(server) if line.get("event") == name]


def test_connections_beyond_the_cap_are_closed_and_logged_once(capped: ServerProcess) -> None:
    """With 4 connections open, more are closed at once without an answer; reaching the cap is
    logged once, leaving it once, and a new connection is served after."""
    healthz = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    held = [RawConnection(capped.port) for _ in range(4)]
    try:
        for connection in held:  # each answered: the gateway holds all four
            connection.send(healthz)
            assert connection.read_response().status == 200
        for _ in range(3):
            extra = RawConnection(capped.port)
            extra.send(healthz)
            assert extra.wait_closed(5)
            with pytest.raises(ConnectionError):
                extra.read_response()
            extra.close()
        assert len(_events(capped, "connection_limit_reached")) == 1
        held.pop().close()
        eventually(lambda: len(_events(capped, "connection_limit_cleared")) == 1)
        assert _events(capped, "connection_limit_cleared")[0]["refused"] == 3
        again = RawConnection(capped.port)
        held.append(again)
        again.send(healthz)
        assert again.read_response().status == 200
    finally:
        for connection in held:
            connection.close()
