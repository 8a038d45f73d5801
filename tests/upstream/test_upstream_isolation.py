"""Hostile upstreams through a real gateway: every user gets their own answer, and only theirs.

The upstream (tests/support/hostile_upstream.py) sends interim 1xx answers, stray second
answers, statuses no client can be given, endless bodies, a gzip bomb and an endless line.
Each provider has one pooled connection, so every request of a test rides the same
connection as the one before it: an answer left on it would reach the next user.
"""

from __future__ import annotations

import gzip
import json
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.support.gateway import GatewayFactory, request_line
from tests.support.hostile_upstream import HostileUpstream, answer_body
from tests.support.procs import ServerProcess

SCRIPTS = ["interim", "hints", "double", "late", "plain", "endless", "bomb", "gzip", "long-line"]
STATUSES = [101, 600, 999]
CAP = 4 * 1024 * 1024
"""The memory gateway's `max_response_bytes`; its `max_event_bytes` is a quarter of it."""


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileUpstream]:
    """The hostile upstream, in a thread of this process."""
    server = HostileUpstream().start()
    yield server
    server.stop()


def _config(upstream: HostileUpstream, **limits: int) -> dict[str, object]:
    scripts = SCRIPTS + [f"status-{code}" for code in STATUSES]
    return {
        "providers": {
            f"p-{script}": {
                "base_url": upstream.url + "/v1",
                "api_key": "${PROVIDER_KEY}",
                "max_connections": 1,
                "read_timeout": 10,
                **limits,
            }
            for script in scripts
        },
        "models": [{"name": script, "provider": f"p-{script}"} for script in scripts],
        "auth": {"enabled": False},
    }


@pytest.fixture(scope="module")
def gateway(gateway_factory: GatewayFactory, hostile: HostileUpstream) -> ServerProcess:
    """A gateway whose providers are the hostile upstream, one connection each."""
    return gateway_factory(_config(hostile))


