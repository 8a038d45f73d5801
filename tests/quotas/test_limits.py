"""Quotas through real gateway processes sharing one real redis-server.

Exactness across replicas, token reservations and their settlement (refunds, disconnects, a
request that crosses its limit mid-stream), concurrency slots on every path, the 429 answers
and the x-ratelimit-* headers.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import httpx
import pytest

from gateway.mock import STEERING_HEADERS as MOCK_STEERING
from gateway.state import RedisKeys
from tests.support.admin import admin_client, create_key
from tests.support.gateway import GatewayFactory, eventually
from tests.support.procs import ServerProcess
from tests.support.redis_server import RedisServer
from tests.support.scripted_upstream import STEERING_HEADERS as SCRIPTED_STEERING
from tests.support.streams import edge_case_streams

LONG_REPLY = " ".join(f"word{i}" for i in range(150))
TIERS: dict[str, Any] = {
    "default": {},
    "rpm100": {"requests_per_minute": 100},
    "rpm3": {"requests_per_minute": 3},
    "tpm": {"tokens_per_minute": 1000},
    "tpm60": {"tokens_per_minute": 60},
    "conc2": {"concurrent_requests": 2},
    "daily": {"tokens_per_day": 50},
    "modeled": {"requests_per_minute": 100, "models": {"other": {"requests_per_minute": 2}}},
}


def _config(
    redis_url: str, scripted: str, mock: str, lease: float = 60, timeout: float = 0.5
) -> dict[str, Any]:
    return {
        "providers": {
            "scripted": {
                "base_url": scripted + "/v1",
                "api_key": "${PROVIDER_KEY}",
                "forward_headers": list(SCRIPTED_STEERING),
            },
            "mock": {
                "base_url": mock + "/v1",
                "api_key": "${PROVIDER_KEY}",
                "forward_headers": list(MOCK_STEERING),
            },
            "nowhere": {"base_url": "http://127.0.0.1:9/v1", "api_key": "k"},
        },
        "models": [
            {"name": "scripted", "provider": "scripted"},
            {"name": "other", "provider": "scripted"},
            {"name": "mock-gpt", "provider": "mock"},
            {"name": "nowhere", "provider": "nowhere"},
        ],
        "redis": {"url": redis_url, "timeout": timeout},
        "auth": {"admin_key": "${ADMIN_KEY}"},
        "limits": {"tiers": TIERS, "default_output_tokens": 10, "concurrency_lease": lease},
    }


@pytest.fixture(scope="module")
def config(
    redis_server: RedisServer, scripted_upstream: ServerProcess, mock_upstream: ServerProcess
) -> dict[str, Any]:
    return _config(redis_server.url, scripted_upstream.url, mock_upstream.url)


@pytest.fixture
def transcript_file(tmp_path: Path) -> str:
    """A complete stream for the scripted upstream to replay."""
    path = tmp_path / "stream.sse"
    path.write_bytes(edge_case_streams()["lf_multibyte"])
    return str(path)


@pytest.fixture(scope="module")
def limited(gateway_factory: GatewayFactory, config: dict[str, Any]) -> ServerProcess:
    return gateway_factory(config)


@pytest.fixture(scope="module")
def four_replicas(
    gateway_factory: GatewayFactory,
    redis_server: RedisServer,
    scripted_upstream: ServerProcess,
    mock_upstream: ServerProcess,
) -> list[ServerProcess]:
    """Four replicas on a 2-core machine that also runs the client, Redis and the upstream:
    during a burst of 1,000 requests their event loops lag by more than the default Redis
    timeout, so these give Redis 5 s (the failure policy is tested in test_redis_failure)."""
    config = _config(redis_server.url, scripted_upstream.url, mock_upstream.url, timeout=5)
    return [gateway_factory(config) for _ in range(4)]


class Counters:
    """What Redis holds for one user's scope."""

    def __init__(self, redis_server: RedisServer, user: str, scope: str = "user") -> None:
        self._client = redis_server.client()
        self.req, self.tok, self.amt, self.day, self.conc = RedisKeys().scope(user, scope)

    def tokens(self) -> int:
        return int(self._client.hget(self.amt, "_sum") or 0)

    def requests(self) -> int:
        return int(self._client.zcard(self.req))

    def reservations(self) -> dict[int, int]:
        """How many reservations of each amount are in the window."""
        amounts = self._client.hgetall(self.amt)
        found: dict[int, int] = {}
        for member, amount in amounts.items():
            if member != "_sum":
                found[int(amount)] = found.get(int(amount), 0) + 1
        return found

    def slots(self) -> int:
        return int(self._client.zcard(self.conc))

    def day_used(self) -> int:
        return int(self._client.hget(self.day, "used") or 0)

    def snapshot(self) -> tuple[int, int, int, int]:
        return self.requests(), self.tokens(), self.slots(), self.day_used()


