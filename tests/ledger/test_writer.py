"""The usage ledger through real gateways and a real redis-server: one record per request
whatever its end, sums that match, writes that count once, and nothing lost while Redis is
down."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import msgspec
import pytest
import redis

from gateway.exchange import Exchange
from gateway.ledger import Ledger
from gateway.ledger.record import UsageRecord, encode, progress_of, record_of
from gateway.metrics import Metrics
from gateway.outcome import Outcome, Usage
from gateway.proxy.account import finish
from gateway.settings import LedgerSettings, RedisSettings
from gateway.state import RedisKeys, RedisStore, ScriptBatcher
from tests.support.admin import create_key, keyed_config, mock_config
from tests.support.gateway import GatewayFactory, eventually, log_lines
from tests.support.ledger import append_batch, ledger_lines
from tests.support.procs import ROOT, ServerProcess, free_port
from tests.support.redis_server import RedisServer
from tests.support.streams import expected_usage, recorded_transcripts

pytestmark = pytest.mark.processes  # redis-servers of its own, stopped mid-test

MEASURES = ("input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens")


def _config(redis_url: str, mock: str, policy: str = "fail_closed") -> dict[str, Any]:
    config = mock_config(redis_url, mock, policy, cooldown=0.5)
    config["limits"] = {"tiers": {"default": {"requests_per_minute": 6}}}
    return config


@pytest.fixture(scope="module")
def ledgered(
    gateway_factory: GatewayFactory, redis_server: RedisServer, mock_upstream: ServerProcess
) -> ServerProcess:
    return gateway_factory(_config(redis_server.url, mock_upstream.url))


def _records(client: redis.Redis, user: str) -> list[dict[str, Any]]:
    """The ledger's records of `user` (a client with decoded responses)."""
    records = [json.loads(line) for line in ledger_lines(client)]
    return [r for r in records if r.get("user") == user]


