"""The product's own upstream (`gateway.mock`) speaks /v1/responses like OpenAI, and its
steering headers and faults do what they say.

Most tests drive a real `python -m gateway.mock` process with the official `openai` SDK; the
wire-level ones read raw bytes with httpx or a plain socket.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import quote

import anyio
import httpx
import openai
import pytest
from openai.types.responses import (
    FunctionToolParam,
    Response,
    ResponseCompletedEvent,
    ResponseCreatedEvent,
    ResponseFunctionCallArgumentsDeltaEvent,
    ResponseFunctionCallArgumentsDoneEvent,
    ResponseFunctionToolCall,
    ResponseIncompleteEvent,
    ResponseInProgressEvent,
    ResponseOutputItemAddedEvent,
    ResponseOutputMessage,
    ResponseStreamEvent,
    ResponseTextDeltaEvent,
    ResponseTextDoneEvent,
)

from gateway.mock import MockSettings, count_tokens, start_mock_server, tokenize
from tests.support.procs import ServerProcess, free_port, python_module

pytestmark = pytest.mark.processes  # gateway.mock in its own process

MODEL = "mock-gpt"
MULTIBYTE = "héllo wörld 😀 日本語"
WEATHER_TOOL: FunctionToolParam = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "days": {"type": "integer"},
            "ratio": {"type": "number"},
            "metric": {"type": "boolean"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "tags": {"type": "array", "items": {"type": "string"}},
            "where": {"type": "object", "properties": {"lat": {"type": "number"}}},
            "note": {"type": ["string", "null"]},
        },
        "required": ["city"],
    },
    "strict": False,
}
WEATHER_ARGUMENTS = {
    "city": "example",
    "days": 1,
    "ratio": 1,
    "metric": True,
    "unit": "celsius",
    "tags": ["example"],
    "where": {"lat": 1},
    "note": "example",
}
TEXT_ORDER = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",  # x N, collapsed by `_collapsed`
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
]
CALL_ORDER = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
    "response.output_item.done",
    "response.completed",
]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """`python -m gateway.mock` on a free port; afterwards its log must hold no traceback."""
    port = free_port()
    argv = python_module("gateway.mock", "--host", "127.0.0.1", "--port", str(port))
    server = ServerProcess(argv, port)
    server.start(tmp_path_factory.mktemp("mock_upstream") / "mock.log")
    yield server
    server.stop()
    assert "Traceback" not in server.output(), server.output()


@pytest.fixture(scope="module")
def client(upstream: ServerProcess) -> Iterator[openai.OpenAI]:
    """The official SDK pointed at the mock, without retries (a 429 must surface)."""
    with openai.OpenAI(base_url=upstream.url + "/v1", api_key="test", max_retries=0) as sdk:
        yield sdk


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """aiohttp runs on asyncio only."""
    return "asyncio"


def _post(upstream: ServerProcess, body: Any, **headers: str) -> httpx.Response:
    return httpx.post(upstream.url + "/v1/responses", json=body, headers=headers, timeout=10)


def _collapsed(types: Sequence[str]) -> list[str]:
    """Event types with each run of one type folded into one entry."""
    return [t for i, t in enumerate(types) if i == 0 or types[i - 1] != t]


def _frames(raw: bytes, eol: bytes = b"\n") -> list[bytes]:
    return [f for f in raw.split(eol + eol) if f]


def _data(frame: bytes) -> dict[str, Any]:
    """The JSON of a frame's `data:` line."""
    line = next(x for x in frame.splitlines() if x.startswith(b"data: "))
    decoded: dict[str, Any] = json.loads(line[len(b"data: ") :])
    return decoded


