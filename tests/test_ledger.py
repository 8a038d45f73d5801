"""The usage ledger through real gateways and a real redis-server: one record per request
whatever its end, sums that match, writes that count once, and nothing lost while Redis is
down."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import redis

from gateway.ledger import UsageRecord, encode
from gateway.redis_keys import RedisKeys
from tests.conftest import GatewayFactory, eventually
from tests.support.admin import create_key
from tests.support.procs import ServerProcess
from tests.support.redis_server import RedisServer

MEASURES = ("input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens")


def _config(redis_url: str, mock: str, policy: str = "fail_closed") -> dict[str, Any]:
    return {
        "providers": {
            "mock": {"base_url": mock + "/v1", "api_key": "${PROVIDER_KEY}"},
            "nowhere": {"base_url": "http://127.0.0.1:9/v1", "api_key": "k"},
        },
        "models": [
            {"name": "mock-gpt", "provider": "mock"},
            {"name": "nowhere", "provider": "nowhere"},
        ],
        "redis": {"url": redis_url, "on_failure": policy, "breaker_cooldown": 0.5},
        "auth": {"admin_key": "${ADMIN_KEY}"},
        "limits": {"tiers": {"default": {"requests_per_minute": 6}}},
    }


@pytest.fixture(scope="module")
def ledgered(
    gateway_factory: GatewayFactory, redis_server: RedisServer, mock_upstream: ServerProcess
) -> ServerProcess:
    return gateway_factory(_config(redis_server.url, mock_upstream.url))


def _records(client: redis.Redis, user: str) -> list[dict[str, Any]]:
    """The ledger's records of `user` (a client with decoded responses)."""
    entries: Any = client.xrange(RedisKeys().ledger_stream())
    records = [json.loads(fields["r"]) for _, fields in entries]
    return [r for r in records if r.get("user") == user]


