"""Shared fixtures: real upstream and gateway processes on free loopback ports."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from gateway.mock import STEERING_HEADERS as MOCK_STEERING
from tests.support.gateway import (
    ADMIN_KEY,
    CLIENT_KEY,
    PROVIDER_KEY,
    GatewayFactory,
    has_secret,
)
from tests.support.procs import ServerProcess, free_port, python_module
from tests.support.redis_server import RedisServer
from tests.support.scripted_upstream import STEERING_HEADERS as SCRIPTED_STEERING


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
    leaked = [s.log_path for s in started if s.log_path and has_secret(s.log_path, secrets_seen)]
    assert not leaked, f"a secret appeared in gateway logs: {leaked}"


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
