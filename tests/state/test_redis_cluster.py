"""The key paths against a real 3-node Redis Cluster: keys, exact limits, streaming, the ledger.

Two gateway replicas are given one node's URL, an ACL user and its password (from the
environment); the users' keys and quota state land on different nodes. Every script keeps its
keys in one slot: no node may ever answer CROSSSLOT, and no gateway may log a Redis error.
"""

from __future__ import annotations

import asyncio
import functools
import json
import secrets
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import openai
import pytest
import yaml
from redis.asyncio.cluster import RedisCluster

from gateway.mock import STEERING_HEADERS as MOCK_STEERING
from gateway.settings import RedisSettings
from gateway.state import RedisKeys
from gateway.state.client import ClusterConnection, close, connect, ready, unreachable
from tests.support.admin import admin_client, create_key
from tests.support.gateway import GatewayFactory, eventually, log_lines
from tests.support.metrics import scrape, value
from tests.support.procs import ServerProcess, free_port, python_module
from tests.support.redis_cluster import PASSWORD, USER, RedisClusterNodes

pytestmark = pytest.mark.processes  # a Redis Cluster

TIERS = {
    "default": {},
    "rpm50": {"requests_per_minute": 50},
    "tpm": {"tokens_per_minute": 400},
    "conc2": {"concurrent_requests": 2},
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNodes]:
    nodes = RedisClusterNodes(tmp_path_factory.mktemp("cluster")).start()
    yield nodes
    nodes.stop()


@pytest.fixture(scope="module")
def replicas(
    gateway_factory: GatewayFactory,
    cluster: RedisClusterNodes,
    mock_upstream: ServerProcess,
    secrets_seen: list[str],
) -> list[ServerProcess]:
    secrets_seen.append(PASSWORD)
    config = {
        "providers": {
            "mock": {
                "base_url": mock_upstream.url + "/v1",
                "api_key": "${PROVIDER_KEY}",
                "forward_headers": list(MOCK_STEERING),
            }
        },
        "models": [{"name": "mock-gpt", "provider": "mock"}],
        "redis": {
            "mode": "cluster",
            "url": cluster.url,
            "username": "${REDIS_USERNAME}",
            "password": "${REDIS_PASSWORD}",
            "timeout": 5,  # two replicas, three nodes, the client and the upstream on 2 cores
        },
        "auth": {"admin_key": "${ADMIN_KEY}"},
        "limits": {"tiers": TIERS, "default_output_tokens": 20},
        "ledger": {"checkpoint_seconds": 0.2, "orphan_seconds": 1.5},
    }
    env = {"REDIS_USERNAME": USER, "REDIS_PASSWORD": PASSWORD}
    return [gateway_factory(config, env) for _ in range(2)]


@pytest.fixture(autouse=True)
def no_cluster_errors(cluster: RedisClusterNodes, replicas: list[ServerProcess]) -> Iterator[None]:
    """After each test: no node answered CROSSSLOT, MOVED or any other error, no replica logged
    a Redis error (a script's own error included). `ERR` alone is left out of the nodes'
    counts: Redis 7.0 answers it to the CLIENT SETINFO every new connection sends."""
    yield
    errors = {port: codes.keys() - {"ERR"} for port, codes in cluster.error_counts().items()}
    assert errors == {port: set() for port in cluster.ports}
    for replica in replicas:
        events = [line["event"] for line in log_lines(replica)]
        assert not [e for e in events if e.startswith("redis_")], events


def _user(replicas: list[ServerProcess], secrets_seen: list[str], tier: str) -> tuple[str, str]:
    user = f"{tier}-{uuid.uuid4().hex[:8]}"
    _, key = create_key(replicas[0].url, secrets_seen, user=user, tier=tier)
    return user, key


def _users_on_every_node(cluster: RedisClusterNodes, per_node: int) -> list[str]:
    """User names whose quota state lands `per_node` on each node (chosen by their slot)."""
    client, keys = cluster.client(), RedisKeys()
    chosen: dict[int, list[str]] = {port: [] for port in cluster.ports}
    while any(len(users) < per_node for users in chosen.values()):
        user = f"rpm50-{uuid.uuid4().hex[:8]}"
        node = client.get_node_from_key(keys.scope(user, "user")[0])  # type: ignore[no-untyped-call]
        if len(chosen[int(node.port)]) < per_node:
            chosen[int(node.port)].append(user)
    return [user for users in chosen.values() for user in users]