def _user(secrets_seen: list[str], url: str, tier: str, **fields: Any) -> tuple[str, str]:
    """A fresh user with a key in `tier`; returns (user, key)."""
    user = f"{tier}-{uuid.uuid4().hex[:8]}"
    _, key = create_key(url, secrets_seen, user=user, tier=tier, **fields)
    return user, key


def _post(url: str, key: str, body: dict[str, Any] | None = None, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/responses",
        json=body or {"model": "scripted", "input": "hi"},
        headers={"authorization": f"Bearer {key}"}
        | {name.replace("_", "-"): value for name, value in headers.items()},
        timeout=15,
    )


async def _burst(
    urls: list[str],
    count: int,
    key: str,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> list[tuple[int, dict[str, str], dict[str, Any]]]:
    """`count` requests at once, spread over `urls`; (status, headers, JSON body) each."""
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=60)
    sent = {"authorization": f"Bearer {key}", **(headers or {})}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(i: int) -> tuple[int, dict[str, str], dict[str, Any]]:
            url = f"{urls[i % len(urls)]}/v1/responses"
            async with session.post(url, json=body, headers=sent) as response:
                return response.status, dict(response.headers), await response.json()

        return await asyncio.gather(*(one(i) for i in range(count)))


def test_exactly_the_limit_is_admitted_across_four_replicas(
    four_replicas: list[ServerProcess], secrets_seen: list[str]
) -> None:
    """1,000 concurrent requests over 4 replicas, limit 100/min: exactly 100 pass, every time."""
    urls = [g.url for g in four_replicas]
    for _ in range(3):
        _, key = _user(secrets_seen, urls[0], "rpm100")
        results = asyncio.run(_burst(urls, 1000, key, {"model": "scripted", "input": "hi"}))
        statuses = [status for status, _, _ in results]
        assert statuses.count(200) == 100
        assert statuses.count(429) == 900
        for status, headers, body in results:
            if status == 429:
                assert int(headers["Retry-After"]) >= 1
                assert body["error"]["code"] == "rate_limit_exceeded"
                assert "requests per minute" in body["error"]["message"]


def test_token_burst_never_overbooks_and_settles_to_real_usage(
    limited: ServerProcess, redis_server: RedisServer, secrets_seen: list[str]
) -> None:
    """Reservations never pass the token limit, settle to real usage; a misfit costs nothing."""
    user, key = _user(secrets_seen, limited.url, "tpm")
    counters = Counters(redis_server, user)
    body = {"model": "mock-gpt", "input": "count please", "max_output_tokens": 100}
    seen: list[int] = []

    async def burst_and_watch() -> list[tuple[int, dict[str, str], dict[str, Any]]]:
        async def watch() -> None:
            while True:
                seen.append(counters.tokens())
                await asyncio.sleep(0.002)

        watcher = asyncio.create_task(watch())
        try:
            return await _burst([limited.url], 40, key, body, {"x-mock-ttft-ms": "150"})
        finally:
            watcher.cancel()

    results = asyncio.run(burst_and_watch())
    admitted = [b for status, _, b in results if status == 200]
    rejected = [b for status, _, b in results if status == 429]
    assert admitted
    assert rejected
    assert max(seen) <= 1000  # reservations never exceeded the limit
    assert all(b["error"]["type"] == "tokens" for b in rejected)
    real = sum(b["usage"]["total_tokens"] for b in admitted)
    eventually(lambda: counters.tokens() == real)

    # a request that cannot fit changes nothing
    before = counters.snapshot()
    big = {"model": "mock-gpt", "input": "x", "max_output_tokens": 999}
    refused = _post(limited.url, key, big)
    assert refused.status_code == 429
    assert counters.snapshot() == before


def test_refund_when_the_upstream_fails_before_its_first_byte(
    limited: ServerProcess, redis_server: RedisServer, secrets_seen: list[str]
) -> None:
    """Requests failed before the upstream's first byte (502, 500) get their reservations back."""
    user, key = _user(secrets_seen, limited.url, "tpm")
    counters = Counters(redis_server, user)
    failed = _post(limited.url, key, {"model": "nowhere", "input": "hi"})
    assert failed.status_code == 502
    assert failed.headers["x-ratelimit-limit-tokens"] == "1000"
    errored = _post(limited.url, key, x_script="status=500;body={}")
    assert errored.status_code == 500
    # both were admitted (two reservations in the window), both refunded in full
    eventually(lambda: counters.reservations() == {0: 2})


