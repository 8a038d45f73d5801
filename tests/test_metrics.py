"""`GET /metrics` of a gateway running two worker processes, read with prometheus_client's own
parser after known traffic: every worker's requests are counted, whichever worker answers the
scrape."""

from __future__ import annotations

import json
import math
import shutil
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from tests.support.admin import create_key, mock_config
from tests.support.gateway import GatewayFactory, eventually, log_lines
from tests.support.metrics import Samples, samples, scrape, summed, value
from tests.support.procs import ServerProcess
from tests.support.redis_server import GATEWAY_ACL, RedisServer

pytestmark = pytest.mark.processes  # redis-servers of its own


def _config(redis_url: str, mock: str, metrics_dir: Path, policy: str) -> dict[str, Any]:
    config = mock_config(redis_url, mock, policy, cooldown=0.3)
    config["server"] = {"workers": 2}
    config["metrics"] = {"multiproc_dir": str(metrics_dir)}
    config["limits"] = {
        "tiers": {
            "default": {"requests_per_minute": 10_000},
            "tight": {"requests_per_minute": 2},
        }
    }
    return config


def _per_worker(metrics_dir: Path, tmp: Path) -> dict[int, Samples]:
    """Each worker's own counters, read from its file alone."""
    out: dict[int, Samples] = {}
    for file in metrics_dir.glob("counter_*.db"):
        pid = int(file.stem.rsplit("_", 1)[1])
        alone = tmp / str(pid)
        alone.mkdir()
        shutil.copy(file, alone / file.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(alone))  # type: ignore[no-untyped-call]
        out[pid] = samples(generate_latest(registry).decode())
    return out