def _raw_exchange(port: int, body: dict[str, Any], headers: dict[str, str]) -> tuple[bytes, bytes]:
    """POST over a plain socket and read until the server closes: (head, body as sent)."""
    payload = json.dumps(body).encode()
    lines = [
        "POST /v1/responses HTTP/1.1",
        "Host: 127.0.0.1",
        "Content-Type: application/json",
        "Connection: close",
        f"Content-Length: {len(payload)}",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall("\r\n".join(lines).encode() + b"\r\n\r\n" + payload)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, rest = received.partition(b"\r\n\r\n")
    return head, rest


def _dechunk(data: bytes) -> tuple[bytes, bool]:
    """Decode a chunked body: (content, whether the terminating zero-size chunk came)."""
    content = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return content, True
        content += data[:size]
        data = data[size + 2 :]
    return content, False


# --- the tokenizer ---------------------------------------------------------------------------


def test_tokens_concatenate_back_to_the_text() -> None:
    """Tokens are words or single marks with their leading space, and rejoin to the text."""
    assert tokenize(MULTIBYTE) == ["héllo", " wörld", " 😀", " 日本語"]
    assert tokenize("Hi, you!") == ["Hi", ",", " you", "!"]
    for text in ["", "  lead", "trail  ", "a\n\nb\t.", MULTIBYTE + " \n"]:
        assert "".join(tokenize(text)) == text
        assert count_tokens(text) == len(tokenize(text))


# --- the process and its plain endpoints -------------------------------------------------------


def test_cli_prints_its_base_url(upstream: ServerProcess) -> None:
    """`python -m gateway.mock` prints one line with its base URL, /v1 included."""
    assert f"mock upstream listening on {upstream.url}/v1\n" in upstream.output()


def test_models_are_listed(upstream: ServerProcess, client: openai.OpenAI) -> None:
    """GET /v1/models lists the served models in OpenAI's shape; /healthz answers 200."""
    models = list(client.models.list())
    assert [(m.id, m.object, m.owned_by) for m in models] == [(MODEL, "model", "mock")]
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
    assert httpx.get(upstream.url + "/healthz").status_code == 200


# --- answers -----------------------------------------------------------------------------------


def test_create_answers_with_consistent_usage(client: openai.OpenAI) -> None:
    """A plain create quotes the question; usage counts the instructions, input and output."""
    question = "What is the capital of France?"
    raw = client.responses.with_raw_response.create(
        model=MODEL,
        input=question,
        instructions="Be brief.",
        metadata={"case": "plain"},
        temperature=0.5,
    )
    assert raw.headers["x-request-id"].startswith("req_")
    response = raw.parse()
    assert response.id.startswith("resp_")
    assert (response.object, response.status, response.model) == ("response", "completed", MODEL)
    message = response.output[0]
    assert isinstance(message, ResponseOutputMessage)
    assert (message.role, message.status) == ("assistant", "completed")
    assert question in response.output_text
    assert (response.instructions, response.metadata) == ("Be brief.", {"case": "plain"})
    assert response.temperature == 0.5
    usage = response.usage
    assert usage is not None
    assert usage.output_tokens == len(tokenize(response.output_text))
    assert usage.input_tokens == count_tokens("Be brief.") + count_tokens(question)
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_tokens_details.cached_tokens == 0
    assert usage.output_tokens_details.reasoning_tokens == 0


def test_input_items_are_read(client: openai.OpenAI) -> None:
    """Array input counts every message's text and quotes the last user message."""
    response = client.responses.create(
        model=MODEL,
        input=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": [{"type": "input_text", "text": "First question"}]},
            {"role": "assistant", "content": "First answer"},
            {"type": "message", "role": "user", "content": "Second question"},
        ],
    )
    assert '"Second question"' in response.output_text
    assert response.usage is not None
    texts = ["You are terse.", "First question", "First answer", "Second question"]
    assert response.usage.input_tokens == sum(count_tokens(t) for t in texts)


def test_stream_follows_openai_event_order(client: openai.OpenAI) -> None:
    """A text stream has OpenAI's event order, numbered from 0, usage only at the end."""
    events: list[ResponseStreamEvent] = list(
        client.responses.create(model=MODEL, input="Tell me about Paris", stream=True)
    )
    types = [event.type for event in events]
    assert _collapsed(types) == [*TEXT_ORDER, "response.completed"]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    created, in_progress, done, completed = events[0], events[1], events[-4], events[-1]
    assert isinstance(created, ResponseCreatedEvent)
    assert isinstance(in_progress, ResponseInProgressEvent)
    assert isinstance(done, ResponseTextDoneEvent)
    assert isinstance(completed, ResponseCompletedEvent)
    assert created.response.status == in_progress.response.status == "in_progress"
    assert created.response.usage is None
    assert created.response.output == []
    deltas = [event.delta for event in events if isinstance(event, ResponseTextDeltaEvent)]
    final = completed.response
    assert final.status == "completed"
    assert "".join(deltas) == done.text == final.output_text
    assert final.usage is not None
    assert final.usage.output_tokens == len(deltas) == len(tokenize(final.output_text))
    assert final.usage.total_tokens == final.usage.input_tokens + len(deltas)


