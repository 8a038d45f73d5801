"""`gateway serve` with no configuration works out of the box: embedded upstream, private
Redis, a demo key printed in the banner."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.procs import ServerProcess, free_port, python_module

pytestmark = pytest.mark.processes  # `gateway serve` without a config


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The gateway started exactly as `make run` starts it, on a free port."""
    port = free_port()
    server = ServerProcess(
        python_module("gateway", "serve", "--port", str(port)), port, ready_path="/readyz"
    )
    server.start(Path(tmp_path_factory.mktemp("quickstart")) / "gateway.log")
    yield server
    server.stop()


def test_banner_prints_ready_examples(quickstart: ServerProcess) -> None:
    """The banner shows a curl command and an SDK snippet for the served model."""
    output = quickstart.output()
    assert f"curl -s http://127.0.0.1:{quickstart.port}/v1/responses" in output
    assert f'OpenAI(base_url="http://127.0.0.1:{quickstart.port}/v1"' in output
    assert "embedded_upstream_started" in output
    assert "embedded_redis_started" in output
    assert f"Bearer {_demo_key(quickstart)}" in output


def _demo_key(quickstart: ServerProcess) -> str:
    match = re.search(r"Demo API key \(user `demo`\): (sk-gw-\S+)", quickstart.output())
    assert match is not None, quickstart.output()
    return match.group(1)


def test_demo_key_is_required_and_quota_applies(quickstart: ServerProcess) -> None:
    """Without the key: 401; with it: an answer carrying the quickstart tier's quota."""
    body = {"model": "mock-gpt", "input": "hi"}
    refused = httpx.post(f"{quickstart.url}/v1/responses", json=body)
    assert refused.status_code == 401
    headers = {"authorization": f"Bearer {_demo_key(quickstart)}"}
    answer = httpx.post(f"{quickstart.url}/v1/responses", json=body, headers=headers)
    assert answer.status_code == 200
    assert answer.headers["x-ratelimit-limit-requests"] == "60"
    assert answer.headers["x-ratelimit-limit-tokens"] == "200000"


def test_embedded_upstream_answers(quickstart: ServerProcess) -> None:
    """The quickstart model answers plain and streamed requests through the gateway."""
    key = _demo_key(quickstart)
    with openai.OpenAI(base_url=quickstart.url + "/v1", api_key=key, max_retries=0) as sdk:
        assert [m.id for m in sdk.models.list()] == ["mock-gpt"]
        plain = sdk.responses.create(model="mock-gpt", input="Say hello")
        assert "Say hello" in plain.output_text
        with sdk.responses.stream(model="mock-gpt", input="Say hello") as stream:
            final = stream.get_final_response()
    assert final.output_text == plain.output_text
