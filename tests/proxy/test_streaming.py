"""Streams cross the gateway byte for byte; usage is read from them; failures stay visible."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.support.gateway import log_lines
from tests.support.procs import ServerProcess
from tests.support.streams import edge_case_streams, expected_usage, recorded_transcripts

BODY = {"model": "scripted", "input": "hi", "stream": True}


def _log_for(gateway: ServerProcess, request_id: str, timeout: float = 5.0) -> dict[str, Any]:
    """The canonical log line of one request (written once the response has ended)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log_lines(gateway):
            if line.get("request_id") == request_id and line.get("event") == "request":
                return line
        time.sleep(0.02)
    raise AssertionError(f"no log line for {request_id}:\n{gateway.output()[-2000:]}")


def _broken_stream(
    gateway: ServerProcess, body: dict[str, Any], headers: dict[str, str]
) -> tuple[bytes, str]:
    """POST a stream that must end uncleanly; the bytes received before the break, the id."""
    received = b""
    with (
        httpx.Client(timeout=10) as client,
        client.stream(
            "POST", gateway.url + "/v1/responses", json=body, headers=headers
        ) as response,
    ):
        assert response.status_code == 200
        chunks = response.iter_raw()
        with pytest.raises(httpx.RemoteProtocolError):  # noqa: PT012  (the failure ends the loop)
            for chunk in chunks:
                received += chunk
        return received, response.headers["x-request-id"]


def _replay(gateway: ServerProcess, path: Path, seed: int, max_chunk: int) -> httpx.Response:
    headers = {
        "x-replay-file": str(path),
        "x-replay-seed": str(seed),
        "x-replay-max-chunk": str(max_chunk),
    }
    with (
        httpx.Client(timeout=30) as client,
        client.stream(
            "POST", gateway.url + "/v1/responses", json=BODY, headers=headers
        ) as response,
    ):
        response.read()
        return response


MOCK_STREAMS: dict[str, tuple[dict[str, Any], str, str]] = {
    # name: (extra request fields, x-mock-fault, x-mock-reply)
    "mock_text": ({}, "", "héllo wörld 😀 日本語, said the mock"),
    "mock_tool_call": (
        {
            "tools": [
                {
                    "type": "function",
                    "name": "f",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                }
            ]
        },
        "",
        "",
    ),
    "mock_data_only_crlf_comments": ({}, "data-only,crlf,comments", ""),
    "mock_incomplete": ({"max_output_tokens": 3}, "", ""),
}


def _mock_streams(mock: ServerProcess, tmp: Path) -> list[tuple[str, Path]]:
    """Streams of the product's own upstream, fetched directly from it."""
    found = []
    for name, (fields, fault, reply) in MOCK_STREAMS.items():
        headers = {"x-mock-fault": fault}
        if reply:
            headers["x-mock-reply"] = quote(reply)
        body: dict[str, Any] = {"model": "mock-gpt", "input": "Tell me about Paris", "stream": True}
        body.update(fields)
        response = httpx.post(mock.url + "/v1/responses", json=body, headers=headers, timeout=10)
        assert response.status_code == 200, response.text
        path = tmp / f"{name}.stream"
        path.write_bytes(response.content)
        found.append((name, path))
    return found


@pytest.fixture(scope="module")
def streams(
    tmp_path_factory: pytest.TempPathFactory, mock_upstream: ServerProcess
) -> list[tuple[str, Path]]:
    """Every recorded transcript, every hand-written edge case and the product upstream's own
    streams, as files to replay."""
    tmp = tmp_path_factory.mktemp("streams")
    found = [(p.name, p) for p in recorded_transcripts()]
    for name, data in edge_case_streams().items():
        path = tmp / f"{name}.stream"
        path.write_bytes(data)
        found.append((name, path))
    return found + _mock_streams(mock_upstream, tmp)


@pytest.mark.parametrize(("seed", "max_chunk"), [(1, 1), (2, 7), (3, 64), (4, 4096)])
def test_streams_arrive_byte_for_byte(
    gateway: ServerProcess, streams: list[tuple[str, Path]], seed: int, max_chunk: int
) -> None:
    """Replayed in random chunk sizes, every stream reaches the client identical, usage read."""
    for name, path in streams:
        original = path.read_bytes()
        response = _replay(gateway, path, seed, max_chunk)
        assert response.status_code == 200, name
        assert response.content == original, name
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-accel-buffering"] == "no"
        assert "content-encoding" not in response.headers
        line = _log_for(gateway, response.headers["x-request-id"])
        usage = expected_usage(original)
        assert usage is not None
        assert line["input_tokens"] == usage["input_tokens"], name
        assert line["output_tokens"] == usage["output_tokens"], name
        assert line["total_tokens"] == usage["total_tokens"], name
        assert line["stream"] is True
        assert line["ttft_ms"] is not None, name
        assert line["ttft_ms"] >= line["ttfb_ms"], name
        assert line.get("client_disconnected", False) is False


def test_nothing_is_buffered(gateway: ServerProcess) -> None:
    """Each upstream chunk reaches the client before the upstream sends the next one."""
    with (
        httpx.Client(timeout=10) as client,
        client.stream(
            "POST", gateway.url + "/v1/responses", json=BODY, headers={"x-script": "trickle"}
        ) as response,
    ):
        chunks = response.iter_raw()
        first = next(chunks)
        second = next(chunks)  # trickle waits 50 ms between frames: both arrived separately
    assert first == b": tick\n\n"
    assert second == b": tick\n\n"