def _post(url: str, key: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    sent = {"authorization": f"Bearer {key}", **headers}
    return httpx.post(f"{url}/v1/responses", json=body, headers=sent, timeout=15)


def test_one_record_per_request_whatever_its_end(
    ledgered: ServerProcess, redis_server: RedisServer, secrets_seen: list[str]
) -> None:
    """Every request leaves one record, however it ended, and that record is its log line."""
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
    # a record id never reads like a request id (the client's, or one the gateway gave)
    assert all(r["id"].startswith("rec_") and r["request_id"] != r["id"] for r in records)
    # Each record is its request's log line, byte for byte after structlog's own three fields:
    # one JSON object, encoded once for both.
    output = ledgered.output().split("\n")
    mine = [raw for raw in ledger_lines(client) if json.loads(raw).get("user") == user]
    assert len(mine) == 7
    for raw in mine:
        [line] = [text for text in output if f'"id":"{json.loads(raw)["id"]}"' in text]
        assert line.startswith('{"event":"request",')
        assert line.endswith("," + raw[1:])
        assert list(json.loads(line))[3:] == list(json.loads(raw))  # no key twice


def test_daily_sums_equal_the_records(
    ledgered: ServerProcess, redis_server: RedisServer, secrets_seen: list[str]
) -> None:
    """A user's daily sums equal its records; month sums and the day's user set outlive 30 days."""
    user = f"sums-{uuid.uuid4().hex[:8]}"
    _, key = create_key(ledgered.url, secrets_seen, user=user)
    for text in ("one", "two words", "three words here"):
        assert _post(ledgered.url, key, {"model": "mock-gpt", "input": text}).status_code == 200
    client = redis_server.client()
    eventually(lambda: len(_records(client, user)) == 3)
    records = _records(client, user)
    day = time.strftime("%Y-%m-%d", time.gmtime(records[0]["time"]))
    mine = _sums(client, user, day)
    assert mine["requests"] == 3
    for measure in (*MEASURES, "total_tokens"):
        assert mine.get(measure, 0) == sum(r.get(measure, 0) for r in records)
    month_key = RedisKeys().ledger_user_month(user, day[:7])
    assert client.ttl(month_key) > 30 * 86_400
    assert client.sismember(RedisKeys().ledger_users(day), user)
    assert client.ttl(RedisKeys().ledger_users(day)) > 30 * 86_400


def test_a_record_takes_each_field_from_its_own_source() -> None:
    """`record_of` builds records positionally (for speed): every field must come from the
    exchange's own field, none from its neighbour."""
    ex = Exchange("req-given", 100.0, 1_790_000_000.12345, 100.0125)
    ex.record_id, ex.stream, ex.status, ex.caller, ex.key_id = "rec-1", True, 201, "u", "k"
    ex.team, ex.model, ex.provider, ex.upstream_model = "t", "m", "p", "um"
    ex.user, ex.metadata = "end-user", {"job": "x"}
    ex.outcome, ex.first_token_at, ex.first_byte_at = (
        Outcome("resp-9", "incomplete", Usage(11, 3, 22, 5, 33)),
        100.00425,
        100.002,
    )
    ex.method, ex.path, ex.upstream_status, ex.error_code = "PUT", "/v1/x", 502, "code"
    ex.error_param = "tools[0].name"
    ex.stream_error, ex.terminal_event = "upstream_timeout", "response.incomplete"
    ex.client_disconnected, ex.checkpointed, ex.body_size = True, False, 400
    record = record_of(ex)
    assert msgspec.structs.asdict(record) == {
        "id": "rec-1",
        "request_id": "req-given",
        "time": 1_790_000_000.123,
        "end": "client_disconnected",
        "status": 201,
        "stream": True,
        "user": "u",
        "key_id": "k",
        "team": "t",
        "model": "m",
        "provider": "p",
        "upstream_model": "um",
        "input_tokens": 11,
        "cached_input_tokens": 3,
        "output_tokens": 22,
        "reasoning_tokens": 5,
        "total_tokens": 33,
        "latency_ms": 12.5,
        "ttft_ms": 4.25,
        "request_user": "end-user",
        "metadata": {"job": "x"},
        "response_id": "resp-9",
        "usage_estimated": False,
        "checkpointed": False,
        "requested_model": None,
        "method": "PUT",
        "path": "/v1/x",
        "upstream_status": 502,
        "error_code": "code",
        "stream_error": "upstream_timeout",
        "ttfb_ms": 2.0,
        "terminal_event": "response.incomplete",
        "response_status": "incomplete",
        "client_disconnected": True,
        "interrupted": False,
        "param": "tools[0].name",
    }
    ex.provider, ex.interrupted, ex.outcome = None, True, None  # a model it does not serve
    unserved = record_of(ex)
    assert (unserved.model, unserved.requested_model, unserved.interrupted) == (None, "m", True)
    assert unserved.end == "client_disconnected"
    progress = progress_of(ex, 7, 100.003, "rec_1")
    assert (progress.id, progress.checkpointed, progress.usage_estimated) == ("rec_1", True, True)
    assert ex.checkpointed is False, "reading a stream's progress does not change its exchange"
    assert progress.interrupted is True
    assert (progress.end, progress.ttft_ms, progress.ttfb_ms) == ("interrupted", 3.0, 2.0)
    assert (progress.input_tokens, progress.output_tokens, progress.total_tokens) == (101, 7, 108)


def _sums(client: redis.Redis, user: str, day: str) -> dict[str, int]:
    """`user`'s sums of `day`, by measure (one model)."""
    month: dict[str, str] = client.hgetall(RedisKeys().ledger_user_month(user, day[:7]))  # type: ignore[assignment]
    assert {tuple(k.split("\t")[:2]) for k in month} <= {(day, "mock-gpt"), (day, "scripted")}
    return {k.split("\t")[2]: int(v) for k, v in month.items()}


def _record(user: str, **fields: Any) -> UsageRecord:
    base: dict[str, Any] = {
        "id": uuid.uuid4().hex,
        "request_id": "req-1",
        "time": time.time(),
        "end": "completed",
        "status": 200,
        "stream": False,
        "model": "m",
    }
    return UsageRecord(user=user, **{**base, **fields})  # fmt: skip


def test_a_retried_write_counts_once(redis_server: RedisServer) -> None:
    """A writer's calls retried (after a timeout, Redis may have run them) change nothing the
    second time, nor does an older batch arriving after a newer one."""
    client = redis.Redis(host="127.0.0.1", port=redis_server.port, decode_responses=True)
    user = f"once-{uuid.uuid4().hex[:8]}"
    first, second = _record(user, total_tokens=42), _record(user, total_tokens=8)
    writer = uuid.uuid4().hex
    assert [append_batch(client, writer, 1, first) for _ in range(3)] == [1, 0, 0]
    assert append_batch(client, writer, 2, second) == 1
    assert append_batch(client, writer, 2, second) == 0
    assert append_batch(client, writer, 1, first) == 0
    assert len(_records(client, user)) == 2
    month = RedisKeys().ledger_user_month(user, first.day()[:7])
    assert client.hget(month, f"{first.day()}\tm\ttotal_tokens") == "50"
    assert client.hget(month, f"{first.day()}\tm\trequests") == "2"
    assert client.sismember(RedisKeys().ledger_users(first.day()), user)
    assert not client.exists(f"gw:{{ledger}}:seen:{first.id}")  # no marker: none needed


def test_a_saved_streams_record_is_written_once_by_any_writer(redis_server: RedisServer) -> None:
    """The record of a stream whose progress was saved may come from its own replica and from
    another that took it for dead: whichever comes first counts, the other changes nothing."""
    client = redis.Redis(host="127.0.0.1", port=redis_server.port, decode_responses=True)
    user = f"twice-{uuid.uuid4().hex[:8]}"
    record = _record(user, total_tokens=42, stream=True, checkpointed=True)
    assert append_batch(client, uuid.uuid4().hex, 7, record) == 1
    assert append_batch(client, uuid.uuid4().hex, 1, record) == 0
    assert len(_records(client, user)) == 1
    assert client.ttl(f"gw:{{ledger}}:seen:{record.id}") > 0


def test_a_batch_entry_keeps_its_lines_but_those_written_elsewhere(
    redis_server: RedisServer,
) -> None:
    """A batch is one stream entry: without the lines of saved streams' records another writer
    wrote first (the first, the last, several, all), the others whole and in order."""
    client = redis.Redis(host="127.0.0.1", port=redis_server.port, decode_responses=True)
    stream, user = RedisKeys().ledger_stream(), f"lines-{uuid.uuid4().hex[:8]}"
    for taken in ([0], [3], [0, 3], [1, 2], [0, 1, 2, 3]):
        records = [_record(user, checkpointed=True, total_tokens=i + 1) for i in range(4)]
        for i in taken:
            assert append_batch(client, uuid.uuid4().hex, 1, records[i]) == 1
        entries_before = client.xlen(stream)
        assert append_batch(client, uuid.uuid4().hex, 1, *records) == 4 - len(taken)
        if len(taken) == 4:
            assert client.xlen(stream) == entries_before  # no empty entry
            continue
        newest: Any = client.xrevrange(stream, count=1)
        [(_, fields)] = newest
        kept = [r.id for i, r in enumerate(records) if i not in taken]
        assert [json.loads(line)["id"] for line in fields["r"].split("\n")] == kept


def test_a_batch_adds_each_user_models_sums_and_skips_records_written_elsewhere(
    redis_server: RedisServer,
) -> None:
    """One batch of several users, models and days: each sum equals its own records', and a
    saved stream's record another writer wrote first is neither appended nor counted, while
    one nobody wrote is, whether or not its user has other records in the batch."""
    client = redis.Redis(host="127.0.0.1", port=redis_server.port, decode_responses=True)
    tag = uuid.uuid4().hex[:8]
    ann, bob, cid = f"ann-{tag}", f"bob-{tag}", f"cid-{tag}"
    yesterday = time.time() - 86_400
    taken = _record(ann, model="m", total_tokens=1000, input_tokens=1000, checkpointed=True)
    assert append_batch(client, uuid.uuid4().hex, 1, taken) == 1  # another replica was first
    records = [
        _record(ann, model="m", input_tokens=10, output_tokens=5, total_tokens=15),
        taken,
        _record(ann, model="m", input_tokens=1, cached_input_tokens=1, total_tokens=1),
        _record(ann, model="n", reasoning_tokens=7, output_tokens=7, total_tokens=7),
        _record(bob, model="m", input_tokens=3, total_tokens=3, time=yesterday),
        _record(bob, model="m", input_tokens=4, total_tokens=4),
        _record(cid, model="n", output_tokens=9, total_tokens=9, checkpointed=True),
    ]
    assert append_batch(client, uuid.uuid4().hex, 1, *records) == 6
    written = [r["id"] for user in (ann, bob, cid) for r in _records(client, user)]
    assert sorted(written) == sorted(r.id for r in records)
    expected: dict[tuple[str, str, str], dict[str, int]] = {}
    for record in [r for r in records if r is not taken] + [taken]:
        sums = expected.setdefault((record.user or "", record.day(), record.model or ""), {})
        sums["requests"] = sums.get("requests", 0) + 1
        for measure in (*MEASURES, "total_tokens"):
            value = getattr(record, measure)
            if value:
                sums[measure] = sums.get(measure, 0) + value
    found: dict[tuple[str, str, str], dict[str, int]] = {}
    for user in (ann, bob, cid):
        for day in {_record(user).day(), _record(user, time=yesterday).day()}:
            fields: dict[str, str] = client.hgetall(RedisKeys().ledger_user_month(user, day[:7]))  # type: ignore[assignment]
            for field, value in fields.items():
                on, model, measure = field.split("\t")
                found.setdefault((user, on, model), {})[measure] = int(value)
            if any(key[0] == user and key[1] == day for key in expected):
                assert client.sismember(RedisKeys().ledger_users(day), user)
    assert found == expected


def test_records_older_than_the_retention_are_trimmed(outage_redis: RedisServer) -> None:
    """Entries (batches) older than `ledger.retention_days` leave the stream as whole nodes of
    it (MINID ~: approximate, at most one node of 100 entries stays behind); newer ones all
    stay."""
    client = redis.Redis(host="127.0.0.1", port=outage_redis.port, decode_responses=True)
    writer, user = uuid.uuid4().hex, f"old-{uuid.uuid4().hex[:8]}"
    for number in range(1, 251):
        append_batch(client, writer, number, _record(user))
    time.sleep(0.3)
    fresh = [_record(user) for _ in range(5)]
    assert append_batch(client, writer, 251, *fresh, retention_ms=200) == 5
    assert client.xlen(RedisKeys().ledger_stream()) <= 100 + 1  # of 251
    kept = [json.loads(line)["id"] for line in ledger_lines(client)]
    assert kept[-5:] == [record.id for record in fresh]


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


def test_records_refused_for_lack_of_memory_are_kept_and_written_later(
    gateway_factory: GatewayFactory,
    outage_redis: RedisServer,
    mock_upstream: ServerProcess,
    secrets_seen: list[str],
) -> None:
    """Redis out of memory (maxmemory reached, noeviction) refuses every script with OOM: the
    records wait, none is dropped, and they are written once memory is freed."""
    gateway = gateway_factory(_config(outage_redis.url, mock_upstream.url, "fail_open"))
    user = f"oom-{uuid.uuid4().hex[:8]}"
    _, key = create_key(gateway.url, secrets_seen, user=user)
    admin: Any = outage_redis.client()
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", "1")
    try:
        for i in range(4):
            served = _post(gateway.url, key, {"model": "mock-gpt", "input": f"oom {i}"})
            assert served.status_code == 200  # fail_open: the quota cannot be kept either
        eventually(
            lambda: int(admin.info("errorstats").get("errorstat_OOM", {}).get("count", 0)) > 4
        )
        assert _records(admin, user) == []
    finally:
        admin.config_set("maxmemory", "0")
    eventually(lambda: len(_records(admin, user)) == 4, timeout=15)
    ready = httpx.get(f"{gateway.url}/readyz", timeout=5).json()
    assert ready["ledger_dropped"] == 0
    assert "ledger_record_dropped" not in [line["event"] for line in log_lines(gateway)]


def test_a_write_that_timed_out_but_ran_is_sent_again_and_counts_once(
    gateway_factory: GatewayFactory,
    outage_redis: RedisServer,
    mock_upstream: ServerProcess,
    secrets_seen: list[str],
) -> None:
    """Redis frozen (DEBUG SLEEP) longer than `redis.timeout` while the writer's call is in
    flight: the call times out, yet Redis runs it when it wakes (it reads what was sent, even
    from a client that has gone); the writer sends the same batch again, and it counts once:
    each record and each sum once."""
    config = _config(outage_redis.url, mock_upstream.url, "fail_open")
    config["limits"] = {"tiers": {"default": {}}}
    gateway = gateway_factory(config)
    user = f"ran-{uuid.uuid4().hex[:8]}"
    _, key = create_key(gateway.url, secrets_seen, user=user)
    assert _post(gateway.url, key, {"model": "mock-gpt", "input": "warm"}).status_code == 200
    admin: Any = outage_redis.client()
    eventually(lambda: len(_records(admin, user)) == 1)
    frozen: Any = outage_redis.client()
    sleeper = threading.Thread(target=lambda: frozen.execute_command("DEBUG", "SLEEP", "2"))
    sleeper.start()
    time.sleep(0.1)
    try:
        for i in range(3):  # served (fail_open) once their admissions time out
            assert (
                _post(gateway.url, key, {"model": "mock-gpt", "input": f"r{i}"}).status_code == 200
            )
    finally:
        sleeper.join()
    eventually(lambda: len(_records(admin, user)) >= 4, timeout=15)
    time.sleep(1.5)  # the retries' answers, and any double write, are in by now
    records = _records(admin, user)
    assert len(records) == 4
    assert len({r["id"] for r in records}) == 4
    day = time.strftime("%Y-%m-%d", time.gmtime(records[0]["time"]))
    assert _sums(admin, user, day)["requests"] == 4
    assert _sums(admin, user, day)["total_tokens"] == sum(r["total_tokens"] for r in records)
    timeouts = [
        line
        for line in log_lines(gateway)
        if line["event"] == "redis_error"
        and line.get("operation") == "scripts"
        and line.get("error") == "TimeoutError"
    ]
    assert timeouts  # the calls did time out while Redis slept


def test_a_full_buffer_drops_its_oldest_records_and_says_which(
    gateway_factory: GatewayFactory,
    outage_redis: RedisServer,
    mock_upstream: ServerProcess,
    secrets_seen: list[str],
) -> None:
    """While Redis is down the buffer holds at most `ledger.buffer_records`; beyond, the oldest
    records go, each named in a log line and counted, and every other record arrives once
    Redis is back: none is lost silently, none doubled."""
    config = _config(outage_redis.url, mock_upstream.url, "fail_open")
    config["ledger"] = {"buffer_records": 100}
    config["limits"] = {"tiers": {"default": {}}}
    gateway = gateway_factory(config)
    user = f"full-{uuid.uuid4().hex[:8]}"
    _, key = create_key(gateway.url, secrets_seen, user=user)
    first = _post(
        gateway.url,
        key,
        {"model": "mock-gpt", "input": "before"},
        **{"x-request-id": f"{user}-first"},
    )
    assert first.status_code == 200  # the key is known: served while Redis is down (fail_open)
    eventually(lambda: len(_records(outage_redis.client(), user)) == 1)
    outage_redis.stop()
    sent = [f"{user}-first"]
    try:
        with httpx.Client(timeout=15) as client:
            for i in range(160):
                served = client.post(
                    f"{gateway.url}/v1/responses",
                    json={"model": "mock-gpt", "input": f"full {i}"},
                    headers={"authorization": f"Bearer {key}", "x-request-id": f"{user}-{i}"},
                )
                assert served.status_code == 200
                sent.append(f"{user}-{i}")
        ready = httpx.get(f"{gateway.url}/readyz", timeout=5).json()
        assert ready["ledger_backlog"] <= 100
        assert ready["ledger_dropped"] >= 60
    finally:
        outage_redis.start()
    eventually(lambda: len(_records(outage_redis.client(), user)) >= 1 + 160 - 100, timeout=15)
    time.sleep(1)  # any double write would have landed by now
    written = [r["request_id"] for r in _records(outage_redis.client(), user)]
    dropped = [
        line["request_id"]
        for line in log_lines(gateway)
        if line["event"] == "ledger_record_dropped" and line["user"] == user
    ]
    assert len(written) == len(set(written))
    assert sorted(written + dropped) == sorted(sent)
    # The oldest went, a whole batch (at most 100 / 4 records) at a time, except the batch
    # tried when Redis went away (it may be in Redis: never dropped). So the records written
    # that are older than the newest dropped one are that batch alone: one run of at most 25
    # records, the first of the outage; and the newest 50 (100 - 25 tried - 25 a victim) stay.
    order = {request_id: i for i, request_id in enumerate(sent)}
    newest_dropped = max(order[d] for d in dropped)
    kept_older = sorted(order[w] for w in written if 0 < order[w] < newest_dropped)
    assert len(kept_older) <= 25
    assert kept_older == list(range(1, 1 + len(kept_older)))
    assert not set(dropped) & set(sent[-50:])
    ready = httpx.get(f"{gateway.url}/readyz", timeout=5).json()
    assert ready["ledger_dropped"] == len(dropped)


def _frames(chunks: Iterator[bytes]) -> Iterator[int]:
    """The running count of complete SSE frames in a stream of chunks."""
    buffer, count = b"", 0
    for chunk in chunks:
        buffer += chunk
        count += buffer.count(b"\n\n")
        buffer = buffer[buffer.rfind(b"\n\n") + 2 :] if b"\n\n" in buffer else buffer
        yield count


def _saving_config(redis_url: str, mock: str) -> dict[str, Any]:
    config = _config(redis_url, mock)
    config["ledger"] = {"checkpoint_seconds": 0.2, "orphan_seconds": 1.5}
    config["limits"] = {"tiers": {"default": {}}}
    return config


def test_a_replica_killed_mid_stream_loses_only_the_last_moments(
    gateway_factory: GatewayFactory,
    redis_server: RedisServer,
    mock_upstream: ServerProcess,
    secrets_seen: list[str],
) -> None:
    """SIGKILL mid-stream: the replica cannot write anything, yet the record arrives (written
    by another replica from the last save), with at least what the client had received but
    the last save interval (0.2 s, about 4 frames at 20 tokens/s)."""
    config = _saving_config(redis_server.url, mock_upstream.url)
    doomed, survivor = gateway_factory(config), gateway_factory(config)
    user = f"killed-{uuid.uuid4().hex[:8]}"
    _, key = create_key(survivor.url, secrets_seen, user=user)
    headers = {
        "authorization": f"Bearer {key}",
        "x-mock-reply": quote(" ".join(["word"] * 200)),
        "x-mock-tokens-per-second": "20",
    }
    body = {"model": "mock-gpt", "input": "a long answer please", "stream": True}
    received = 0
    with (
        httpx.Client(timeout=15) as http,
        http.stream("POST", f"{doomed.url}/v1/responses", json=body, headers=headers) as resp,
    ):
        started = time.monotonic()
        try:
            for count in _frames(resp.iter_raw()):
                received = count
                if doomed.proc is not None and time.monotonic() - started > 1.5:
                    os.kill(doomed.proc.pid, signal.SIGKILL)  # the rest is what was in flight
                    doomed.proc.wait()
                    doomed.proc = None
        except httpx.HTTPError:
            pass  # the connection died with the replica
    assert 20 < received < 100
    client = redis_server.client()
    eventually(lambda: len(_records(client, user)) == 1, timeout=10)
    (record,) = _records(client, user)
    assert record["end"] == "interrupted"
    assert record["usage_estimated"] is True
    assert record["stream"] is True
    assert received - 10 <= record["output_tokens"] <= received
    assert record["total_tokens"] == record["input_tokens"] + record["output_tokens"]
    assert any(
        line.get("event") == "ledger_orphan_recorded" and line.get("user") == user
        for line in log_lines(survivor)
    )
    running, _ = RedisKeys().ledger_running()
    assert not client.hexists(running, record["id"])
    time.sleep(2)  # a second adoption would have happened by now
    assert len(_records(client, user)) == 1


def test_a_long_stream_is_recorded_once_from_its_end(
    gateway_factory: GatewayFactory,
    redis_server: RedisServer,
    mock_upstream: ServerProcess,
    secrets_seen: list[str],
) -> None:
    """A stream longer than the orphan delay, saved all along, is not taken for an orphan:
    its one record is its own, with the provider's usage."""
    gateway = gateway_factory(_saving_config(redis_server.url, mock_upstream.url))
    user = f"long-{uuid.uuid4().hex[:8]}"
    _, key = create_key(gateway.url, secrets_seen, user=user)
    headers = {
        "x-mock-reply": quote(" ".join(["word"] * 60)),
        "x-mock-tokens-per-second": "20",  # 3 s: twice the orphan delay
    }
    body = {"model": "mock-gpt", "input": "long", "stream": True}
    client = redis_server.client()
    running, saved = RedisKeys().ledger_running()
    seen_saved = threading.Event()

    def watch() -> None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not seen_saved.is_set():
            entries: Any = client.hvals(running)
            if any(json.loads(e.split("\n", 1)[1])["user"] == user for e in entries):
                seen_saved.set()
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    response = _post(gateway.url, key, body, **headers)
    watcher.join()
    assert response.status_code == 200
    assert seen_saved.is_set(), "the running stream was never saved"
    eventually(lambda: len(_records(client, user)) == 1)
    time.sleep(2)
    (record,) = _records(client, user)
    assert record["end"] == "completed"
    assert "usage_estimated" not in record
    assert record["output_tokens"] == 60
    assert not client.hexists(running, record["id"])
    assert client.zscore(saved, record["id"]) is None


def test_recorded_transcripts_usage_lands_exactly_in_the_ledger(
    gateway_factory: GatewayFactory,
    redis_server: RedisServer,
    scripted_upstream: ServerProcess,
    secrets_seen: list[str],
) -> None:
    """Every real recorded stream, replayed in random chunks through a keyed gateway: each
    record holds exactly the transcript's usage, and the day's sums are their sum."""
    gateway = gateway_factory(keyed_config(redis_server.url, scripted_upstream.url))
    user = f"transcripts-{uuid.uuid4().hex[:8]}"
    _, key = create_key(gateway.url, secrets_seen, user=user)
    expected: dict[str, dict[str, Any]] = {}
    for seed, path in enumerate(recorded_transcripts()):
        headers = {
            "x-replay-file": str(path),
            "x-replay-seed": str(seed),
            "x-replay-max-chunk": "97",
        }
        body = {"model": "scripted", "input": "replay", "stream": True}
        response = _post(gateway.url, key, body, **headers)
        assert response.status_code == 200, path.name
        usage = expected_usage(path.read_bytes())
        assert usage is not None, path.name
        expected[response.headers["x-request-id"]] = usage
    client = redis_server.client()
    eventually(lambda: len(_records(client, user)) == len(expected))
    for record in _records(client, user):
        usage = expected[record["request_id"]]
        assert record["end"] == "completed"
        assert record["input_tokens"] == usage["input_tokens"]
        cached = usage["input_tokens_details"]["cached_tokens"]
        assert record.get("cached_input_tokens", 0) == cached  # 0 is left out of a record
        assert record["output_tokens"] == usage["output_tokens"]
        reasoning = usage["output_tokens_details"]["reasoning_tokens"]
        assert record.get("reasoning_tokens", 0) == reasoning
        assert record["total_tokens"] == usage["total_tokens"]
    day = time.strftime("%Y-%m-%d", time.gmtime(_records(client, user)[0]["time"]))
    mine = _sums(client, user, day)
    assert mine["requests"] == len(expected)
    assert mine["total_tokens"] == sum(u["total_tokens"] for u in expected.values())
    assert mine["output_tokens"] == sum(u["output_tokens"] for u in expected.values())


def test_a_save_is_adopted_only_once_its_writer_is_silent(redis_server: RedisServer) -> None:
    """Orphans are judged by their writer's sign of life, and only by a replica in touch for
    the whole orphan delay: after an outage every save is old, yet its live writer keeps it."""
    client = redis.Redis(host="127.0.0.1", port=redis_server.port, decode_responses=True)
    lua = ROOT / "gateway" / "state" / "lua"
    save = client.register_script((lua / "ledger_save.lua").read_text())
    orphans = client.register_script((lua / "ledger_orphans.lua").read_text())
    keys = RedisKeys()
    running, writers = keys.ledger_running(), keys.ledger_writers()
    claim_keys = [*running, *writers, keys.ledger_applied()]
    owner, other = f"owner-{uuid.uuid4().hex}", f"other-{uuid.uuid4().hex}"
    record = _record(f"orphan-{uuid.uuid4().hex[:8]}", stream=True, checkpointed=True)

    def claim(writer: str) -> list[Any]:
        found: Any = orphans(keys=claim_keys, args=[300, 100, writer, 86_400_000])
        return [f for f in found[::2] if f == record.id]

    def rounds(seconds: float, *writers_in_touch: str) -> list[Any]:
        """Each writer's orphan check every 0.1 s (a third of the delay, as replicas do)."""
        found: list[Any] = []
        for _ in range(int(seconds / 0.1)):
            for writer in writers_in_touch:
                found += claim(writer)
            time.sleep(0.1)
        return found

    save(
        keys=[*running, writers[0], keys.ledger_seen(record.id)],
        args=[record.id, owner, encode(record)],
    )
    assert rounds(0.8, owner, other) == []  # the save grows old, but its writer is alive
    newcomer = f"newcomer-{uuid.uuid4().hex}"
    time.sleep(0.4)  # everyone silent (an outage): the owner looks dead to a newcomer...
    assert claim(newcomer) == []  # ... who does not judge before being in touch 300 ms
    adopted = rounds(0.6, other)  # the owner stays silent: it is dead
    assert adopted == [record.id]  # claimed once, not handed out again while claimed


def test_a_save_that_runs_after_its_streams_record_leaves_nothing(
    redis_server: RedisServer,
) -> None:
    """A save can time out on the gateway's side yet run later, after the stream's own record
    was written: were it kept, another replica would adopt it as an orphan once its writer
    stops, and count the stream twice after the record's marker expired."""
    client = redis.Redis(host="127.0.0.1", port=redis_server.port, decode_responses=True)
    lua = ROOT / "gateway" / "state" / "lua"
    save = client.register_script((lua / "ledger_save.lua").read_text())
    keys = RedisKeys()
    running, writers = keys.ledger_running(), keys.ledger_writers()
    writer = f"late-{uuid.uuid4().hex}"
    record = _record(f"late-{uuid.uuid4().hex[:8]}", stream=True, checkpointed=True)
    save_keys = [*running, writers[0], keys.ledger_seen(record.id)]
    progress = encode(record)

    assert save(keys=save_keys, args=[record.id, writer, progress]) == 1  # while it runs
    assert client.hexists(running[0], record.id)
    assert append_batch(client, writer, 1, record) == 1  # its end: the save is removed
    assert not client.hexists(running[0], record.id)
    assert save(keys=save_keys, args=[record.id, writer, progress]) == 0  # the late one
    assert not client.hexists(running[0], record.id)
    assert client.zscore(running[1], record.id) is None


class _Log:
    """Log lines as (event, fields)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **fields: self.lines.append((event, fields))


def _exchange(user: str, request_id: str) -> Exchange:
    """A finished exchange, as a request leaves it to the ledger."""
    ex = Exchange(request_id, 10.0, time.time(), 10.25)
    ex.caller, ex.model, ex.provider, ex.status = user, "m", "p", 200
    ex.outcome = Outcome("resp-1", "completed", Usage(1, 0, 2, 0, 3))
    return ex


def _ledger(redis_url: str, log: _Log) -> Ledger:
    metrics = Metrics()
    store = RedisStore(RedisSettings(), redis_url, log, metrics)
    batcher = ScriptBatcher(store, "scripts", log)
    return Ledger(store, RedisKeys(), LedgerSettings(), log, metrics, batcher)


def test_while_redis_is_away_the_queued_records_are_batched() -> None:
    """A queued record holds more memory than what its batch keeps (its JSON and its share of
    the sums), and the buffer's memory bound is counted in batched records: while the writer
    waits to try Redis again (pauses of up to 5 s), it still batches the records of requests
    that end, every 0.1 s."""
    port = free_port()  # nothing listens: every write fails at once

    async def run() -> None:
        log = _Log()
        ledger = _ledger(f"redis://127.0.0.1:{port}/0", log)
        ledger.start()
        finish(_exchange("away", "req-0"), log, ledger)
        await asyncio.sleep(0.9)  # failed writes, then pauses of 0.2, 0.5 and now 1 s
        for i in range(1, 6):
            finish(_exchange("away", f"req-{i}"), log, ledger)
        waited = 0.0
        while ledger._pending and waited < 0.5:  # well before the pause ends
            await asyncio.sleep(0.05)
            waited += 0.05
        assert ledger._pending == []
        assert ledger.backlog == 6  # kept, batched
        await ledger.close(deadline=0.2)

    asyncio.run(run())


def test_a_record_that_cannot_be_built_or_encoded_is_dropped_and_named(
    redis_server: RedisServer,
) -> None:
    """A record that cannot be built or encoded at the request's end, or summed by the writer
    (a bug), is logged and counted as dropped without failing the request, leaves its batch's
    sums untouched, and the others of the same batch are written."""
    user = f"unbuildable-{uuid.uuid4().hex[:8]}"
    broken = _exchange(user, "req-broken")
    broken.outcome = "not an outcome"  # type: ignore[assignment]  # what a bug could leave
    odd = _exchange(user, "req-odd")
    odd.metadata = {"k": object()}  # type: ignore[dict-item]  # JSON cannot encode it
    uncounted = _exchange(user, "req-uncounted")
    uncounted.outcome = Outcome("resp-2", "completed", Usage(None, 0, 2, 0, 3))  # type: ignore[arg-type]

    async def run() -> Ledger:
        log = _Log()
        ledger = _ledger(redis_server.url, log)
        for ex in (broken, odd, uncounted, _exchange(user, "req-fine")):
            finish(ex, log, ledger)
        await ledger.close()
        # every request still has its log line: the record's, or what is safe to say
        logged = [
            (json.loads(fields["_json"])["request_id"], None) if "_json" in fields
            else (fields["request_id"], fields["error"])
            for event, fields in log.lines
            if event == "request"
        ]  # fmt: skip
        assert logged == [
            ("req-broken", "record_failed"),
            ("req-odd", "record_failed"),
            ("req-uncounted", None),
            ("req-fine", None),
        ]
        dropped = {
            fields["request_id"]: fields["error"]
            for event, fields in log.lines
            if event == "ledger_record_dropped"
        }
        assert dropped == {
            "req-broken": "unbuildable",
            "req-odd": "unbuildable",
            "req-uncounted": "unencodable",
        }
        return ledger

    ledger = asyncio.run(run())
    assert (ledger.written, ledger.dropped, ledger.backlog) == (1, 3, 0)
    client = redis.Redis(host="127.0.0.1", port=redis_server.port, decode_responses=True)
    [record] = _records(client, user)
    assert (record["request_id"], record["latency_ms"], record["total_tokens"]) == (
        "req-fine",
        250.0,
        3,
    )
    day = time.strftime("%Y-%m-%d", time.gmtime(record["time"]))
    month = RedisKeys().ledger_user_month(user, day[:7])
    assert client.hget(month, f"{day}\tm\ttotal_tokens") == "3"  # only req-fine's
    assert client.hget(month, f"{day}\tm\trequests") == "1"