def test_a_disconnected_client_is_charged_what_was_streamed(
    limited: ServerProcess, redis_server: RedisServer, secrets_seen: list[str]
) -> None:
    """A client leaving mid-stream is charged what was streamed, not its whole reservation."""
    user, key = _user(secrets_seen, limited.url, "tpm")
    counters = Counters(redis_server, user)
    body = {"model": "mock-gpt", "input": "go", "stream": True, "max_output_tokens": 300}
    headers = {
        "authorization": f"Bearer {key}",
        "x-mock-reply": quote(LONG_REPLY),
        "x-mock-tokens-per-second": "200",
    }
    deltas = 0
    with (
        httpx.Client(timeout=15) as client,
        client.stream("POST", f"{limited.url}/v1/responses", json=body, headers=headers) as resp,
    ):
        reserved = 1000 - int(resp.headers["x-ratelimit-remaining-tokens"])
        for line in resp.iter_lines():
            if line.startswith("event: response.output_text.delta"):
                deltas += 1
                if deltas == 20:
                    break
    eventually(lambda: counters.slots() == 0 and counters.tokens() < reserved)
    charged = counters.tokens()
    assert deltas <= charged <= reserved


def test_a_request_crossing_its_limit_mid_stream_is_finished(
    limited: ServerProcess, redis_server: RedisServer, secrets_seen: list[str]
) -> None:
    """Reserved ~12 tokens (no max_output_tokens), used ~150: the stream completes, the limit
    is exceeded afterwards, and the next request waits."""
    user, key = _user(secrets_seen, limited.url, "tpm60")
    counters = Counters(redis_server, user)
    body = {"model": "mock-gpt", "input": "go", "stream": True}
    headers = {"authorization": f"Bearer {key}", "x-mock-reply": quote(LONG_REPLY)}
    with httpx.Client(timeout=15) as client:
        streamed = client.post(f"{limited.url}/v1/responses", json=body, headers=headers)
    assert streamed.status_code == 200
    assert "event: response.completed" in streamed.text
    eventually(lambda: counters.tokens() > 60)
    refused = _post(limited.url, key, {"model": "mock-gpt", "input": "again"})
    assert refused.status_code == 429
    assert refused.json()["error"]["type"] == "tokens"


def test_slots_are_released_on_every_path(
    limited: ServerProcess,
    redis_server: RedisServer,
    secrets_seen: list[str],
    transcript_file: str,
) -> None:
    """Concurrency slots are freed however a request ends; a third beside two held is a 429."""
    user, key = _user(secrets_seen, limited.url, "conc2")
    counters = Counters(redis_server, user)

    def released() -> bool:
        return counters.slots() == 0

    assert _post(limited.url, key).status_code == 200  # success
    eventually(released)
    stream = {"model": "mock-gpt", "input": "hi", "stream": True}
    assert _post(limited.url, key, stream).status_code == 200  # streamed success
    eventually(released)
    assert _post(limited.url, key, {"model": "nowhere", "input": "hi"}).status_code == 502
    eventually(released)
    assert _post(limited.url, key, x_script="status=503;body={}").status_code == 503
    eventually(released)
    with pytest.raises(httpx.RemoteProtocolError):  # the upstream broke off mid-stream
        _post(limited.url, key, x_replay_file=transcript_file, x_replay_abort="1")
    eventually(released)
    with (  # the client leaves mid-stream
        httpx.Client(timeout=15) as client,
        client.stream(
            "POST",
            f"{limited.url}/v1/responses",
            json={"model": "scripted", "input": "hi"},
            headers={"authorization": f"Bearer {key}", "x-script": "trickle"},
        ) as resp,
    ):
        assert counters.slots() == 1
        next(resp.iter_bytes())
    eventually(released)

    async def three_at_once() -> list[int]:
        body = {"model": "scripted", "input": "hi"}
        async with httpx.AsyncClient(timeout=15) as client:
            hold = [
                asyncio.create_task(
                    client.post(
                        f"{limited.url}/v1/responses",
                        json=body,
                        headers={"authorization": f"Bearer {key}", "x-script": "stall"},
                        timeout=1.5,
                    )
                )
                for _ in range(2)
            ]
            await asyncio.sleep(0.5)
            third = await client.post(
                f"{limited.url}/v1/responses",
                json=body,
                headers={"authorization": f"Bearer {key}"},
            )
            for task in hold:
                with pytest.raises(httpx.ReadTimeout):
                    await task
            return [third.status_code]

    assert asyncio.run(three_at_once()) == [429]
    eventually(released)


