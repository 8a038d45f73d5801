"""The product's own upstream speaks /v1/responses like OpenAI, and its faults do what they say."""

from __future__ import annotations

import json
import socket
from typing import Any
from urllib.parse import quote

import httpx
import openai
import pytest

from gateway.mock.text import count_tokens, tokenize
from tests.support.procs import ServerProcess


def _post(mock: ServerProcess, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(mock.url + "/v1/responses", json=body, headers=headers, timeout=10)


def _frames(raw: bytes, eol: bytes = b"\n") -> list[bytes]:
    return [f for f in raw.split(eol + eol) if f]


def test_tokenizer_round_trips() -> None:
    """Tokens concatenate back to the text, one token per word or punctuation mark."""
    text = "Hello, wörld! 日本語 ok"
    assert "".join(tokenize(text)) == text
    assert count_tokens(text) == len(tokenize(text)) == 6


def test_stream_usage_matches_text(mock_upstream: ServerProcess) -> None:
    """`output_tokens` equals the deltas, `input_tokens` the instructions and input."""
    with openai.OpenAI(base_url=mock_upstream.url + "/v1", api_key="x", max_retries=0) as sdk:
        events = list(
            sdk.responses.create(
                model="mock-gpt", input="two words", instructions="be kind", stream=True
            )
        )
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    final = events[-1].response  # type: ignore[union-attr]
    assert final.usage is not None
    assert final.usage.output_tokens == len(deltas)
    assert final.usage.input_tokens == count_tokens("be kind\ntwo words") == 4
    assert final.output_text == "".join(deltas)


def test_reply_header_sets_multibyte_text(mock_upstream: ServerProcess) -> None:
    """`x-mock-reply` (percent-encoded) becomes the answer, multi-byte characters intact."""
    reply = "héllo wörld 😀 日本語"
    response = _post(
        mock_upstream, {"model": "mock-gpt", "input": "x"}, **{"x-mock-reply": quote(reply)}
    )
    assert response.json()["output"][0]["content"][0]["text"] == reply


def test_data_only_ends_with_done(mock_upstream: ServerProcess) -> None:
    """`data-only` frames have no `event:` line and the stream ends with `data: [DONE]`."""
    raw = _post(
        mock_upstream,
        {"model": "mock-gpt", "input": "x", "stream": True},
        **{"x-mock-fault": "data-only"},
    ).content
    frames = _frames(raw)
    assert all(f.startswith(b"data: ") for f in frames)
    assert frames[-1] == b"data: [DONE]"
    assert json.loads(frames[-2][6:])["type"] == "response.completed"


def test_crlf_and_comments(mock_upstream: ServerProcess) -> None:
    """`crlf` uses CRLF line endings; `comments` puts a keep-alive comment between events."""
    raw = _post(
        mock_upstream,
        {"model": "mock-gpt", "input": "x", "stream": True},
        **{"x-mock-fault": "crlf,comments"},
    ).content
    assert b"\n" not in raw.replace(b"\r\n", b"")
    frames = _frames(raw, b"\r\n")
    assert frames[1] == b": keep-alive"
    assert frames[0].startswith(b"event: response.created\r\ndata: ")


@pytest.mark.parametrize("status", [400, 401, 429, 500, 503])
def test_status_fault(mock_upstream: ServerProcess, status: int) -> None:
    """`status=CODE` answers that code with an OpenAI error body."""
    response = _post(
        mock_upstream, {"model": "mock-gpt", "input": "x"}, **{"x-mock-fault": f"status={status}"}
    )
    assert response.status_code == status
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert (response.headers.get("retry-after") == "1") is (status == 429)


def test_drop_after_leaves_body_unterminated(mock_upstream: ServerProcess) -> None:
    """`drop-after=N` sends N events and closes the connection without the final chunk."""
    body = json.dumps({"model": "mock-gpt", "input": "x", "stream": True}).encode()
    request = (
        b"POST /v1/responses HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"x-mock-fault: drop-after=3\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )
    with socket.create_connection(("127.0.0.1", mock_upstream.port), timeout=5) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert b"transfer-encoding: chunked" in received.lower()
    assert not received.endswith(b"0\r\n\r\n")
    assert received.count(b"event: ") == 3


def test_unknown_model_and_bad_override(mock_upstream: ServerProcess) -> None:
    """Unknown models are 404 `model_not_found`; unreadable steering headers are 400."""
    missing = _post(mock_upstream, {"model": "other", "input": "x"})
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"
    bad = _post(mock_upstream, {"model": "mock-gpt", "input": "x"}, **{"x-mock-fault": "explode"})
    assert bad.status_code == 400


def test_tool_output_gets_a_text_answer(mock_upstream: ServerProcess) -> None:
    """After a `function_call_output` the mock answers in text that mentions it."""
    body = {
        "model": "mock-gpt",
        "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
        "input": [
            {"role": "user", "content": "weather?"},
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        ],
    }
    output = _post(mock_upstream, body).json()["output"][0]
    assert output["type"] == "message"
    assert "sunny" in output["content"][0]["text"]


def test_pacing(mock_upstream: ServerProcess) -> None:
    """`x-mock-ttft-ms` delays the answer at least that long."""
    response = _post(
        mock_upstream, {"model": "mock-gpt", "input": "x"}, **{"x-mock-ttft-ms": "200"}
    )
    assert response.elapsed.total_seconds() >= 0.2