@pytest.fixture(scope="module")
def small_gateway(gateway_factory: GatewayFactory, hostile: HostileUpstream) -> ServerProcess:
    """A gateway with small caps on what it holds of an answer, to measure its memory."""
    return gateway_factory(_config(hostile, max_response_bytes=CAP, max_event_bytes=CAP // 4))


def _post(gateway: ServerProcess, model: str, marker: str, **headers: str) -> httpx.Response:
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        return client.post(
            "/v1/responses",
            json={"model": model, "input": marker},
            headers={"x-request-id": f"req-{marker}", **headers},
        )


def _concurrently(gateway: ServerProcess, model: str, users: int = 6) -> list[httpx.Response]:
    """`users` clients at once, each on a connection of its own, each with its own input."""
    with ThreadPoolExecutor(users) as pool:
        futures = [pool.submit(_post, gateway, model, f"{model}-user{n}") for n in range(users)]
        return [future.result() for future in futures]


def _assert_own_answers(responses: list[httpx.Response], model: str) -> None:
    for n, response in enumerate(responses):
        assert response.status_code == 200, response.text
        assert response.content == answer_body(f"{model}-user{n}"), response.content[:300]


@pytest.mark.parametrize("script", ["interim", "hints", "double", "late"])
def test_each_user_gets_exactly_their_own_answer(
    gateway: ServerProcess, hostile: HostileUpstream, script: str
) -> None:
    """With 1xx interim answers, a stray second answer or a late unsolicited 100 on a pooled
    connection and a slow upstream, each of several concurrent users gets their own answer."""
    _assert_own_answers(_concurrently(gateway, script), script)
    line = request_line(gateway, request_id=f"req-{script}-user0")
    assert line["response_id"] == f"resp_{script}-user0"  # usage goes to whoever asked
    assert line["status"] == 200


def test_connection_with_bytes_after_the_answer_is_not_reused(
    gateway: ServerProcess, hostile: HostileUpstream
) -> None:
    """A connection that carried a second answer after the first is closed, not reused: each
    request opens a connection of its own; after clean answers the connection is reused."""
    for script in ("double", "plain"):
        _post(gateway, script, "warm")  # a connection for the provider, if it had none
        before = hostile.connections
        for n in range(3):
            assert _post(gateway, script, f"seq{n}").content == answer_body(f"seq{n}")
        assert hostile.connections - before == (3 if script == "double" else 0), script


def test_expect_from_a_client_is_not_forwarded(
    gateway: ServerProcess, hostile: HostileUpstream
) -> None:
    """A client's `Expect: 100-continue` never reaches the upstream (which would answer 100
    first, as uvicorn does), and concurrent users still get their own answers."""
    with ThreadPoolExecutor(4) as pool:
        futures = [
            pool.submit(_post, gateway, "plain", f"expect{n}", expect="100-continue")
            for n in range(4)
        ]
        responses = [future.result() for future in futures]
    for n, response in enumerate(responses):
        assert response.content == answer_body(f"expect{n}")
    seen = [r for r in hostile.requests if b"expect" in r.get("body", b"")]
    assert len(seen) == 4
    assert all("expect" not in r["headers"] for r in seen)


def test_expect_in_a_chunked_trailer_is_not_forwarded(
    gateway: ServerProcess, hostile: HostileUpstream
) -> None:
    """`Expect` sent as a trailer of a chunked body (uvicorn merges trailers into the headers)
    is not forwarded either, nor is any other trailer field, even one a header of that name
    would be forwarded as."""
    body = json.dumps({"model": "plain", "input": "trailer1"}).encode()
    request = (
        b"POST /v1/responses HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
        b"transfer-encoding: chunked\r\ntrailer: expect\r\nconnection: close\r\n\r\n"
        + f"{len(body):x}\r\n".encode()
        + body
        + b"\r\n0\r\nexpect: 100-continue\r\nopenai-beta: smuggled\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 200 ")
    assert received.endswith(answer_body("trailer1"))
    seen = [r for r in hostile.requests if b"trailer1" in r.get("body", b"")]
    assert len(seen) == 1
    assert "expect" not in seen[0]["headers"]
    assert "openai-beta" not in seen[0]["headers"]


@pytest.mark.parametrize("status", STATUSES)
def test_a_status_no_client_can_be_given_is_a_502(gateway: ServerProcess, status: int) -> None:
    """A final status outside 200-599 (or 101, never asked for) is a 502 in the OpenAI
    shape, and the next request on that provider is answered normally."""
    response = _post(gateway, f"status-{status}", f"st{status}")
    assert response.status_code == 502, response.text
    error = response.json()["error"]
    assert error["type"] == "server_error"
    assert error["code"] == "upstream_unavailable"


def _peak_rss_after(server: ServerProcess, action: object) -> int:
    """How far above its resident size before `action` the process's peak went during it."""
    assert server.proc is not None
    pid = server.proc.pid
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets the peak (VmHWM) to now
    before = _status_kb(pid, "VmRSS")
    action()  # type: ignore[operator]
    return (_status_kb(pid, "VmHWM") - before) * 1024


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def test_an_endless_body_is_a_502_within_bounded_memory(small_gateway: ServerProcess) -> None:
    """A non-streamed body that never ends is a 502 once it passes `max_response_bytes`; the
    gateway's peak memory meanwhile stays within a few times the cap."""
    result: list[httpx.Response] = []
    grown = _peak_rss_after(
        small_gateway, lambda: result.append(_post(small_gateway, "endless", "e1"))
    )
    assert result[0].status_code == 502, result[0].text[:300]
    assert result[0].json()["error"]["code"] == "upstream_response_too_large"
    assert grown < 4 * CAP, f"peak grew by {grown / 2**20:.1f} MiB"


def test_a_gzip_bomb_is_relayed_without_inflating_it(small_gateway: ServerProcess) -> None:
    """A 256 KiB gzip body that inflates to 256 MiB reaches the client as sent; reading its
    usage inflates at most `max_response_bytes`, so the peak stays small, and the request's
    usage is recorded as estimated."""
    raw: list[bytes] = []

    def send() -> None:
        with (
            httpx.Client(base_url=small_gateway.url, timeout=30) as client,
            client.stream(
                "POST",
                "/v1/responses",
                json={"model": "bomb", "input": "b1"},
                headers={"x-request-id": "req-bomb"},
            ) as response,
        ):
            assert response.status_code == 200
            assert response.headers["content-encoding"] == "gzip"
            raw.append(b"".join(response.iter_raw()))

    grown = _peak_rss_after(small_gateway, send)
    assert len(raw[0]) < 1024 * 1024  # the compressed bytes, untouched
    assert grown < 4 * CAP, f"peak grew by {grown / 2**20:.1f} MiB"
    line = request_line(small_gateway, request_id="req-bomb")
    assert line["status"] == 200
    assert line.get("usage_estimated") is True


def test_the_usage_of_a_compressed_answer_is_read(small_gateway: ServerProcess) -> None:
    """A gzip answer within the cap (two gzip members) reaches the client as sent, and its
    usage is the provider's own, not an estimate."""
    with (
        httpx.Client(base_url=small_gateway.url, timeout=30) as client,
        client.stream(
            "POST",
            "/v1/responses",
            json={"model": "gzip", "input": "z1"},
            headers={"x-request-id": "req-z1"},
        ) as response,
    ):
        assert response.status_code == 200
        raw = b"".join(response.iter_raw())
    assert gzip.decompress(raw) == answer_body("z1")  # both members, as the upstream sent them
    line = request_line(small_gateway, request_id="req-z1")
    assert line["response_id"] == "resp_z1"
    assert line["total_tokens"] == 3
    assert "usage_estimated" not in line


def test_an_endless_line_in_a_stream_is_relayed_within_bounded_memory(
    small_gateway: ServerProcess,
) -> None:
    """A stream whose one line never ends reaches the client as sent, while the gateway's
    usage reader holds at most `max_event_bytes` of it: 64 MiB relayed, the peak well
    below that."""
    received = 0

    def read() -> None:
        nonlocal received
        with (
            httpx.Client(base_url=small_gateway.url, timeout=30) as client,
            client.stream(
                "POST", "/v1/responses", json={"model": "long-line", "input": "l1"}
            ) as response,
        ):
            assert response.status_code == 200
            for chunk in response.iter_raw():
                received += len(chunk)
                if received > 64 * 1024 * 1024:
                    break

    grown = _peak_rss_after(small_gateway, read)
    assert received > 64 * 1024 * 1024
    assert grown < 4 * CAP, f"peak grew by {grown / 2**20:.1f} MiB"