def test_a_dead_replicas_slots_expire(
    gateway_factory: GatewayFactory,
    redis_server: RedisServer,
    scripted_upstream: ServerProcess,
    mock_upstream: ServerProcess,
    secrets_seen: list[str],
) -> None:
    """A replica killed (SIGKILL) while holding a slot: the slot frees itself with its lease."""
    doomed = gateway_factory(
        _config(redis_server.url, scripted_upstream.url, mock_upstream.url, lease=5)
    )
    survivor = gateway_factory(
        _config(redis_server.url, scripted_upstream.url, mock_upstream.url, lease=5)
    )
    user, key = _user(secrets_seen, doomed.url, "conc2")
    counters = Counters(redis_server, user)

    async def hold_two() -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            tasks = [
                asyncio.create_task(
                    client.post(
                        f"{doomed.url}/v1/responses",
                        json={"model": "scripted", "input": "hi"},
                        headers={"authorization": f"Bearer {key}", "x-script": "hang"},
                    )
                )
                for _ in range(2)
            ]
            await asyncio.sleep(0.5)
            assert counters.slots() == 2
            assert doomed.proc is not None
            os.kill(doomed.proc.pid, signal.SIGKILL)
            for task in tasks:
                with pytest.raises(httpx.HTTPError):
                    await task

    asyncio.run(hold_two())
    assert _post(survivor.url, key).status_code == 429  # the dead replica's slots still count
    eventually(lambda: _post(survivor.url, key).status_code == 200, timeout=10)


def test_every_answer_carries_the_ratelimit_headers(
    limited: ServerProcess, secrets_seen: list[str]
) -> None:
    """Every answer carries the x-ratelimit headers; the refusal adds Retry-After and its ms."""
    _, key = _user(secrets_seen, limited.url, "rpm3", limits={"tokens_per_minute": 5000})
    names = [
        f"x-ratelimit-{what}-{kind}"
        for what in ("limit", "remaining", "reset")
        for kind in ("requests", "tokens")
    ]
    answers = [
        _post(limited.url, key),
        _post(limited.url, key, {"model": "mock-gpt", "input": "hi", "stream": True}),
        _post(limited.url, key, {"model": "nowhere", "input": "hi"}),
    ]
    for answer in answers:
        assert all(name in answer.headers for name in names), answer.headers
    assert [a.headers["x-ratelimit-remaining-requests"] for a in answers] == ["2", "1", "0"]
    assert answers[0].headers["x-ratelimit-limit-tokens"] == "5000"
    refused = _post(limited.url, key)
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["type"] == "requests"
    assert "user rpm3-" in error["message"]
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert 0 < int(refused.headers["retry-after-ms"]) <= 60_000


def test_daily_quota_is_insufficient_quota(limited: ServerProcess, secrets_seen: list[str]) -> None:
    """The daily token limit spent is a 429 insufficient_quota, Retry-After within a day."""
    _, key = _user(secrets_seen, limited.url, "daily")
    body = {"model": "scripted", "input": "hi", "max_output_tokens": 100}
    assert _post(limited.url, key, body).status_code == 200  # reserves 50 (the cap), uses 8
    refused = _post(limited.url, key, body)  # 8 used + 50 reserved > 50
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "insufficient_quota"
    assert "tokens per day" in error["message"]
    assert int(refused.headers["retry-after"]) <= 86400


def test_per_user_override_per_key_and_per_model_limits(
    limited: ServerProcess, redis_server: RedisServer, secrets_seen: list[str]
) -> None:
    """A model's own limit, an admin override for a user and a key's own limit each apply."""
    user, key = _user(secrets_seen, limited.url, "modeled")
    for _ in range(2):
        assert _post(limited.url, key, {"model": "other", "input": "hi"}).status_code == 200
    refused = _post(limited.url, key, {"model": "other", "input": "hi"})
    assert refused.status_code == 429
    assert "model other" in refused.json()["error"]["message"]
    assert _post(limited.url, key).status_code == 200  # other models are not affected
    assert Counters(redis_server, user, "model:other").requests() == 2

    with admin_client(limited.url) as admin:
        put = admin.put(f"/admin/users/{user}/limits", json={"requests_per_minute": 4})
        assert put.status_code == 200, put.text
        assert (
            admin.get(f"/admin/users/{user}/limits").json()["overrides"]["requests_per_minute"] == 4
        )
        assert _post(limited.url, key).headers["x-ratelimit-limit-requests"] == "4"
        assert _post(limited.url, key).status_code == 429  # 4 admitted in this minute already
        assert admin.delete(f"/admin/users/{user}/limits").status_code == 200
    assert _post(limited.url, key).headers["x-ratelimit-limit-requests"] == "100"

    _, limited_key = _user(secrets_seen, limited.url, "default", limits={"requests_per_minute": 1})
    assert _post(limited.url, limited_key).status_code == 200
    refused = _post(limited.url, limited_key)
    assert refused.status_code == 429
    assert "API key" in refused.json()["error"]["message"]
