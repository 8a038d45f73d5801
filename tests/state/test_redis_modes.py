"""Redis reached as production runs it: over mutual TLS with an ACL user, and through Sentinel
across a failover. Real redis-server processes (the Sentinel is `redis-server --sentinel`)."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import trustme
import yaml

from tests.support.admin import create_key
from tests.support.gateway import GatewayFactory, eventually
from tests.support.ledger import ledger_lines
from tests.support.metrics import scrape, value
from tests.support.procs import ServerProcess, free_port, python_module
from tests.support.redis_server import GATEWAY_ACL

pytestmark = pytest.mark.processes  # TLS and Sentinel redis-servers

USER, PASSWORD = "gateway", "modes-acl-pass-5d8a"
REPLICATION_USER, REPLICATION_PASSWORD = "replication", "modes-repl-pass-c41e"
"""Replicas and the Sentinel log in as this user: they need what the gateway's user may not."""
ADMIN_PASSWORD = "modes-admin-pass-2b7c"


def _redis(folder: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    assert binary is not None, "`make test` installs redis-server"
    folder.mkdir(parents=True, exist_ok=True)
    argv = [
        binary, *extra,
        "--bind", "127.0.0.1",
        "--save", "", "--appendonly", "no",
        "--requirepass", ADMIN_PASSWORD,
        "--user", USER, "on", f">{PASSWORD}", *GATEWAY_ACL,
        "--user", REPLICATION_USER, "on", f">{REPLICATION_PASSWORD}", "~*", "&*", "+@all",
        "--dir", str(folder), "--logfile", str(folder / "redis.log"),
    ]  # fmt: skip
    if "--port" not in extra:
        argv += ["--port", str(port)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603


def _wait(check: Any, what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (redis.RedisError, OSError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not come up")


def _config(mock_url: str, redis_settings: dict[str, Any]) -> dict[str, Any]:
    return {
        "providers": {"mock": {"base_url": mock_url + "/v1", "api_key": "${PROVIDER_KEY}"}},
        "models": [{"name": "mock-gpt", "provider": "mock"}],
        "redis": {"username": USER, "password": "${REDIS_PASSWORD}", **redis_settings},
        "auth": {"admin_key": "${ADMIN_KEY}"},
        "limits": {"tiers": {"default": {"requests_per_minute": 5}}},
    }


def _five_then_refused(url: str, key: str) -> list[int]:
    headers = {"authorization": f"Bearer {key}"}
    body = {"model": "mock-gpt", "input": "hi"}
    return [
        httpx.post(f"{url}/v1/responses", json=body, headers=headers, timeout=10).status_code
        for _ in range(6)
    ]


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A redis-server that speaks only TLS and wants a client certificate signed by its CA."""
    folder = tmp_path_factory.mktemp("redis-tls")
    ca = trustme.CA()
    server, client = ca.issue_cert("127.0.0.1"), ca.issue_cert("gateway-client")
    files = {name: folder / f"{name}.pem" for name in ("ca", "cert", "key", "ccert", "ckey")}
    ca.cert_pem.write_to_path(str(files["ca"]))
    server.cert_chain_pems[0].write_to_path(str(files["cert"]))
    server.private_key_pem.write_to_path(str(files["key"]))
    client.cert_chain_pems[0].write_to_path(str(files["ccert"]))
    client.private_key_pem.write_to_path(str(files["ckey"]))
    port = free_port()
    proc = _redis(
        folder / "data", port,
        "--port", "0", "--tls-port", str(port),
        "--tls-cert-file", str(files["cert"]), "--tls-key-file", str(files["key"]),
        "--tls-ca-cert-file", str(files["ca"]), "--tls-auth-clients", "yes",
    )  # fmt: skip
    admin = redis.Redis(
        host="127.0.0.1", port=port, password=ADMIN_PASSWORD, ssl=True,
        ssl_ca_certs=str(files["ca"]), ssl_certfile=str(files["ccert"]),
        ssl_keyfile=str(files["ckey"]), decode_responses=True,
    )  # fmt: skip
    _wait(admin.ping, "redis-server over TLS")
    yield {"port": port, "files": files, "admin": admin}
    proc.kill()
    proc.wait()


def test_mutual_tls_and_an_acl_user(
    gateway_factory: GatewayFactory,
    tls_redis: dict[str, Any],
    mock_upstream: ServerProcess,
    secrets_seen: list[str],
) -> None:
    """Keys, exact limits and the ledger over mutual TLS, as an ACL user whose password comes
    from the environment; the connections Redis sees are that user's, over TLS."""
    files = tls_redis["files"]
    secrets_seen.append(PASSWORD)
    tls = {
        "ca_file": str(files["ca"]),
        "cert_file": str(files["ccert"]),
        "key_file": str(files["ckey"]),
    }
    config = _config(
        mock_upstream.url, {"url": f"rediss://127.0.0.1:{tls_redis['port']}/0", "tls": tls}
    )
    gateway = gateway_factory(config, env={"REDIS_PASSWORD": PASSWORD})
    user = f"tls-{uuid.uuid4().hex[:8]}"
    _, key = create_key(gateway.url, secrets_seen, user=user)
    assert _five_then_refused(gateway.url, key) == [200] * 5 + [429]
    admin: redis.Redis = tls_redis["admin"]
    clients = admin.client_list()
    assert any(c["user"] == USER for c in clients)
    eventually(lambda: len(ledger_lines(admin)) >= 6)
    admin.config_set("maxmemory", 200 * 2**20)
    found = scrape(gateway.url)  # INFO memory, allowed by the ACL
    assert value(found, "gateway_redis_memory_max_bytes") == 200 * 2**20
    assert "redis_error" not in gateway.output()


def test_tls_without_the_client_certificate_is_not_ready(
    gateway_factory: GatewayFactory,
    tls_redis: dict[str, Any],
    mock_upstream: ServerProcess,
    tmp_path: Path,
) -> None:
    """The server wants a client certificate: without one the gateway starts, says Redis is
    unreachable (fail_closed: not ready, 503), and never leaks the password."""
    tls = {"ca_file": str(tls_redis["files"]["ca"])}
    config = _config(
        mock_upstream.url, {"url": f"rediss://127.0.0.1:{tls_redis['port']}/0", "tls": tls}
    )
    config["redis"]["timeout"] = 0.5
    port = free_port()
    folder = tmp_path / "gw"
    folder.mkdir()
    (folder / "gateway.yaml").write_text(yaml.safe_dump(config))
    argv = python_module(
        "gateway", "serve", "--config", str(folder / "gateway.yaml"), "--port", str(port)
    )
    server = ServerProcess(
        argv,
        port,
        ready_path="/healthz",
        env={"PROVIDER_KEY": "p", "ADMIN_KEY": "a" * 20, "REDIS_PASSWORD": PASSWORD},
    )
    with server.start(folder / "gateway.log"):
        ready = httpx.get(f"{server.url}/readyz")
        assert ready.status_code == 503
        assert ready.json()["redis"] == "unreachable"
    assert PASSWORD not in server.output()


@pytest.fixture(scope="module")
def sentinel_setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A primary, its replica, and one Sentinel watching them (quorum 1)."""
    folder = tmp_path_factory.mktemp("sentinel")
    primary_port, replica_port, sentinel_port = free_port(), free_port(), free_port()
    auth = ["--masteruser", REPLICATION_USER, "--masterauth", REPLICATION_PASSWORD]
    procs = [
        _redis(folder / "primary", primary_port, *auth),
        _redis(
            folder / "replica", replica_port, *auth, "--replicaof", "127.0.0.1", str(primary_port)
        ),
    ]
    conf = folder / "sentinel.conf"
    conf.write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\ndir {folder}\n"
        f"sentinel monitor main 127.0.0.1 {primary_port} 1\n"
        f"sentinel auth-user main {REPLICATION_USER}\n"
        f"sentinel auth-pass main {REPLICATION_PASSWORD}\n"
        "sentinel down-after-milliseconds main 1000\nsentinel failover-timeout main 5000\n"
    )
    binary = shutil.which("redis-server")
    assert binary is not None
    procs.append(
        subprocess.Popen(  # noqa: S603
            [binary, str(conf), "--sentinel", "--logfile", str(folder / "sentinel.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )
    sentinel = redis.Redis(host="127.0.0.1", port=sentinel_port, decode_responses=True)

    def replica_known() -> bool:
        replicas: list[dict[str, Any]] = sentinel.sentinel_slaves("main")
        return any(r["flags"] == "slave" and r["master-link-status"] == "ok" for r in replicas)

    _wait(replica_known, "the Sentinel's view of the replica", timeout=20)
    yield {"sentinel": sentinel, "port": sentinel_port, "ports": (primary_port, replica_port)}
    for proc in procs:
        proc.kill()
        proc.wait()


def test_sentinel_follows_a_failover(
    gateway_factory: GatewayFactory,
    sentinel_setup: dict[str, Any],
    mock_upstream: ServerProcess,
    secrets_seen: list[str],
) -> None:
    """Through the Sentinel to the primary; after a failover the same gateway writes to the
    promoted replica, and the quota counted before the failover still holds there."""
    secrets_seen.append(PASSWORD)
    redis_settings = {
        "mode": "sentinel",
        "sentinels": [f"127.0.0.1:{sentinel_setup['port']}"],
        "sentinel_master": "main",
        "timeout": 2,
    }
    gateway = gateway_factory(
        _config(mock_upstream.url, redis_settings), env={"REDIS_PASSWORD": PASSWORD}
    )
    user = f"sentinel-{uuid.uuid4().hex[:8]}"
    _, key = create_key(gateway.url, secrets_seen, user=user)
    headers = {"authorization": f"Bearer {key}"}
    body = {"model": "mock-gpt", "input": "hi"}
    for _ in range(3):
        assert (
            httpx.post(f"{gateway.url}/v1/responses", json=body, headers=headers).status_code == 200
        )

    sentinel: redis.Redis = sentinel_setup["sentinel"]
    before = sentinel.sentinel_get_master_addr_by_name("main")
    time.sleep(0.5)  # the replica has the 3 admissions (replication is asynchronous)
    sentinel.execute_command("SENTINEL", "FAILOVER", "main")  # type: ignore[no-untyped-call]

    def moved() -> bool:
        now = sentinel.sentinel_get_master_addr_by_name("main")
        return bool(now and now != before)

    eventually(moved, timeout=20)

    def served() -> int:
        return httpx.post(f"{gateway.url}/v1/responses", json=body, headers=headers).status_code

    statuses: list[int] = []
    deadline = time.monotonic() + 20
    while len([s for s in statuses if s in (200, 429)]) < 3 and time.monotonic() < deadline:
        statuses.append(served())
    assert [s for s in statuses if s in (200, 429)] == [200, 200, 429]  # 5 a minute, 3 before
