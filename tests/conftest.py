"""Shared fixtures: real upstream and gateway processes on free loopback ports."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.mock import STEERING_HEADERS as MOCK_STEERING
from tests.support.procs import ServerProcess, free_port, python_module
from tests.support.redis_server import RedisServer
from tests.support.scripted_upstream import STEERING_HEADERS as SCRIPTED_STEERING

PROVIDER_KEY = "sk-provider-Zx81secretvalue-never-logged"
"""The provider key every test gateway injects upstream; it must never reach a client or log."""
CLIENT_KEY = "sk-client-Q7secret-never-forwarded"
ADMIN_KEY = "sk-admin-test-Vq3secret-never-logged"
"""The admin credential of every test gateway that serves /admin."""


@pytest.fixture(scope="session")
def scripted_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The test-scripted upstream (tests/support/scripted_upstream.py) in its own process."""
    port = free_port()
    server = ServerProcess(python_module("tests.support.scripted_upstream", str(port)), port)
    server.start(tmp_path_factory.mktemp("scripted") / "upstream.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mock_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The product's own upstream (gateway.mock) in its own process."""
    port = free_port()
    argv = python_module("gateway.mock", "--host", "127.0.0.1", "--port", str(port))
    server = ServerProcess(argv, port)
    server.start(tmp_path_factory.mktemp("mock") / "mock.log")
    yield server
    server.stop()


GatewayFactory = Callable[..., ServerProcess]


@pytest.fixture(scope="session")
def secrets_seen() -> list[str]:
    """Credentials tests issued or used (API keys, JWTs): no gateway log may contain one."""
    return [PROVIDER_KEY, CLIENT_KEY, ADMIN_KEY]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server shared by the session's gateways (tests use distinct users)."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def gateway_factory(
    tmp_path_factory: pytest.TempPathFactory, secrets_seen: list[str]
) -> Iterator[GatewayFactory]:
    """Start `gateway serve --config FILE` processes from mappings; stop them all at the end."""
    started: list[ServerProcess] = []

    def start(config: dict[str, Any], env: dict[str, str] | None = None) -> ServerProcess:
        folder = tmp_path_factory.mktemp("gateway")
        config_path = folder / "gateway.yaml"
        config_path.write_text(yaml.safe_dump(config))
        port = free_port()
        argv = python_module("gateway", "serve", "--config", str(config_path), "--port", str(port))
        env = {"PROVIDER_KEY": PROVIDER_KEY, "ADMIN_KEY": ADMIN_KEY, **(env or {})}
        server = ServerProcess(argv, port, ready_path="/readyz", env=env)
        started.append(server)
        return server.start(folder / "gateway.log")

    yield start
    for server in started:
        server.stop()
    leaked = [s.log_path for s in started if s.log_path and _has_secret(s.log_path, secrets_seen)]
    assert not leaked, f"a secret appeared in gateway logs: {leaked}"


def _has_secret(path: Path, secrets: list[str]) -> bool:
    """A secret, or its last 20 characters (a key's secret part, a token's signature)."""
    text = path.read_text(errors="replace")
    return any(secret in text or secret[-20:] in text for secret in secrets)


@pytest.fixture(scope="session")
def gateway(gateway_factory: GatewayFactory, scripted_upstream: ServerProcess) -> ServerProcess:
    """A gateway in front of the scripted upstream (and a provider nobody listens for)."""
    return gateway_factory(
        {
            "providers": {
                "scripted": {
                    "base_url": scripted_upstream.url + "/v1",
                    "api_key": "${PROVIDER_KEY}",
                    "read_timeout": 3,
                    "forward_headers": list(SCRIPTED_STEERING),
                },
                "strict": {
                    "base_url": scripted_upstream.url + "/v1",
                    "api_key": "${PROVIDER_KEY}",
                    "drop_fields": ["stop", "stream_options"],
                    "forward_headers": list(SCRIPTED_STEERING),
                },
                "nowhere": {"base_url": f"http://127.0.0.1:{free_port()}/v1", "api_key": "k"},
            },
            "models": [
                {"name": "scripted", "provider": "scripted"},
                {"name": "renamed", "provider": "scripted", "upstream_model": "upstream-name"},
                {"name": "strict", "provider": "strict"},
                {"name": "nowhere", "provider": "nowhere"},
            ],
            "server": {"max_body_bytes": 1024 * 1024},
            "auth": {"enabled": False},  # this gateway tests proxying; test_auth tests keys
        }
    )


@pytest.fixture(scope="session")
def mock_gateway(gateway_factory: GatewayFactory, mock_upstream: ServerProcess) -> ServerProcess:
    """A gateway in front of the product's own upstream, `gateway.mock`, in its own process."""
    return gateway_factory(
        {
            "providers": {
                "mock": {
                    "base_url": mock_upstream.url + "/v1",
                    "api_key": "${PROVIDER_KEY}",
                    "forward_headers": list(MOCK_STEERING),
                }
            },
            "models": [{"name": "mock-gpt", "provider": "mock"}],
            "auth": {"enabled": False},
        }
    )


def upstream_requests(upstream: ServerProcess) -> list[dict[str, Any]]:
    """What the scripted upstream received so far."""
    import urllib.request

    with urllib.request.urlopen(upstream.url + "/_requests") as resp:  # noqa: S310
        return list(json.load(resp))


def log_lines(server: ServerProcess) -> list[dict[str, Any]]:
    """The JSON lines a gateway process wrote to stdout."""
    complete = server.output().split("\n")[:-1]  # the last piece may still be being written
    return [json.loads(line) for line in complete if line.startswith("{")]


def request_line(server: ServerProcess, timeout: float = 5.0, **fields: Any) -> dict[str, Any]:
    """The first canonical request line with these `fields`; it is written just after the
    answer, so wait for it a little."""
    deadline = time.monotonic() + timeout
    while True:
        for line in log_lines(server):
            if line.get("event") == "request" and all(line.get(k) == v for k, v in fields.items()):
                return line
        if time.monotonic() > deadline:
            raise AssertionError(f"no request line with {fields} in {server.log_path}")
        time.sleep(0.02)


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait for `check` to hold: settlements and log lines are written just after the answer,
    and recoveries take a breaker cooldown."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached within {timeout} s")
        time.sleep(0.02)