def test_stream_helper_gets_the_final_response(client: openai.OpenAI) -> None:
    """The SDK's strict `responses.stream()` helper accepts the stream and its final response."""
    with client.responses.stream(model=MODEL, input="Tell me about Lyon") as stream:
        deltas = [event.delta for event in stream if isinstance(event, ResponseTextDeltaEvent)]
        final = stream.get_final_response()
    assert final.output_text == "".join(deltas)
    assert final.usage is not None
    assert final.usage.output_tokens == len(deltas)


def test_stream_frames_have_openai_wire_format(upstream: ServerProcess) -> None:
    """Frames are `event:` + one-line `data:` with `type` first; no [DONE]; deltas padded."""
    response = _post(upstream, {"model": MODEL, "input": "x", "stream": True})
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["x-request-id"].startswith("req_")
    assert response.content.endswith(b"}\n\n")
    assert b"[DONE]" not in response.content
    for frame in _frames(response.content):
        event_line, data_line = frame.split(b"\n")
        name = event_line.removeprefix(b"event: ").decode()
        assert data_line.startswith(b'data: {"type":"' + name.encode() + b'"')
        data = _data(frame)
        if name == "response.output_text.delta":
            assert len(data["obfuscation"]) == max(1, 16 - len(data["delta"]))
    plain = _post(
        upstream,
        {
            "model": MODEL,
            "input": "x",
            "stream": True,
            "stream_options": {"include_obfuscation": False},
        },
    )
    assert b'"response.output_text.delta"' in plain.content
    assert b"obfuscation" not in plain.content


def test_reply_header_sets_multibyte_text(client: openai.OpenAI) -> None:
    """`x-mock-reply` (percent-encoded UTF-8) becomes the answer, one token per delta."""
    events = list(
        client.responses.create(
            model=MODEL, input="x", stream=True, extra_headers={"x-mock-reply": quote(MULTIBYTE)}
        )
    )
    deltas = [event.delta for event in events if isinstance(event, ResponseTextDeltaEvent)]
    assert deltas == tokenize(MULTIBYTE)
    completed = events[-1]
    assert isinstance(completed, ResponseCompletedEvent)
    assert completed.response.output_text == MULTIBYTE


def test_max_output_tokens_makes_the_answer_incomplete(client: openai.OpenAI) -> None:
    """`max_output_tokens` cuts the output there: status incomplete, terminal event too."""
    whole = client.responses.create(model=MODEL, input="Tell me about Nice").output_text
    cut = client.responses.create(model=MODEL, input="Tell me about Nice", max_output_tokens=3)
    assert cut.status == "incomplete"
    assert cut.incomplete_details is not None
    assert cut.incomplete_details.reason == "max_output_tokens"
    assert cut.output_text == "".join(tokenize(whole)[:3])
    assert cut.usage is not None
    assert cut.usage.output_tokens == 3
    events = list(
        client.responses.create(
            model=MODEL, input="Tell me about Nice", max_output_tokens=3, stream=True
        )
    )
    assert _collapsed([e.type for e in events]) == [*TEXT_ORDER, "response.incomplete"]
    terminal = events[-1]
    assert isinstance(terminal, ResponseIncompleteEvent)
    assert terminal.response.usage is not None
    assert terminal.response.usage.output_tokens == 3
    assert sum(isinstance(e, ResponseTextDeltaEvent) for e in events) == 3


# --- function tools ----------------------------------------------------------------------------


