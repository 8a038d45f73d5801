"""Shared fixtures: real upstream and gateway processes on free loopback ports; and the
`processes` marker, which `make test-fast` leaves out, kept on every test that starts one."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
from collections.abc import Callable, Generator, Iterator
from contextlib import ExitStack
from typing import Any, NoReturn

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

PROCESS_FIXTURES = (
    "scripted_upstream",
    "mock_upstream",
    "redis_server",
    "gateway_factory",
    "gateway",
    "mock_gateway",
)
"""The fixtures here that start a process: a test that needs one, directly or through another
fixture, is marked `processes` (and left out of `make test-fast`). A module that starts
processes itself says so with `pytestmark = pytest.mark.processes`; an unmarked test that
starts one anyway fails, naming the marker (`_refuse_processes`)."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `processes` every test whose fixture closure holds a process-starting fixture."""
    for item in items:
        if any(name in PROCESS_FIXTURES for name in getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.processes)


# The openai SDK sends the platform in its headers, and platform asks `uname -p` for it once
# per interpreter: asked here, that is no test's process.
platform.processor()


def _refuse_processes(item: pytest.Item) -> ExitStack:
    """While entered, starting a process fails the unmarked `item`, naming the marker it lacks:
    a forgotten `processes` shows at once, not as a `make test-fast` that is no longer fast."""
    stack = ExitStack()
    if item.get_closest_marker("processes") is not None:
        return stack

    def refuse(what: str) -> Callable[..., NoReturn]:
        def refused(*args: Any, **kwargs: Any) -> NoReturn:
            pytest.fail(
                f"{item.nodeid} starts a process ({what}) but is not marked `processes`: add "
                "`pytestmark = pytest.mark.processes` to its module, or have it use a fixture "
                "of PROCESS_FIXTURES in tests/conftest.py",
                pytrace=False,
            )

        return refused

    def popen(popen: subprocess.Popen[Any], argv: Any, *args: Any, **kwargs: Any) -> NoReturn:
        refuse(f"`{argv if isinstance(argv, str) else shlex.join(map(str, argv))}`")()

    patch = stack.enter_context(pytest.MonkeyPatch.context())
    patch.setattr(subprocess.Popen, "_execute_child", popen)  # subprocess.*, asyncio's too
    for name in ("fork", "system", "posix_spawn", "posix_spawnp"):
        patch.setattr(os, name, refuse(f"os.{name}"), raising=False)
    return stack


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    """Fixtures an unmarked test sets up start no process (teardown may stop some: not guarded)."""
    with _refuse_processes(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """An unmarked test itself starts no process."""
    with _refuse_processes(item):
        return (yield)


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