def _post(url: str, key: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    sent = {"authorization": f"Bearer {key}", **headers}
    return httpx.post(f"{url}/v1/responses", json=body, headers=sent, timeout=15)


def test_one_record_per_request_whatever_its_end(
    ledgered: ServerProcess, redis_server: RedisServer, secrets_seen: list[str]
) -> None:
    user = f"ledger-{uuid.uuid4().hex[:8]}"
    _, key = create_key(ledgered.url, secrets_seen, user=user)
    usage: dict[str, dict[str, Any]] = {}
    plain = _post(ledgered.url, key, {"model": "mock-gpt", "input": "hi", "user": "end-user-7"})
    usage["completed"] = plain.json()["usage"]
    cut = _post(ledgered.url, key, {"model": "mock-gpt", "input": "hi", "max_output_tokens": 3})
    assert cut.json()["status"] == "incomplete"
    usage["incomplete"] = cut.json()["usage"]
    assert _post(ledgered.url, key, {"model": "nowhere", "input": "hi"}).status_code == 502
    body = {"model": "mock-gpt", "input": "go", "stream": True, "metadata": {"job": "nightly"}}
    headers = {
        "authorization": f"Bearer {key}",
        "x-mock-reply": quote(" ".join(["word"] * 200)),
        "x-mock-tokens-per-second": "100",
    }
    with (
        httpx.Client(timeout=15) as http,
        http.stream("POST", f"{ledgered.url}/v1/responses", json=body, headers=headers) as resp,
    ):
        next(resp.iter_bytes())  # then leave mid-stream
    for _ in range(3):  # 6 per minute: the sixth request is refused
        _post(ledgered.url, key, {"model": "mock-gpt", "input": "hi"})
    client = redis_server.client()
    eventually(lambda: len(_records(client, user)) == 7)
    records = _records(client, user)
    ends = [r["end"] for r in records]
    assert sorted(ends) == sorted(
        ["completed", "incomplete", "error", "client_disconnected", "completed", "completed",
         "rejected"]
    )  # fmt: skip
    first = records[0]
    assert first["request_user"] == "end-user-7"
    assert first["model"] == "mock-gpt"
    assert first["provider"] == "mock"
    assert first["status"] == 200
    assert first["response_id"] == plain.json()["id"]
    assert first["total_tokens"] == usage["completed"]["total_tokens"]
    assert records[1]["output_tokens"] == usage["incomplete"]["output_tokens"] == 3
    disconnected = next(r for r in records if r["end"] == "client_disconnected")
    assert disconnected["stream"] is True
    assert disconnected["metadata"] == {"job": "nightly"}
    rejected = next(r for r in records if r["end"] == "rejected")
    assert rejected["status"] == 429
    assert all(r["latency_ms"] >= 0 and r["key_id"].startswith("k") for r in records)


def test_daily_sums_equal_the_records(
    ledgered: ServerProcess, redis_server: RedisServer, secrets_seen: list[str]
) -> None:
    user = f"sums-{uuid.uuid4().hex[:8]}"
    _, key = create_key(ledgered.url, secrets_seen, user=user)
    for text in ("one", "two words", "three words here"):
        assert _post(ledgered.url, key, {"model": "mock-gpt", "input": text}).status_code == 200
    client = redis_server.client()
    eventually(lambda: len(_records(client, user)) == 3)
    records = _records(client, user)
    day = time.strftime("%Y-%m-%d", time.gmtime(records[0]["time"]))
    sums: dict[str, str] = client.hgetall(RedisKeys().ledger_day(day))  # type: ignore[assignment]
    mine = {k.split("\t")[2]: int(v) for k, v in sums.items() if k.startswith(f"{user}\t")}
    assert mine["requests"] == 3
    for measure in (*MEASURES, "total_tokens"):
        assert mine.get(measure, 0) == sum(r.get(measure, 0) for r in records)
    assert client.ttl(RedisKeys().ledger_day(day)) > 30 * 86_400
    month_key = RedisKeys().ledger_user_month(user, day[:7])
    month: dict[str, str] = client.hgetall(month_key)  # type: ignore[assignment]
    assert {k.split("\t")[2]: int(v) for k, v in month.items()} == mine
    assert {k.split("\t")[:2] == [day, "mock-gpt"] for k in month} == {True}


def test_a_retried_write_counts_once(redis_server: RedisServer) -> None:
    """The append script is idempotent by record id: the stream and the sums change once."""
    client = redis.Redis(host="127.0.0.1", port=redis_server.port, decode_responses=True)
    script = client.register_script(
        (Path(__file__).resolve().parents[1] / "gateway" / "lua" / "ledger_append.lua").read_text()
    )
    record = UsageRecord(
        id=uuid.uuid4().hex, request_id="req-1", time=time.time(), end="completed", status=200,
        stream=False, user=f"once-{uuid.uuid4().hex[:8]}", model="m", total_tokens=42,
    )  # fmt: skip
    keys = RedisKeys().ledger(record.id, record.day(), record.user or "-")
    args: list[Any] = [86_400, 30 * 86_400_000, 31 * 86_400, encode(record), *record.sums()]
    assert [script(keys=keys, args=args) for _ in range(3)] == [1, 0, 0]
    assert len(_records(client, record.user or "")) == 1
    assert client.hget(keys[2], f"{record.user}\tm\ttotal_tokens") == "42"
    assert client.hget(keys[3], f"{record.day()}\tm\ttotal_tokens") == "42"
    assert client.ttl(keys[1]) > 0


@pytest.fixture
def outage_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path, persistent=True).start()
    yield server
    server.stop()


def test_nothing_is_lost_or_doubled_while_redis_is_down(
    gateway_factory: GatewayFactory,
    outage_redis: RedisServer,
    mock_upstream: ServerProcess,
    secrets_seen: list[str],
) -> None:
    """fail_open: requests are served while Redis is down; their records wait in memory and
    arrive once it is back, each exactly once."""
    gateway = gateway_factory(_config(outage_redis.url, mock_upstream.url, "fail_open"))
    user = f"outage-{uuid.uuid4().hex[:8]}"
    _, key = create_key(gateway.url, secrets_seen, user=user)
    assert _post(gateway.url, key, {"model": "mock-gpt", "input": "before"}).status_code == 200
    client = outage_redis.client()
    eventually(lambda: len(_records(client, user)) == 1)
    outage_redis.stop()
    try:
        for i in range(5):
            served = _post(gateway.url, key, {"model": "mock-gpt", "input": f"during {i}"})
            assert served.status_code == 200
        backlog = httpx.get(f"{gateway.url}/readyz", timeout=5).json()["ledger_backlog"]
        assert backlog == 5
    finally:
        outage_redis.start()
    eventually(lambda: len(_records(outage_redis.client(), user)) >= 6, timeout=15)
    time.sleep(1)  # any double write would have landed by now
    records = _records(outage_redis.client(), user)
    assert len(records) == 6
    assert len({r["id"] for r in records}) == 6
