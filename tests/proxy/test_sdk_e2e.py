"""The official OpenAI SDK, pointed at the gateway in front of the product's own upstream."""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest
from openai.types.responses import FunctionToolParam

from tests.support.procs import ServerProcess

TOOLS: list[FunctionToolParam] = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "celsius": {"type": "boolean"}},
            "required": ["city", "celsius"],
            "additionalProperties": False,
        },
        "strict": True,
    }
]


@pytest.fixture
def client(mock_gateway: ServerProcess) -> Iterator[openai.OpenAI]:
    """An SDK client with retries off, so every failure shows."""
    with openai.OpenAI(
        base_url=mock_gateway.url + "/v1", api_key="sk-client-test", max_retries=0
    ) as sdk:
        yield sdk


def test_create_plain(client: openai.OpenAI) -> None:
    """A plain `responses.create` returns the upstream's answer with consistent usage."""
    response = client.responses.create(
        model="mock-gpt", input="Say hello", instructions="Be brief", metadata={"team": "qa"}
    )
    assert response.status == "completed"
    assert response.output_text
    assert response.usage is not None
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    assert response.usage.output_tokens > 0


def test_create_streamed(client: openai.OpenAI) -> None:
    """`create(stream=True)` yields ordered events whose deltas make the final text."""
    events = list(client.responses.create(model="mock-gpt", input="Say hello", stream=True))
    types = [e.type for e in events]
    assert types[0] == "response.created"
    assert types[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    final = events[-1].response  # type: ignore[union-attr]
    assert "".join(deltas) == final.output_text
    assert final.usage is not None
    assert final.usage.output_tokens == len(deltas)


def test_create_with_function_tools(client: openai.OpenAI) -> None:
    """With function tools the answer is a function call with JSON arguments."""
    response = client.responses.create(
        model="mock-gpt",
        input="What's the weather in Paris?",
        tools=TOOLS,
        tool_choice="required",
    )
    calls = [item for item in response.output if item.type == "function_call"]
    assert len(calls) == 1
    assert calls[0].name == "get_weather"
    assert set(json.loads(calls[0].arguments)) == {"city", "celsius"}


def test_stream_helper_final_response(client: openai.OpenAI) -> None:
    """`responses.stream(...).get_final_response()` works through the gateway."""
    with client.responses.stream(model="mock-gpt", input="Say hello") as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert final.status == "completed"
    assert final.output_text == text


def test_stream_helper_with_tools(client: openai.OpenAI) -> None:
    """The stream helper assembles a streamed function call's arguments."""
    with client.responses.stream(
        model="mock-gpt",
        input="Weather in Oslo?",
        tools=TOOLS,
        tool_choice="required",
    ) as stream:
        final = stream.get_final_response()
    calls = [item for item in final.output if item.type == "function_call"]
    assert calls
    assert json.loads(calls[0].arguments)["city"]


def test_incomplete_at_max_output_tokens(client: openai.OpenAI) -> None:
    """A capped answer comes back `incomplete` with the reason, streamed or not."""
    response = client.responses.create(
        model="mock-gpt", input="Tell me a long story about a cat", max_output_tokens=16
    )
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"


def test_errors_map_to_sdk_exceptions(client: openai.OpenAI) -> None:
    """Gateway errors arrive as the SDK's typed exceptions with code and param."""
    with pytest.raises(openai.NotFoundError) as not_found:
        client.responses.create(model="no-such-model", input="x")
    assert not_found.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.responses.create(model="mock-gpt", input="x", temperature=3)
    assert bad.value.param == "temperature"


def test_upstream_rate_limit_passes_through(client: openai.OpenAI) -> None:
    """An upstream 429 reaches the SDK as RateLimitError with its Retry-After."""
    with pytest.raises(openai.RateLimitError) as limited:
        client.responses.create(
            model="mock-gpt", input="x", extra_headers={"x-mock-fault": "status=429"}
        )
    assert limited.value.response.headers["retry-after"] == "1"


def test_mid_stream_drop_raises_in_sdk(client: openai.OpenAI) -> None:
    """A stream the upstream drops ends in APIConnectionError, after a spec `error` event."""
    seen: list[str] = []
    events = client.responses.create(
        model="mock-gpt", input="x", stream=True, extra_headers={"x-mock-fault": "drop-after=4"}
    )
    with pytest.raises(openai.APIConnectionError):  # noqa: PT012  (the failure ends the loop)
        for event in events:
            seen.append(event.type)
    assert seen == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "error",
    ]