def _nodes_of(cluster: RedisClusterNodes, keys: list[str]) -> set[int]:
    """The ports of the nodes holding `keys` (each key must be there)."""
    client = cluster.client()
    found = set()
    for key in keys:
        port = int(client.get_node_from_key(key).port)  # type: ignore[no-untyped-call]
        assert cluster.node(port).exists(key)
        found.add(port)
    return found


async def _burst(urls: list[str], count: int, key: str) -> list[int]:
    connector = aiohttp.TCPConnector(limit=0)
    headers = {"authorization": f"Bearer {key}"}
    body = {"model": "mock-gpt", "input": "hi"}
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(i: int) -> int:
            url = f"{urls[i % len(urls)]}/v1/responses"
            async with session.post(url, json=body, headers=headers) as response:
                await response.read()
                return response.status

        return await asyncio.gather(*(one(i) for i in range(count)))


def test_limits_are_exact_with_users_on_different_nodes(
    cluster: RedisClusterNodes, replicas: list[ServerProcess], secrets_seen: list[str]
) -> None:
    """Six users, two on each node, 150 concurrent requests each over both replicas, limit
    50/min: exactly 50 each pass, counted on their own node."""
    urls = [r.url for r in replicas]
    users = _users_on_every_node(cluster, per_node=2)
    for user in users:
        _, key = create_key(replicas[0].url, secrets_seen, user=user, tier="rpm50")
        statuses = asyncio.run(_burst(urls, 150, key))
        assert statuses.count(200) == 50
        assert statuses.count(429) == 100
    keys = RedisKeys()
    assert _nodes_of(cluster, [keys.scope(user, "user")[0] for user in users]) == set(cluster.ports)
    client = cluster.client()
    for user in users:
        assert client.zcard(keys.scope(user, "user")[0]) == 50