def test_function_tool_is_called_with_sample_arguments(client: openai.OpenAI) -> None:
    """Given a function tool, the answer is a call with a sample value per schema property."""
    response = client.responses.create(
        model=MODEL,
        input="Weather in Paris?",
        tools=[WEATHER_TOOL],
    )
    call = response.output[0]
    assert isinstance(call, ResponseFunctionToolCall)
    assert call.id is not None
    assert call.id.startswith("fc_")
    assert call.call_id.startswith("call_")
    assert (call.name, call.status) == ("get_weather", "completed")
    assert json.loads(call.arguments) == WEATHER_ARGUMENTS
    assert response.usage is not None
    assert response.usage.output_tokens == len(tokenize(call.arguments))


def test_function_call_streams_its_arguments(client: openai.OpenAI) -> None:
    """A streamed call announces the item, streams the arguments, then completes."""
    events = list(
        client.responses.create(
            model=MODEL,
            input="Weather in Paris?",
            tools=[WEATHER_TOOL],
            tool_choice="required",
            stream=True,
        )
    )
    assert _collapsed([e.type for e in events]) == CALL_ORDER
    assert [event.sequence_number for event in events] == list(range(len(events)))
    added, done, completed = events[2], events[-3], events[-1]
    assert isinstance(added, ResponseOutputItemAddedEvent)
    assert isinstance(added.item, ResponseFunctionToolCall)
    assert (added.item.arguments, added.item.status) == ("", "in_progress")
    assert isinstance(done, ResponseFunctionCallArgumentsDoneEvent)
    assert isinstance(completed, ResponseCompletedEvent)
    deltas = [e.delta for e in events if isinstance(e, ResponseFunctionCallArgumentsDeltaEvent)]
    final_call = completed.response.output[0]
    assert isinstance(final_call, ResponseFunctionToolCall)
    assert "".join(deltas) == done.arguments == final_call.arguments
    assert json.loads(done.arguments) == WEATHER_ARGUMENTS
    assert completed.response.usage is not None
    assert completed.response.usage.output_tokens == len(deltas)


def test_tool_choice_picks_the_function_or_text(client: openai.OpenAI) -> None:
    """A named tool choice calls that function, "none" answers text, an absent name is 400."""
    other: FunctionToolParam = {
        "type": "function",
        "name": "get_time",
        "parameters": {"type": "object"},
        "strict": False,
    }
    tools = [WEATHER_TOOL, other]
    named = client.responses.create(
        model=MODEL, input="x", tools=tools, tool_choice={"type": "function", "name": "get_time"}
    )
    call = named.output[0]
    assert isinstance(call, ResponseFunctionToolCall)
    assert (call.name, call.arguments) == ("get_time", "{}")
    text = client.responses.create(model=MODEL, input="x", tools=tools, tool_choice="none")
    assert isinstance(text.output[0], ResponseOutputMessage)
    with pytest.raises(openai.BadRequestError) as absent:
        client.responses.create(
            model=MODEL, input="x", tools=tools, tool_choice={"type": "function", "name": "nope"}
        )
    assert absent.value.param == "tool_choice"


def test_tool_output_gets_a_text_answer(client: openai.OpenAI) -> None:
    """After a `function_call_output` the answer is text that mentions the output."""
    response: Response = client.responses.create(
        model=MODEL,
        tools=[WEATHER_TOOL],
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "type": "function_call",
                "call_id": "call_1",
                "name": "get_weather",
                "arguments": '{"city":"Paris"}',
            },
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny, 21°C"},
        ],
    )
    assert isinstance(response.output[0], ResponseOutputMessage)
    assert "sunny, 21°C" in response.output_text
    assert response.usage is not None
    texts = ["Weather in Paris?", '{"city":"Paris"}', "sunny, 21°C"]
    assert response.usage.input_tokens == sum(count_tokens(t) for t in texts)


