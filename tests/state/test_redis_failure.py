"""Redis slow or down: the configured policy holds, nothing hangs, and it all comes back.

Two replicas share one Redis (persistent, so keys survive the restart as in production): one
`fail_closed`, one `fail_open`. Redis is frozen (DEBUG SLEEP), then killed and restarted on the
same port while they serve.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from gateway.state import RedisKeys
from tests.support.admin import create_key, keyed_config
from tests.support.gateway import GatewayFactory, eventually, log_lines
from tests.support.procs import ServerProcess
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.processes  # a redis-server it stops

TIMEOUT = 0.25
BODY = {"model": "scripted", "input": "hi"}


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis-failure"), persistent=True).start()
    yield server
    server.stop()


def _gateway(
    factory: GatewayFactory, redis: RedisServer, upstream: ServerProcess, policy: str
) -> ServerProcess:
    config = keyed_config(
        redis.url,
        upstream.url,
        limits={
            "tiers": {
                "default": {
                    "requests_per_minute": 1000,
                    "tokens_per_minute": 10**9,
                    "concurrent_requests": 50,
                }
            }
        },
    )
    config["redis"].update(on_failure=policy, timeout=TIMEOUT, breaker_cooldown=0.5)
    return factory(config)


@pytest.fixture(scope="module")
def closed(
    gateway_factory: GatewayFactory, redis: RedisServer, scripted_upstream: ServerProcess
) -> ServerProcess:
    return _gateway(gateway_factory, redis, scripted_upstream, "fail_closed")


@pytest.fixture(scope="module")
def opened(
    gateway_factory: GatewayFactory, redis: RedisServer, scripted_upstream: ServerProcess
) -> ServerProcess:
    return _gateway(gateway_factory, redis, scripted_upstream, "fail_open")


def _timed_post(url: str, key: str) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = httpx.post(
        f"{url}/v1/responses", json=BODY, headers={"authorization": f"Bearer {key}"}, timeout=10
    )
    return response, time.monotonic() - started


def _ready(gateway: ServerProcess) -> tuple[int, dict[str, Any]]:
    response = httpx.get(f"{gateway.url}/readyz", timeout=5)
    return response.status_code, response.json()


def test_frozen_redis_costs_at_most_the_timeout(
    closed: ServerProcess, opened: ServerProcess, redis: RedisServer, secrets_seen: list[str]
) -> None:
    """Redis frozen 2 s: fail_closed is a 503, fail_open serves, each after about the timeout."""
    _, key = create_key(closed.url, secrets_seen, user="frozen")
    for gateway in (closed, opened):
        assert _timed_post(gateway.url, key)[0].status_code == 200
    with redis.frozen(2):
        shut, shut_took = _timed_post(closed.url, key)
        served, served_took = _timed_post(opened.url, key)
    assert shut.status_code == 503
    assert shut.json()["error"]["code"] == "quota_unavailable"
    assert shut.headers["retry-after"] == "1"
    assert served.status_code == 200
    assert "x-ratelimit-limit-requests" not in served.headers  # admitted without a quota
    # Redis answered nothing for 2 s; each request waited about the 0.25 s timeout, not 2 s
    assert shut_took < 1.5
    assert served_took < 1.5
    eventually(timeout=10, check=lambda: _timed_post(closed.url, key)[0].status_code == 200)


def test_killed_redis_policy_breaker_readiness_and_recovery(
    closed: ServerProcess, opened: ServerProcess, redis: RedisServer, secrets_seen: list[str]
) -> None:
    """Redis killed: each policy holds, the breaker spares Redis, /readyz says so, all recovers."""
    _, key = create_key(closed.url, secrets_seen, user="killed")
    for gateway in (closed, opened):  # healthy again after the previous test's freeze

        def serves(url: str = gateway.url) -> bool:
            return _timed_post(url, key)[0].status_code == 200

        eventually(serves, timeout=10)
        assert _ready(gateway)[0] == 200
    redis.stop()
    try:
        time.sleep(0.6)  # past the key cache: authentication must ask Redis too
        closed_answers = [_timed_post(closed.url, key) for _ in range(20)]
        open_answers = [_timed_post(opened.url, key) for _ in range(20)]
        assert {r.status_code for r, _ in closed_answers} == {503}
        assert {r.json()["error"]["code"] for r, _ in closed_answers} <= {
            "auth_unavailable",
            "quota_unavailable",
        }
        assert {r.status_code for r, _ in open_answers} == {200}
        assert max(took for _, took in closed_answers + open_answers) < 1.5

        status, report = _ready(closed)
        assert status == 503
        assert report["redis"] == "unreachable"
        status, report = _ready(opened)
        assert status == 200
        assert report["redis_policy"] == "fail_open"
        assert report["policy_uses"] >= 20

        # the breaker: most of the 20 requests never reached for Redis at all
        errors = [line for line in log_lines(closed) if line.get("event") == "redis_error"]
        assert 0 < len(errors) < 20
        events = {line.get("event") for line in log_lines(opened)}
        assert {"ratelimit_policy_used", "auth_policy_used"} <= events
    finally:
        redis.start()

    # back without a restart of the gateways: enforcement resumes by itself
    def enforced(gateway: ServerProcess) -> bool:
        response, _ = _timed_post(gateway.url, key)
        return response.status_code == 200 and "x-ratelimit-limit-requests" in response.headers

    eventually(timeout=10, check=lambda: enforced(closed) and enforced(opened))
    eventually(timeout=10, check=lambda: _ready(closed)[0] == 200)


def test_an_admission_redis_ran_after_the_timeout_is_undone(
    closed: ServerProcess, redis: RedisServer, secrets_seen: list[str]
) -> None:
    """Redis frozen: the admission times out (503) but runs once Redis thaws; the gateway
    undoes it then, so the refused request holds no slot and no tokens."""
    _, key = create_key(closed.url, secrets_seen, user="thawed")
    assert _timed_post(closed.url, key)[0].status_code == 200
    client = redis.client()
    pending, *scope = [*RedisKeys().limiter("thawed"), *RedisKeys().scope("thawed", "user")][1:]
    _, _, amt, _, conc = scope
    eventually(lambda: client.zcard(conc) == 0 and client.hlen(pending) == 0)
    settled_tokens = int(client.hget(amt, "_sum") or 0)
    with redis.frozen(1):
        refused, _ = _timed_post(closed.url, key)
    assert refused.status_code == 503
    eventually(
        timeout=10,
        check=lambda: (
            client.zcard(conc) == 0
            and client.hlen(pending) == 0
            and int(client.hget(amt, "_sum") or 0) == settled_tokens
        ),
    )


def test_connections_redis_closed_cost_no_request(
    closed: ServerProcess, redis: RedisServer, secrets_seen: list[str]
) -> None:
    """Redis closes the gateway's idle connections (CLIENT KILL, as an idle timeout or a proxy
    would), then restarts: the next requests are all served under fail_closed, none refused
    and no Redis error logged; each pooled connection is found closed and replaced before use."""
    _, key = create_key(closed.url, secrets_seen, user="closed-connections")
    eventually(timeout=10, check=lambda: _timed_post(closed.url, key)[0].status_code == 200)

    def burst() -> list[int]:  # concurrent: several pooled connections in use
        with ThreadPoolExecutor(8) as pool:
            return [
                r.status_code
                for r, _ in pool.map(lambda _: _timed_post(closed.url, key), range(24))
            ]

    assert burst() == [200] * 24
    time.sleep(0.3)  # quiet: the settlements and ledger writes after the answers are done
    errors = len([line for line in log_lines(closed) if line.get("event") == "redis_error"])
    assert redis.client().client_kill_filter(_type="normal", skipme=True) >= 2
    time.sleep(0.2)  # the gateway's event loop sees the connections close
    assert burst() == [200] * 24
    time.sleep(0.3)
    redis.stop()
    redis.start()
    time.sleep(0.2)
    assert burst() == [200] * 24
    assert len([line for line in log_lines(closed) if line.get("event") == "redis_error"]) == errors