def test_streams_settle_to_real_usage_and_reach_the_ledger(
    cluster: RedisClusterNodes, replicas: list[ServerProcess], secrets_seen: list[str]
) -> None:
    """Streamed answers through the OpenAI SDK: byte-exact events, the quota settled to the
    provider's usage, the usage ledger and the caller's report agree."""
    user, key = _user(replicas, secrets_seen, "tpm")
    totals = []
    for replica in replicas:
        client = openai.OpenAI(base_url=f"{replica.url}/v1", api_key=key, max_retries=0)
        with client.responses.stream(model="mock-gpt", input="stream please") as stream:
            final = stream.get_final_response()
        assert final.status == "completed"
        assert final.usage is not None
        totals.append(final.usage.total_tokens)
    amounts = RedisKeys().scope(user, "user")[2]  # the minute's reservations, settled
    store = cluster.client()
    eventually(lambda: int(store.hget(amounts, "_sum") or 0) == sum(totals))

    def usage() -> dict[str, Any]:
        response = httpx.get(
            f"{replicas[1].url}/v1/usage", headers={"authorization": f"Bearer {key}"}
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    eventually(lambda: usage()["today"]["total_tokens"] == sum(totals), timeout=10)
    assert usage()["today"]["requests"] == 2
    with admin_client(replicas[0].url) as admin:
        records = admin.get("/admin/usage/records", params={"since": "2000-01-01"})
    assert records.status_code == 200
    mine = [json.loads(line) for line in records.text.splitlines() if user in line]
    assert sorted(r["total_tokens"] for r in mine) == sorted(totals)
    assert all(r["stream"] and r["end"] == "completed" for r in mine)


def test_connections_the_nodes_closed_cost_no_request(
    cluster: RedisClusterNodes, replicas: list[ServerProcess], secrets_seen: list[str]
) -> None:
    """Every node closes the replicas' idle connections (CLIENT KILL, as an idle timeout or a
    node's restart would): the next requests, whose quotas live on all three nodes, are all
    served (fail_closed), and no replica logs a Redis error (the fixture checks). The first
    of them looks its key up on the node of the replicas' URL: there a failed command's
    topology refresh has only dead connections to try (redis-py 8.2 then gave up on the
    command, and the requests got 503)."""
    urls = [r.url for r in replicas]
    users = _users_on_every_node(cluster, per_node=1)
    keys = [create_key(replicas[0].url, secrets_seen, user=user) for user in users]
    client, names = cluster.client(), RedisKeys()

    def on_the_urls_node(key_id: str) -> bool:
        node = client.get_node_from_key(names.key_record(key_id))  # type: ignore[no-untyped-call]
        return int(node.port) == cluster.ports[0]

    while not on_the_urls_node(keys[0][0]):
        keys[0] = create_key(replicas[0].url, secrets_seen, user=users[0])
    for _, key in keys:
        assert asyncio.run(_burst(urls, 24, key)) == [200] * 24
    time.sleep(1.1)  # quiet: settlements and ledger writes done; a refresh is due (1 s apart)
    killed = [cluster.node(port).client_kill_filter(_type="normal") for port in cluster.ports]
    assert all(n >= 1 for n in killed)
    time.sleep(0.2)  # the replicas' event loops see the connections close
    for _, key in keys:
        assert asyncio.run(_burst(urls, 24, key)) == [200] * 24


def test_redis_py_hands_out_no_cluster_connection_a_node_closed(
    cluster: RedisClusterNodes,
) -> None:
    """The contract `gateway/state/client.py`'s `checked_connections` has with redis-py: every node
    of the
    gateway's Cluster client, the one of its URL (only topology refreshes use it) and those it
    discovered, makes `ClusterConnection`s; one the node closed says so (`should_reconnect`),
    and the node's next command, which asks, reconnects instead of failing. A redis-py that
    builds its connections elsewhere or stops asking fails here, by name."""

    async def run() -> list[Any]:
        settings = RedisSettings(
            mode="cluster", url=cluster.url, username=USER, password=PASSWORD, timeout=5
        )
        client = connect(settings, cluster.url)
        assert isinstance(client, RedisCluster)
        try:
            await ready(client)
            nodes = [*client.nodes_manager.startup_nodes.values(), *client.get_nodes()]
            nodes = list({id(node): node for node in nodes}.values())
            assert len(nodes) == len(cluster.ports) + 1, "the URL's node is one of its own"
            for node in nodes:
                await node.execute_command("PING")  # each has a connection, all sit in the pool
            pooled = [conn for node in nodes for conn in node._connections]
            checked = [conn for conn in pooled if isinstance(conn, ClusterConnection)]
            assert checked == pooled
            for conn in checked:
                await conn.send_command("CLIENT", "ID")
                port = int(conn.port)
                assert cluster.node(port).client_kill_filter(_id=await conn.read_response()) == 1
            deadline = time.monotonic() + 5
            while not all(conn.should_reconnect() for conn in checked):
                assert time.monotonic() < deadline, "a connection the node closed looks open"
                await asyncio.sleep(0.01)  # until this loop has read the ends of file
            return [await node.execute_command("PING") for node in nodes]
        finally:
            await close(client)

    assert asyncio.run(run()) == [True] * (len(cluster.ports) + 1)


def test_redis_py_refreshes_the_topology_when_told_a_node_was_unreachable(
    cluster: RedisClusterNodes,
) -> None:
    """The contract `gateway/state/client.py`'s `unreachable` has with redis-py: told, the gateway's
    Cluster
    client asks the nodes for their slots again before its next command, and not untold
    (redis-py runs such refreshes at most once a second). A redis-py that reads another flag
    fails here, by name."""

    def asked() -> int:
        stats = [cluster.node(port).info("commandstats") for port in cluster.ports]
        return sum(int(s.get("cmdstat_cluster|slots", {}).get("calls", 0)) for s in stats)

    async def run() -> tuple[int, int, int]:
        settings = RedisSettings(
            mode="cluster", url=cluster.url, username=USER, password=PASSWORD, timeout=5
        )
        client = connect(settings, cluster.url)
        try:
            await ready(client)
            await asyncio.sleep(1.1)  # a second after the first refresh: another may run
            before = asked()
            await client.get("gw:refresh-test")
            untold = asked()
            unreachable(client)
            await client.get("gw:refresh-test")
            return before, untold, asked()
        finally:
            await close(client)

    before, untold, told = asyncio.run(run())
    assert untold == before
    assert told == untold + 1


def test_metrics_read_the_memory_of_the_ledgers_node(
    cluster: RedisClusterNodes, replicas: list[ServerProcess]
) -> None:
    """`/metrics` reads `INFO memory` from the node holding the ledger stream (the one the
    ledger grows), through the ACL user; each node is given its own maxmemory here."""
    stream = RedisKeys().ledger_stream()
    ledger_port = int(cluster.client().get_node_from_key(stream).port)  # type: ignore[no-untyped-call]
    limits = {port: (300 + i) * 2**20 for i, port in enumerate(cluster.ports)}
    try:
        for port, limit in limits.items():
            cluster.node(port).config_set("maxmemory", limit)
        for replica in replicas:
            found = scrape(replica.url)
            assert value(found, "gateway_redis_memory_max_bytes") == limits[ledger_port]
            used = int(cluster.node(ledger_port).info("memory")["used_memory"])
            assert abs(value(found, "gateway_redis_memory_used_bytes") - used) < 2**20
    finally:
        for port in cluster.ports:
            cluster.node(port).config_set("maxmemory", 0)


def test_slots_and_revocation_across_replicas(
    cluster: RedisClusterNodes,
    replicas: list[ServerProcess],
    secrets_seen: list[str],
) -> None:
    """Two slow streams hold both concurrency slots: a third request is refused on the other
    replica, admitted once they end; a revoked key is refused by both replicas."""
    user = f"conc2-{uuid.uuid4().hex[:8]}"
    key_id, key = create_key(replicas[0].url, secrets_seen, user=user, tier="conc2")
    slots = RedisKeys().scope(user, "user")[4]
    store = cluster.client()
    headers = {"authorization": f"Bearer {key}"}
    body = {"model": "mock-gpt", "input": "slow", "stream": True}

    async def scenario() -> tuple[list[int], int, int]:
        async with httpx.AsyncClient(timeout=30) as client:
            slow = {**headers, "x-mock-ttft-ms": "3000"}
            running = [
                asyncio.create_task(client.post(f"{r.url}/v1/responses", json=body, headers=slow))
                for r in replicas
            ]
            # until both are admitted (and wait for their first token)
            await asyncio.to_thread(eventually, lambda: store.zcard(slots) == 2, 2.5)
            third = await client.post(f"{replicas[1].url}/v1/responses", json=body, headers=headers)
            done = await asyncio.gather(*running)
            after = await client.post(f"{replicas[0].url}/v1/responses", json=body, headers=headers)
            return [r.status_code for r in done], third.status_code, after.status_code

    ended, third, after = asyncio.run(scenario())
    assert ended == [200, 200]
    assert third == 429
    assert after == 200

    with admin_client(replicas[1].url) as admin:
        assert admin.delete(f"/admin/keys/{key_id}").status_code == 200

    def refused(url: str) -> bool:
        body = {"model": "mock-gpt", "input": "x"}
        return httpx.post(f"{url}/v1/responses", json=body, headers=headers).status_code == 401

    for replica in replicas:
        eventually(functools.partial(refused, replica.url))


def test_a_cluster_down_at_start_is_the_failure_policy_not_a_crash(
    gateway_factory: GatewayFactory, mock_upstream: ServerProcess, tmp_path: Path
) -> None:
    """No node answers: the gateway still starts, is not ready (fail_closed), and answers 503
    in the OpenAI shape instead of crashing or answering 500."""
    config = {
        "providers": {"mock": {"base_url": mock_upstream.url + "/v1", "api_key": "k"}},
        "models": [{"name": "mock-gpt", "provider": "mock"}],
        "redis": {"mode": "cluster", "url": f"redis://127.0.0.1:{free_port()}", "timeout": 0.5},
        "auth": {"admin_key": "${ADMIN_KEY}"},
    }
    config_path = tmp_path / "gateway.yaml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    argv = python_module("gateway", "serve", "--config", str(config_path), "--port", str(port))
    env = {"ADMIN_KEY": "admin-key-of-this-test"}
    with ServerProcess(argv, port, ready_path="/healthz", env=env).start(tmp_path / "g.log") as gw:
        ready = httpx.get(f"{gw.url}/readyz", timeout=5)
        assert ready.status_code == 503
        assert ready.json()["redis"] == "unreachable"
        answer = httpx.post(
            f"{gw.url}/v1/responses",
            json={"model": "mock-gpt", "input": "hi"},
            headers={"authorization": f"Bearer sk-gw-kabcdefghijkl_{secrets.token_urlsafe(32)}"},
            timeout=5,
        )
        assert answer.status_code == 503
        assert answer.json()["error"]["code"] == "auth_unavailable"
