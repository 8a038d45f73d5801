"""`gateway serve` with no configuration works out of the box with the embedded upstream."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.support.procs import ServerProcess, free_port, python_module


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


def test_embedded_upstream_answers(quickstart: ServerProcess) -> None:
    """The quickstart model answers plain and streamed requests through the gateway."""
    with openai.OpenAI(base_url=quickstart.url + "/v1", api_key="unused", max_retries=0) as sdk:
        assert [m.id for m in sdk.models.list()] == ["mock-gpt"]
        plain = sdk.responses.create(model="mock-gpt", input="Say hello")
        assert "Say hello" in plain.output_text
        with sdk.responses.stream(model="mock-gpt", input="Say hello") as stream:
            final = stream.get_final_response()
    assert final.output_text == plain.output_text