# --- refused requests --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"not json", None),
        (b"[1, 2]", None),
        (b'{"input": "x"}', "model"),
        (b'{"model": "mock-gpt"}', "input"),
        (b'{"model": 7, "input": "x"}', "model"),
        (b'{"model": "mock-gpt", "input": 5}', "input"),
        (b'{"model": "mock-gpt", "input": ["x"]}', "input[0]"),
        (b'{"model": "mock-gpt", "input": "x", "stream": "yes"}', "stream"),
        (b'{"model": "mock-gpt", "input": "x", "max_output_tokens": 0}', "max_output_tokens"),
        (b'{"model": "mock-gpt", "input": "x", "max_output_tokens": "9"}', "max_output_tokens"),
        (b'{"model": "mock-gpt", "input": "x", "temperature": 3}', "temperature"),
        (b'{"model": "mock-gpt", "input": "x", "tools": {}}', "tools"),
        (b'{"model": "mock-gpt", "input": "x", "tools": [{"type": "function"}]}', "tools[0].name"),
    ],
)
def test_malformed_requests_are_400(
    upstream: ServerProcess, body: bytes, param: str | None
) -> None:
    """A body that is not JSON or lacks or mistypes a field is a 400 in OpenAI's error shape."""
    response = httpx.post(
        upstream.url + "/v1/responses", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["param"]) == ("invalid_request_error", param)


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    """An unknown model is a 404 with code `model_not_found`, even for a stream."""
    with pytest.raises(openai.NotFoundError) as missing:
        client.responses.create(model="gpt-unknown", input="x", stream=True)
    assert missing.value.code == "model_not_found"


# --- steering headers and faults ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, openai.BadRequestError),
        (401, openai.AuthenticationError),
        (403, openai.PermissionDeniedError),
        (404, openai.NotFoundError),
        (409, openai.ConflictError),
        (422, openai.UnprocessableEntityError),
        (500, openai.InternalServerError),
        (503, openai.InternalServerError),
    ],
)
def test_status_fault_answers_that_status(
    client: openai.OpenAI, status: int, error: type[openai.APIStatusError]
) -> None:
    """`status=CODE` answers CODE with an OpenAI error body before any stream starts."""
    with pytest.raises(error) as raised:
        client.responses.create(
            model=MODEL, input="x", stream=True, extra_headers={"x-mock-fault": f"status={status}"}
        )
    assert raised.value.status_code == status
    assert raised.value.response.headers["content-type"].startswith("application/json")
    assert "retry-after" not in raised.value.response.headers


def test_status_429_raises_rate_limit_error(client: openai.OpenAI) -> None:
    """`status=429` reaches the SDK as RateLimitError, with `Retry-After: 1`."""
    with pytest.raises(openai.RateLimitError) as limited:
        client.responses.create(
            model=MODEL, input="x", extra_headers={"x-mock-fault": "status=429"}
        )
    assert limited.value.code == "rate_limit_exceeded"
    assert limited.value.response.headers["retry-after"] == "1"


def test_drop_after_leaves_the_chunked_body_unterminated(upstream: ServerProcess) -> None:
    """`drop-after=N` sends N events, then closes without the terminating chunk."""
    body = {"model": MODEL, "input": "x", "stream": True}
    head, rest = _raw_exchange(upstream.port, body, {"x-mock-fault": "drop-after=3"})
    assert head.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding: chunked" in head.lower()
    content, terminated = _dechunk(rest)
    assert not terminated
    frames = _frames(content)
    assert [_data(f)["type"] for f in frames] == TEXT_ORDER[:3]
    with (
        httpx.stream(
            "POST",
            upstream.url + "/v1/responses",
            json=body,
            headers={"x-mock-fault": "drop-after=3"},
        ) as response,
        pytest.raises(httpx.RemoteProtocolError),
    ):
        response.read()


def test_drop_after_beyond_the_end_still_cuts_the_body(upstream: ServerProcess) -> None:
    """With N past the last event every event arrives, but the body still never ends."""
    body = {"model": MODEL, "input": "x", "stream": True}
    _, rest = _raw_exchange(upstream.port, body, {"x-mock-fault": "drop-after=1000"})
    content, terminated = _dechunk(rest)
    assert not terminated
    assert _data(_frames(content)[-1])["type"] == "response.completed"


def test_drop_after_cuts_a_whole_answer_after_its_headers(upstream: ServerProcess) -> None:
    """On a non-streaming request `drop-after` sends the headers and no body."""
    head, rest = _raw_exchange(
        upstream.port, {"model": MODEL, "input": "x"}, {"x-mock-fault": "drop-after=0"}
    )
    assert head.startswith(b"HTTP/1.1 200")
    length = re.search(rb"(?i)content-length: (\d+)", head)
    assert length is not None
    assert int(length.group(1)) > 0
    assert rest == b""


