"""Graceful shutdown: SIGTERM to a gateway with two workers while 20 streams are open.

All 20 finish intact, nothing new is taken (new connections are refused at once, so that a
load balancer still sending here fails over), every stream's usage reaches the ledger, and the
process exits by itself well before its grace period. A stream longer than the grace period is
cut, and recorded as interrupted.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from typing import Any

import httpx

from tests.support.admin import create_key, mock_config
from tests.support.gateway import GatewayFactory, log_lines
from tests.support.ledger import ledger_lines
from tests.support.procs import ServerProcess
from tests.support.redis_server import RedisServer

REPLY = " ".join(f"w{i}" for i in range(40))
"""Streamed at 12 tokens/s: ~3.5 s per stream, long enough to SIGTERM in the middle."""


def _gateway(
    gateway_factory: GatewayFactory, redis_server: RedisServer, mock: ServerProcess, drain: float
) -> ServerProcess:
    config: dict[str, Any] = mock_config(redis_server.url, mock.url, "fail_closed", 1.0)
    config["server"] = {"workers": 2, "drain_seconds": drain}
    config["limits"] = {"tiers": {"default": {}}}
    return gateway_factory(config)


def _records(redis_server: RedisServer, user: str) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in ledger_lines(redis_server.client())]
    return [r for r in records if r.get("user") == user]


async def _open_streams(
    url: str, key: str, count: int, started: asyncio.Event
) -> list[bytes | BaseException]:
    """`count` streams, each its body or what cut it; `started` is set once every one has
    its first event."""
    headers = {
        "authorization": f"Bearer {key}",
        "x-mock-tokens-per-second": "12",
        "x-mock-reply": REPLY,
    }
    body = {"model": "mock-gpt", "input": "tell me", "stream": True}
    first = 0

    async with httpx.AsyncClient(timeout=60) as client:

        async def one() -> bytes:
            nonlocal first
            received = b""
            async with client.stream(
                "POST", f"{url}/v1/responses", json=body, headers=headers
            ) as r:
                assert r.status_code == 200
                async for chunk in r.aiter_raw():
                    if not received:
                        first += 1
                        if first == count:
                            started.set()
                    received += chunk
            return received

        return await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)


def _deltas(stream: str) -> list[str]:
    events = [json.loads(line[6:]) for line in stream.split("\n") if line.startswith("data: {")]
    return [e["delta"] for e in events if e["type"] == "response.output_text.delta"]


def _refused(url: str, timeout: float = 5.0) -> bool:
    """Wait (up to `timeout`) for the gateway to refuse new connections: its workers stop
    listening within 0.1 s of the signal, its supervisor within 0.5 s. Meanwhile a probe may be
    answered, or reset: a connection that reached the backlog as the last listener closed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/readyz", timeout=2)
        except httpx.ConnectError:
            return True
        except (httpx.ReadError, httpx.RemoteProtocolError):
            pass  # reset without an answer while the sockets close: not refused yet, look again
        time.sleep(0.05)
    return False


def test_sigterm_lets_twenty_open_streams_finish_then_exits(
    gateway_factory: GatewayFactory,
    redis_server: RedisServer,
    mock_upstream: ServerProcess,
    secrets_seen: list[str],
) -> None:
    """After SIGTERM 20 open streams finish whole and are recorded, new ones are refused, exit 0."""
    gateway = _gateway(gateway_factory, redis_server, mock_upstream, drain=30)
    user = f"drain-{uuid.uuid4().hex[:8]}"
    _, key = create_key(gateway.url, secrets_seen, user=user)
    assert gateway.proc is not None
    checks: dict[str, Any] = {}

    async def scenario() -> list[bytes | BaseException]:
        started = asyncio.Event()
        streams = asyncio.create_task(_open_streams(gateway.url, key, 20, started))
        await asyncio.wait_for(started.wait(), 10)
        assert gateway.proc is not None
        checks["signalled"] = time.monotonic()
        gateway.proc.send_signal(signal.SIGTERM)
        checks["refused"] = await asyncio.to_thread(_refused, gateway.url)
        try:
            refused = await asyncio.to_thread(
                httpx.post,
                f"{gateway.url}/v1/responses",
                json={"model": "mock-gpt", "input": "new"},
                headers={"authorization": f"Bearer {key}"},
                timeout=5,
            )
            checks["new_request"] = refused.status_code
        except httpx.TransportError as exc:
            checks["new_request"] = type(exc).__name__
        checks["running_meanwhile"] = not streams.done()
        return await streams

    bodies = asyncio.run(scenario())
    exit_code = gateway.proc.wait(timeout=30)
    took = time.monotonic() - checks["signalled"]

    assert checks["running_meanwhile"]  # the streams were in flight when the checks ran
    assert checks["refused"]
    assert checks["new_request"] == "ConnectError", checks
    for body in bodies:
        assert isinstance(body, bytes), body
        text = body.decode()
        assert text.endswith("\n\n")
        assert "event: response.completed" in text
        assert "".join(_deltas(text)) == REPLY
    assert exit_code == 0
    assert took < 30  # well inside the grace period: it exits once the streams are done
    records = _records(redis_server, user)
    assert len(records) == 20
    assert all(r["end"] == "completed" and r["stream"] for r in records)
    assert all(r["output_tokens"] > 0 for r in records)
    events = [line["event"] for line in log_lines(gateway)]
    assert events.count("draining") == 2  # one per worker
    done = [line for line in log_lines(gateway) if line["event"] == "shutdown_complete"]
    assert len(done) == 2
    assert all(line["ledger_unwritten"] == 0 and line["ledger_dropped"] == 0 for line in done)
    assert sum(line["ledger_written"] for line in done) >= 20


def test_a_stream_longer_than_the_grace_is_cut_and_recorded(
    gateway_factory: GatewayFactory,
    redis_server: RedisServer,
    mock_upstream: ServerProcess,
    secrets_seen: list[str],
) -> None:
    """Streams outliving `drain_seconds` are cut visibly and recorded as interrupted, charged."""
    drain = 1.0
    gateway = _gateway(gateway_factory, redis_server, mock_upstream, drain=drain)
    user = f"cut-{uuid.uuid4().hex[:8]}"
    _, key = create_key(gateway.url, secrets_seen, user=user)
    assert gateway.proc is not None

    async def scenario() -> list[bytes | BaseException]:
        started = asyncio.Event()
        streams = asyncio.create_task(_open_streams(gateway.url, key, 2, started))
        await asyncio.wait_for(started.wait(), 10)
        assert gateway.proc is not None
        gateway.proc.send_signal(signal.SIGTERM)
        return await streams

    signalled = time.monotonic()
    ends = asyncio.run(scenario())
    assert all(isinstance(end, httpx.TransportError) for end in ends), ends  # cut, visibly
    assert gateway.proc.wait(timeout=30) == 0
    assert time.monotonic() - signalled < drain + 10
    records = _records(redis_server, user)
    assert len(records) == 2
    assert [r["end"] for r in records] == ["interrupted", "interrupted"]
    assert all(r["output_tokens"] > 0 for r in records)  # what was streamed is charged