def _wait_closed(upstream: ServerProcess, request_id: str, within: float) -> float:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        closed = httpx.get(upstream.url + "/_closed").json()
        if any(entry["request_id"] == request_id for entry in closed):
            return time.monotonic()
        time.sleep(0.02)
    raise AssertionError(f"the upstream did not see {request_id} closed within {within}s")


def test_disconnect_mid_stream_closes_upstream(
    gateway: ServerProcess, scripted_upstream: ServerProcess
) -> None:
    """A client leaving mid-stream makes the gateway close the upstream request within 1 s."""
    request_id = "disconnect-mid-stream-1"
    headers = {"x-script": "trickle", "x-request-id": request_id}
    with (
        httpx.Client(timeout=10) as client,
        client.stream(
            "POST", gateway.url + "/v1/responses", json=BODY, headers=headers
        ) as response,
    ):
        next(response.iter_raw())
    left = time.monotonic()
    _wait_closed(scripted_upstream, request_id, within=1.0)
    assert time.monotonic() - left <= 1.0
    line = _log_for(gateway, request_id)
    assert line["client_disconnected"] is True


@pytest.mark.parametrize("stream", [True, False])
def test_disconnect_before_first_byte_closes_upstream(
    gateway: ServerProcess, scripted_upstream: ServerProcess, stream: bool
) -> None:
    """A client leaving while the upstream is still silent gets the upstream request closed."""
    request_id = f"disconnect-before-first-byte-{stream}"
    headers = {"x-script": "hang", "x-request-id": request_id}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            gateway.url + "/v1/responses",
            json={**BODY, "stream": stream},
            headers=headers,
            timeout=httpx.Timeout(10, read=0.3),
        )
    _wait_closed(scripted_upstream, request_id, within=1.0)
    line = _log_for(gateway, request_id)
    assert line["client_disconnected"] is True


def test_upstream_dying_mid_stream_is_visible(mock_gateway: ServerProcess) -> None:
    """When the upstream dies mid-stream the client gets an `error` event and no clean end."""
    received, request_id = _broken_stream(
        mock_gateway,
        {"model": "mock-gpt", "input": "tell me a story", "stream": True},
        {"x-mock-fault": "drop-after=5"},
    )
    frames = [f for f in received.split(b"\n\n") if f]
    assert frames[-1].startswith(b"event: error\ndata: ")
    error = json.loads(frames[-1].split(b"data: ", 1)[1])
    assert error["type"] == "error"
    assert error["code"] == "upstream_disconnected"
    assert error["sequence_number"] == 5
    assert len(frames) == 6
    line = _log_for(mock_gateway, request_id)
    assert line["stream_error"] == "upstream_disconnected"
    assert line.get("terminal_event") is None


def test_upstream_silent_mid_stream_times_out_visibly(gateway: ServerProcess) -> None:
    """An upstream silent past `read_timeout` mid-stream yields an `error` event, no clean end."""
    received, request_id = _broken_stream(gateway, BODY, {"x-script": "stall"})
    frames = [f for f in received.split(b"\n\n") if f]
    assert len(frames) == 2
    error = json.loads(frames[1].split(b"data: ", 1)[1])
    assert error == {
        "type": "error",
        "code": "upstream_timeout",
        "message": "The upstream provider stopped answering before the response was complete.",
        "sequence_number": 1,
    }
    assert _log_for(gateway, request_id)["stream_error"] == "upstream_timeout"


def test_canonical_log_line(gateway: ServerProcess) -> None:
    """One JSON line per request carries model, provider, status, usage, user and metadata
    (a field at its default is left out)."""
    response = httpx.post(
        gateway.url + "/v1/responses",
        json={"model": "renamed", "input": "hi", "user": "u-42", "metadata": {"team": "qa"}},
        headers={"authorization": "Bearer sk-client-Q7secret-never-forwarded"},
    )
    assert response.status_code == 200
    line = _log_for(gateway, response.headers["x-request-id"])
    assert line["level"] == "info"
    assert line["model"] == "renamed"
    assert line["upstream_model"] == "upstream-name"
    assert line["provider"] == "scripted"
    assert line["status"] == 200
    assert line["stream"] is False
    assert line["request_user"] == "u-42"
    assert line["metadata"] == {"team": "qa"}
    assert (line["input_tokens"], line["output_tokens"], line["total_tokens"]) == (3, 5, 8)
    assert line["latency_ms"] > 0
    assert line.get("client_disconnected", False) is False
    assert ("method" in line, "path" in line) == (False, False)  # POST /v1/responses
    rejected = httpx.post(gateway.url + "/v1/responses", json={"model": "nope", "input": "x"})
    line = _log_for(gateway, rejected.headers["x-request-id"])
    assert (line["status"], line["error_code"]) == (404, "model_not_found")
    assert (line.get("model"), line["requested_model"]) == (None, "nope")  # not a served model


def test_upstream_dying_mid_frame_adds_nothing(gateway: ServerProcess, tmp_path: Path) -> None:
    """Cut inside a frame, the stream reaches the client as far as it went, then breaks."""
    whole = edge_case_streams()["lf_multibyte"]
    cut = whole[: whole.index(b"event: response.completed") + 40]
    path = tmp_path / "cut.stream"
    path.write_bytes(cut)
    headers = {"x-replay-file": str(path), "x-replay-max-chunk": "16", "x-replay-abort": "1"}
    received, request_id = _broken_stream(gateway, BODY, headers)
    assert received == cut
    line = _log_for(gateway, request_id)
    assert line["stream_error"] == "upstream_disconnected"
    assert line.get("terminal_event") is None
    assert line["ttft_ms"] is not None