def test_data_only_ends_with_done(upstream: ServerProcess, client: openai.OpenAI) -> None:
    """`data-only` frames have no `event:` line and the stream ends with `data: [DONE]`."""
    raw = _post(
        upstream, {"model": MODEL, "input": "x", "stream": True}, **{"x-mock-fault": "data-only"}
    ).content
    frames = _frames(raw)
    assert b"event:" not in raw
    assert all(frame.startswith(b"data: ") for frame in frames)
    assert frames[-1] == b"data: [DONE]"
    assert _data(frames[-2])["type"] == "response.completed"
    events = list(
        client.responses.create(
            model=MODEL, input="x", stream=True, extra_headers={"x-mock-fault": "data-only"}
        )
    )
    assert events[-1].type == "response.completed"


def test_crlf_uses_crlf_line_endings(upstream: ServerProcess, client: openai.OpenAI) -> None:
    """`crlf` ends every line with CRLF, and the SDK still reads the stream."""
    raw = _post(
        upstream, {"model": MODEL, "input": "x", "stream": True}, **{"x-mock-fault": "crlf"}
    ).content
    assert b"\n" not in raw.replace(b"\r\n", b"")
    frames = _frames(raw, b"\r\n")
    assert frames[0].startswith(b"event: response.created\r\ndata: {")
    assert _data(frames[-1])["type"] == "response.completed"
    events = list(
        client.responses.create(
            model=MODEL, input="x", stream=True, extra_headers={"x-mock-fault": "crlf,data-only"}
        )
    )
    assert events[-1].type == "response.completed"


def test_comments_come_between_events(upstream: ServerProcess, client: openai.OpenAI) -> None:
    """`comments` puts a `: keep-alive` frame between events, which the SDK ignores."""
    raw = _post(
        upstream, {"model": MODEL, "input": "x", "stream": True}, **{"x-mock-fault": "comments"}
    ).content
    frames = _frames(raw)
    assert frames[0].startswith(b"event: response.created")
    assert frames[1::2] == [b": keep-alive"] * (len(frames) // 2)
    assert _data(frames[-1])["type"] == "response.completed"
    events = list(
        client.responses.create(
            model=MODEL, input="x", stream=True, extra_headers={"x-mock-fault": "comments"}
        )
    )
    assert [event.sequence_number for event in events] == list(range(len(events)))


def test_hang_never_answers(upstream: ServerProcess) -> None:
    """`hang` accepts the request and sends nothing, while other requests are still served."""
    payload = json.dumps({"model": MODEL, "input": "x"}).encode()
    request = (
        b"POST /v1/responses HTTP/1.1\r\nHost: x\r\nx-mock-fault: hang\r\n"
        b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload
    )
    with socket.create_connection(("127.0.0.1", upstream.port), timeout=10) as sock:
        sock.sendall(request)
        # Meanwhile the server answers others; then "never" is checked for a while.
        assert _post(upstream, {"model": MODEL, "input": "x"}).status_code == 200
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(1)


def test_slow_headers_delay_the_headers(upstream: ServerProcess) -> None:
    """`slow-headers=MS` holds the response headers back at least MS."""
    started = time.monotonic()
    with httpx.stream(
        "POST",
        upstream.url + "/v1/responses",
        json={"model": MODEL, "input": "x", "stream": True},
        headers={"x-mock-fault": "slow-headers=300"},
    ) as response:
        assert time.monotonic() - started >= 0.3
        assert response.status_code == 200


def test_ttft_and_rate_headers_pace_the_stream(upstream: ServerProcess) -> None:
    """The first delta comes `x-mock-ttft-ms` after the headers, then one per 1/rate seconds."""
    arrivals: list[float] = []
    with httpx.stream(
        "POST",
        upstream.url + "/v1/responses",
        json={"model": MODEL, "input": "x", "stream": True},
        headers={"x-mock-ttft-ms": "250", "x-mock-tokens-per-second": "100"},
    ) as response:
        headers_at = time.monotonic()
        for line in response.iter_lines():
            if line == "event: response.output_text.delta":
                arrivals.append(time.monotonic())
    assert arrivals[0] - headers_at >= 0.24
    assert arrivals[-1] - arrivals[0] >= (len(arrivals) - 1) / 100 * 0.9


def test_delays_hold_back_a_whole_answer(upstream: ServerProcess) -> None:
    """Non-streaming, the answer waits the TTFT plus one 1/rate per output token."""
    started = time.monotonic()
    response = _post(
        upstream,
        {"model": MODEL, "input": "x"},
        **{"x-mock-ttft-ms": "100", "x-mock-tokens-per-second": "200"},
    )
    tokens = response.json()["usage"]["output_tokens"]
    assert time.monotonic() - started >= 0.1 + tokens / 200


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("x-mock-ttft-ms", "-1"),
        ("x-mock-ttft-ms", "soon"),
        ("x-mock-tokens-per-second", "nan"),
        ("x-mock-reply", "%FF"),
        ("x-mock-fault", "explode"),
        ("x-mock-fault", "status=200"),
        ("x-mock-fault", "status=abc"),
        ("x-mock-fault", "drop-after=-1"),
        ("x-mock-fault", "drop-after=1.5"),
        ("x-mock-fault", "hang=1"),
        ("x-mock-fault", "crlf,slow-headers=x"),
    ],
)
def test_unreadable_steering_headers_are_400(
    upstream: ServerProcess, header: str, value: str
) -> None:
    """A steering header the mock cannot read is a 400 naming that header."""
    response = _post(upstream, {"model": MODEL, "input": "x"}, **{header: value})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == header