def _post(url: str, key: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    sent = {"authorization": f"Bearer {key}", **headers}
    return httpx.post(f"{url}/v1/responses", json=body, headers=sent, timeout=15)


def _stream_usage(url: str, key: str) -> dict[str, int]:
    """Stream one answer; the usage of its `response.completed` event."""
    body = {"model": "mock-gpt", "input": "stream please", "stream": True}
    response = _post(url, key, body)
    assert response.status_code == 200
    for line in response.text.splitlines():
        if line.startswith("data: ") and '"response.completed"' in line:
            return dict(json.loads(line[6:])["response"]["usage"])
    raise AssertionError("no response.completed event")


@pytest.fixture(scope="module")
def two_workers(
    gateway_factory: GatewayFactory,
    redis_server: RedisServer,
    mock_upstream: ServerProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[ServerProcess, Path]:
    metrics_dir = tmp_path_factory.mktemp("metrics")
    config = _config(redis_server.url, mock_upstream.url, metrics_dir, "fail_closed")
    return gateway_factory(config), metrics_dir


def test_metrics_count_every_workers_traffic(
    two_workers: tuple[ServerProcess, Path], secrets_seen: list[str], tmp_path: Path
) -> None:
    """Any worker's scrape counts both workers' requests, tokens, refusals and errors exactly."""
    gateway, metrics_dir = two_workers
    _, key = create_key(gateway.url, secrets_seen, user=f"metrics-{uuid.uuid4().hex[:8]}")
    _, tight = create_key(
        gateway.url, secrets_seen, user=f"tight-{uuid.uuid4().hex[:8]}", tier="tight"
    )
    plain = {"model": "mock-gpt", "input": "count my tokens"}
    with ThreadPoolExecutor(16) as pool:  # concurrent connections: both workers take some
        answers = list(pool.map(lambda _: _post(gateway.url, key, plain), range(40)))
        streamed = list(pool.map(lambda _: _stream_usage(gateway.url, key), range(12)))
    assert all(a.status_code == 200 for a in answers)
    usages = [a.json()["usage"] for a in answers] + streamed
    limited = [_post(gateway.url, tight, plain) for _ in range(5)]
    assert [r.status_code for r in limited] == [200, 200, 429, 429, 429]
    usages += [r.json()["usage"] for r in limited[:2]]
    unreachable = [_post(gateway.url, key, {"model": "nowhere", "input": "x"}) for _ in range(2)]
    assert [r.status_code for r in unreachable] == [502, 502]
    assert _post(gateway.url, key, {"model": "made-up-model", "input": "x"}).status_code == 404
    total = 40 + 12 + 5 + 2 + 1

    def counted() -> bool:
        return value(scrape(gateway.url), "gateway_requests_total") == total

    eventually(counted)  # the count is taken once the answer is sent
    for _ in range(4):  # whichever worker answers the scrape, the figures are the same
        s = scrape(gateway.url)
        ok = {"gen_ai_request_model": "mock-gpt", "gen_ai_provider_name": "mock"}
        assert value(s, "gateway_requests_total", **ok, http_response_status_code="200") == 54
        assert value(s, "gateway_requests_total", **ok, outcome="rejected") == 3
        assert value(
            s, "gateway_requests_total", gen_ai_provider_name="nowhere", outcome="error"
        ) == 2  # fmt: skip
        assert value(
            s, "gateway_requests_total", gen_ai_request_model="-", http_response_status_code="404"
        ) == 1  # fmt: skip
        assert value(s, "gen_ai_server_request_duration_seconds_count") == total
        for kind in ("input", "output"):
            expected = sum(u[f"{kind}_tokens"] for u in usages)
            assert value(s, "gateway_tokens_total", **ok, gen_ai_token_type=kind) == expected
            assert value(s, "gen_ai_client_token_usage_sum", gen_ai_token_type=kind) == expected
            assert value(s, "gen_ai_client_token_usage_count", gen_ai_token_type=kind) == 54
        assert value(s, "gen_ai_server_time_to_first_token_seconds_count", **ok) == 12
        assert value(s, "gen_ai_server_time_per_output_token_seconds_count", **ok) == 12
        assert value(
            s, "gateway_rate_limited_total", limit="requests_per_minute", scope="user"
        ) == 3  # fmt: skip
        assert value(
            s,
            "gateway_upstream_errors_total",
            gen_ai_provider_name="nowhere",
            error_type="upstream_unavailable",
        ) == 2  # fmt: skip
        assert value(s, "gateway_streams_in_flight") == 0
        # with several workers, a metric no worker counted yet is not listed at all
        assert summed(s, "gateway_redis_errors_total", {}) == 0
    eventually(lambda: value(scrape(gateway.url), "gateway_ledger_written_total") == total)
    assert value(scrape(gateway.url), "gateway_ledger_backlog") == 0
    workers = _per_worker(metrics_dir, tmp_path)
    served = [value(s, "gateway_requests_total") for s in workers.values()]
    assert len(served) == 2, "expected two worker processes"
    assert all(n > 0 for n in served), f"one worker served nothing: {served}"
    assert sum(served) == total


def test_streams_in_flight_while_they_run(
    two_workers: tuple[ServerProcess, Path], secrets_seen: list[str]
) -> None:
    """`gateway_streams_in_flight` counts open streams across workers, back to 0 after."""
    gateway, _ = two_workers
    _, key = create_key(gateway.url, secrets_seen, user=f"inflight-{uuid.uuid4().hex[:8]}")
    slow = {"x-mock-reply": quote(" ".join(["word"] * 60)), "x-mock-tokens-per-second": "40"}
    body = {"model": "mock-gpt", "input": "slow", "stream": True}
    threads = [
        threading.Thread(target=lambda: _post(gateway.url, key, body, **slow)) for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    eventually(lambda: value(scrape(gateway.url), "gateway_streams_in_flight") == 3)
    for thread in threads:
        thread.join()
    eventually(lambda: value(scrape(gateway.url), "gateway_streams_in_flight") == 0)


def test_redis_errors_and_policy_decisions_are_counted(
    gateway_factory: GatewayFactory,
    mock_upstream: ServerProcess,
    secrets_seen: list[str],
    tmp_path: Path,
) -> None:
    """Redis frozen under fail_open: requests are served without a quota, and counted so."""
    (tmp_path / "redis-data").mkdir()
    redis = RedisServer(tmp_path / "redis-data").start()
    try:
        config = _config(redis.url, mock_upstream.url, tmp_path / "metrics", "fail_open")
        config["server"]["workers"] = 1  # one worker: the key is surely in its cache
        gateway = gateway_factory(config)
        _, key = create_key(gateway.url, secrets_seen, user=f"policy-{uuid.uuid4().hex[:8]}")
        plain = {"model": "mock-gpt", "input": "hi"}
        for _ in range(2):
            assert _post(gateway.url, key, plain).status_code == 200
        # each waits at most redis.timeout (0.5 s): all four are sent while it sleeps
        with redis.frozen(3):
            served = [_post(gateway.url, key, plain).status_code for _ in range(4)]
        assert served == [200] * 4
        s = scrape(gateway.url)
        assert value(s, "gateway_redis_errors_total") >= 1
        decisions = "gateway_redis_policy_decisions_total"
        served_quota = value(s, decisions, subsystem="limits", decision="served")
        assert served_quota == 4  # each request went without its quota check
        assert value(s, decisions, subsystem="auth", decision="served") >= 1  # stale cache
        assert value(s, decisions, decision="refused") == 0
    finally:
        redis.stop()


def test_redis_memory_is_read_at_each_scrape(
    gateway_factory: GatewayFactory, mock_upstream: ServerProcess, tmp_path: Path
) -> None:
    """The memory of the Redis that holds the ledger, and its maxmemory, as Redis says them at
    the time of the scrape, whichever of the two workers answers; NaN once Redis is gone."""
    (tmp_path / "redis-data").mkdir()
    redis = RedisServer(tmp_path / "redis-data").start()
    try:
        client = redis.client()
        gateway = gateway_factory(
            _config(redis.url, mock_upstream.url, tmp_path / "m", "fail_open")
        )
        for limit in (0, 300 * 2**20, 123 * 2**20):
            client.config_set("maxmemory", limit)
            with ThreadPoolExecutor(8) as pool:  # concurrent scrapes: both workers answer
                scrapes = list(pool.map(lambda _: scrape(gateway.url), range(16)))
            actual = int(client.info("memory")["used_memory"])
            for s in scrapes:
                assert value(s, "gateway_redis_memory_max_bytes") == limit
                used = value(s, "gateway_redis_memory_used_bytes")
                assert abs(used - actual) < 2**20, (used, actual)  # used_memory moves a little
        client.close()
        redis.stop()
        s = scrape(gateway.url)  # still answers: the figures are unknown now
        assert math.isnan(value(s, "gateway_redis_memory_max_bytes"))
        assert math.isnan(value(s, "gateway_redis_memory_used_bytes"))
        assert value(s, "gateway_redis_errors_total", operation="info_memory") >= 1
    finally:
        redis.stop()


def test_an_acl_without_info_is_said_once_and_not_asked_again(
    gateway_factory: GatewayFactory,
    mock_upstream: ServerProcess,
    secrets_seen: list[str],
    tmp_path: Path,
) -> None:
    """A Redis user the ACL refuses INFO: the scrapes still answer, the memory unknown (NaN);
    one warning says why, and Redis is not asked again for 10 minutes."""
    (tmp_path / "redis-data").mkdir()
    redis = RedisServer(tmp_path / "redis-data").start()
    try:
        rules = [r for r in GATEWAY_ACL if r != "+info"]
        redis.client().execute_command("ACL", "SETUSER", "noinfo", "on", ">noinfo-pass", *rules)  # type: ignore[no-untyped-call]
        config = _config(redis.url, mock_upstream.url, tmp_path / "m", "fail_closed")
        config["server"]["workers"] = 1
        config["redis"] |= {"username": "noinfo", "password": "noinfo-pass"}
        gateway = gateway_factory(config)
        _, key = create_key(gateway.url, secrets_seen, user=f"noinfo-{uuid.uuid4().hex[:8]}")
        assert _post(gateway.url, key, {"model": "mock-gpt", "input": "hi"}).status_code == 200
        for _ in range(3):
            s = scrape(gateway.url)
            assert math.isnan(value(s, "gateway_redis_memory_max_bytes"))
            assert value(s, "gateway_redis_errors_total", operation="info_memory") == 1
        said = [line for line in log_lines(gateway) if line["event"] == "redis_memory_unreadable"]
        assert len(said) == 1
        assert "no permissions to run the 'info' command" in said[0]["detail"]
        assert said[0]["retry_seconds"] == 600
    finally:
        redis.stop()