# --- in-process use ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_start_mock_server_serves_its_settings() -> None:
    """`start_mock_server` binds a free port, returns the /v1 URL, and serves its models."""
    runner, url = await start_mock_server(MockSettings(models=("alpha", "beta")))
    try:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1", url)
        async with openai.AsyncOpenAI(base_url=url, api_key="test", max_retries=0) as sdk:
            assert [m.id async for m in await sdk.models.list()] == ["alpha", "beta"]
            answer = await sdk.responses.create(model="beta", input="hello")
            assert answer.status == "completed"
            with pytest.raises(openai.NotFoundError):
                await sdk.responses.create(model=MODEL, input="hello")
    finally:
        await runner.cleanup()


@pytest.mark.anyio
async def test_cleanup_releases_hanging_requests() -> None:
    """Stopping the server ends a `hang` request instead of waiting for it."""
    runner, url = await start_mock_server(MockSettings())
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        payload = json.dumps({"model": MODEL, "input": "x"}).encode()
        writer.write(
            b"POST /v1/responses HTTP/1.1\r\nHost: x\r\nx-mock-fault: hang\r\n"
            b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload
        )
        await writer.drain()
        async with httpx.AsyncClient() as other:  # a full exchange: the hang has begun by then
            assert (await other.get(url.removesuffix("/v1") + "/healthz")).status_code == 200
        with anyio.fail_after(5):
            await runner.cleanup()
            answer = await reader.read()
        assert answer == b"" or answer.startswith(b"HTTP/1.1 503")
    finally:
        writer.close()


@pytest.mark.anyio
async def test_static_mode_replays_each_answer() -> None:
    """Static mode answers a repeated body with the same bytes, unless steering headers ask."""
    runner, url = await start_mock_server(MockSettings(static=True))
    body = {"model": MODEL, "input": "x", "stream": True}
    try:
        async with httpx.AsyncClient() as http:
            first = await http.post(url + "/responses", json=body)
            again = await http.post(url + "/responses", json=body)
            steered = await http.post(
                url + "/responses", json=body, headers={"x-mock-reply": "other"}
            )
        assert first.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert first.content == again.content
        assert b'"delta":" other"' not in steered.content
        assert b'"delta":"other"' in steered.content
    finally:
        await runner.cleanup()


def test_settings_refuse_impossible_delays() -> None:
    """MockSettings rejects negative or infinite delays and an empty model list."""
    with pytest.raises(ValueError, match="ttft_ms"):
        MockSettings(ttft_ms=-1)
    with pytest.raises(ValueError, match="tokens_per_second"):
        MockSettings(tokens_per_second=float("inf"))
    with pytest.raises(ValueError, match="models"):
        MockSettings(models=())
