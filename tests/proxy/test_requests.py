"""Every request rule and error status, checked through a real gateway process.

Each violation is a 400 (or 404/405/413/415) in the OpenAI error shape, answered before any
upstream is contacted; what passes is forwarded untouched.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.support.gateway import CLIENT_KEY, PROVIDER_KEY, upstream_requests
from tests.support.procs import ServerProcess

OK = {"model": "scripted", "input": "hi"}


@pytest.fixture
def post(gateway: ServerProcess) -> Iterator[Any]:
    """POST raw bytes or JSON to the gateway's /v1/responses."""
    with httpx.Client(base_url=gateway.url, timeout=10) as client:

        def send(body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
            headers = {"content-type": "application/json", **(headers or {})}
            content = body if isinstance(body, bytes) else json.dumps(body).encode()
            return client.post("/v1/responses", content=content, headers=headers)

        yield send


def _assert_error(
    response: httpx.Response, status: int, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["x-request-id"]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return dict(error)


def _rejected_before_upstream(
    scripted_upstream: ServerProcess, post: Any, body: Any, status: int, param: str | None
) -> dict[str, Any]:
    before = len(upstream_requests(scripted_upstream))
    error = _assert_error(post(body), status, param)
    assert len(upstream_requests(scripted_upstream)) == before, "the upstream was contacted"
    return error


INVALID: list[tuple[dict[str, Any], str]] = [
    ({"input": "hi"}, "model"),
    ({"model": 7, "input": "hi"}, "model"),
    ({"model": "", "input": "hi"}, "model"),
    ({"model": "scripted"}, "input"),
    ({**OK, "input": 5}, "input"),
    ({**OK, "input": {"role": "user"}}, "input"),
    ({**OK, "input": ["not an item"]}, "input[0]"),
    ({**OK, "temperature": -0.1}, "temperature"),
    ({**OK, "temperature": 2.01}, "temperature"),
    ({**OK, "temperature": "hot"}, "temperature"),
    ({**OK, "top_p": -0.5}, "top_p"),
    ({**OK, "top_p": 1.5}, "top_p"),
    ({**OK, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({**OK, "stop": ["a", 1]}, "stop[1]"),
    ({**OK, "stop": 3}, "stop"),
    ({**OK, "max_output_tokens": 0}, "max_output_tokens"),
    ({**OK, "max_output_tokens": -1}, "max_output_tokens"),
    ({**OK, "max_output_tokens": 1.5}, "max_output_tokens"),
    ({**OK, "max_output_tokens": True}, "max_output_tokens"),
    ({**OK, "tools": [{"name": "f"}]}, "tools[0].type"),
    ({**OK, "tools": [{"type": "function"}]}, "tools[0].name"),
    ({**OK, "tools": [{"type": "function", "name": "bad name!"}]}, "tools[0].name"),
    ({**OK, "tools": [{"type": "function", "name": "f", "parameters": 3}]}, "tools[0].parameters"),
    ({**OK, "tools": [{"type": "function", "name": "f", "strict": "yes"}]}, "tools[0].strict"),
    ({**OK, "tools": [{"type": 3}]}, "tools[0].type"),
    ({**OK, "tools": {"type": "function"}}, "tools"),
    ({**OK, "tool_choice": "sometimes"}, "tool_choice"),
    ({**OK, "tool_choice": {"type": "function"}}, "tool_choice.name"),
    ({**OK, "tool_choice": {"name": "f"}}, "tool_choice.type"),
    ({**OK, "metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    ({**OK, "metadata": {"k" * 65: "v"}}, "metadata"),
    ({**OK, "metadata": {"k": "v" * 513}}, "metadata"),
    ({**OK, "metadata": {"k": 1}}, "metadata"),
    ({**OK, "metadata": ["k"]}, "metadata"),
    ({**OK, "stream_options": {"include_usage": True}}, "stream_options"),
    ({**OK, "stream": False, "stream_options": {"include_usage": True}}, "stream_options"),
    ({**OK, "stream": "yes"}, "stream"),
    ({**OK, "instructions": ["x"]}, "instructions"),
    ({**OK, "user": 42}, "user"),
]


@pytest.mark.parametrize(
    ("body", "param"), INVALID, ids=[f"{p}-{i}" for i, (_, p) in enumerate(INVALID)]
)
def test_invalid_field_is_400_naming_it(
    scripted_upstream: ServerProcess, post: Any, body: dict[str, Any], param: str
) -> None:
    """A field breaking its rule is a 400 whose `param` names it, and no upstream call."""
    error = _rejected_before_upstream(scripted_upstream, post, body, 400, param)
    assert error["type"] == "invalid_request_error"


VALID: list[dict[str, Any]] = [
    {**OK, "temperature": 0},
    {**OK, "temperature": 2},
    {**OK, "top_p": 0},
    {**OK, "top_p": 1},
    {**OK, "temperature": None, "top_p": None, "instructions": None, "metadata": None},
    {**OK, "stop": "END"},
    {**OK, "stop": ["a", "b", "c", "d"]},
    {**OK, "max_output_tokens": 1},
    {**OK, "max_output_tokens": 100},
    {**OK, "tools": [{"type": "web_search"}]},
    {**OK, "tools": [{"type": "function", "name": "get-x_1", "parameters": {"type": "object"}}]},
    {**OK, "tool_choice": "auto"},
    {**OK, "tool_choice": "none"},
    {**OK, "tool_choice": "required"},
    {**OK, "tool_choice": {"type": "function", "name": "f"}},
    {**OK, "tool_choice": {"type": "web_search_preview"}},
    {**OK, "metadata": {f"k{i}": "v" * 512 for i in range(16)}},
    {**OK, "metadata": {"k" * 64: ""}},
    {**OK, "input": [{"role": "user", "content": "hi"}]},
    {**OK, "input": []},
    {**OK, "instructions": "be brief", "user": "u-1"},
]


@pytest.mark.parametrize("body", VALID, ids=[str(i) for i in range(len(VALID))])
def test_valid_request_is_forwarded(post: Any, body: dict[str, Any]) -> None:
    """Requests within every rule, boundaries included, reach the upstream."""
    assert post(body).status_code == 200


def test_stream_options_with_stream_is_accepted(post: Any) -> None:
    """`stream_options` is fine when `stream` is true."""
    body = {**OK, "stream": True, "stream_options": {"include_obfuscation": False}}
    assert post(body).status_code == 200


def test_unknown_fields_forwarded_byte_for_byte(
    scripted_upstream: ServerProcess, post: Any
) -> None:
    """Fields the gateway does not know, odd spacing and key order reach the upstream as sent."""
    raw = (
        b'{ "input" : "hi",\n  "reasoning": {"effort": "high"}, "future_field": [1, 2.50, null],'
        b' "model":"scripted" , "text": {"verbosity": "low"} }'
    )
    assert post(raw).status_code == 200
    assert upstream_requests(scripted_upstream)[-1]["body"] == raw.decode()


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "application/jsonx"]
)
def test_wrong_content_type_is_415(
    gateway: ServerProcess, scripted_upstream: ServerProcess, content_type: str | None
) -> None:
    """Anything but application/json is refused with 415."""
    headers = {"content-type": content_type} if content_type else {}
    response = httpx.post(
        gateway.url + "/v1/responses", content=json.dumps(OK).encode(), headers=headers
    )
    _assert_error(response, 415, code="unsupported_media_type")


def test_json_with_charset_is_accepted(post: Any) -> None:
    """`application/json; charset=utf-8` is JSON."""
    assert post(OK, {"content-type": "application/json; charset=utf-8"}).status_code == 200


BAD_BODIES = {
    "malformed": b'{"model": "scripted", "input": }',
    "truncated": b'{"model": "scripted", "input": "hi"',
    "empty": b"",
    "whitespace": b"   ",
    "array": b'[{"model": "scripted"}]',
    "string": b'"hello"',
    "number": b"42",
    "null": b"null",
    "invalid_utf8": b'{"model": "scripted", "input": "\xff\xfe"}',
    "deep_nesting": b'{"model": "scripted", "input": "hi", "x": '
    + b"[" * 100_000
    + b"]" * 100_000
    + b"}",
    "deep_objects": b'{"model": "scripted", "input": "hi", "x": '
    + b'{"a":' * 50_000
    + b"1"
    + b"}" * 50_000
    + b"}",
}


@pytest.mark.parametrize("name", sorted(BAD_BODIES))
def test_unreadable_body_is_400(scripted_upstream: ServerProcess, post: Any, name: str) -> None:
    """Malformed, truncated, empty, non-object, non-UTF-8 or absurdly nested bodies are 400."""
    _rejected_before_upstream(scripted_upstream, post, BAD_BODIES[name], 400, None)


def test_body_over_limit_with_content_length_is_413(
    scripted_upstream: ServerProcess, post: Any
) -> None:
    """A body over `server.max_body_bytes` (1 MiB in the fixture) is 413."""
    big = {**OK, "input": "x" * (1024 * 1024)}
    _rejected_before_upstream(scripted_upstream, post, big, 413, None)


def test_body_over_limit_without_content_length_is_413(gateway: ServerProcess) -> None:
    """A chunked body with no Content-Length is cut off at the limit with 413."""

    def chunks() -> Iterator[bytes]:
        yield b'{"model": "scripted", "input": "'
        for _ in range(40):
            yield b"x" * 32 * 1024
        yield b'"}'

    response = httpx.post(
        gateway.url + "/v1/responses",
        content=chunks(),
        headers={"content-type": "application/json"},
        timeout=10,
    )
    _assert_error(response, 413, code="request_too_large")


def test_body_just_under_limit_is_accepted(post: Any) -> None:
    """A body just under the limit is forwarded."""
    body = json.dumps({**OK, "input": ""}).encode()
    filler = 1024 * 1024 - len(body) - 16
    assert post({**OK, "input": "x" * filler}).status_code == 200


def test_unknown_model_is_404(scripted_upstream: ServerProcess, post: Any) -> None:
    """An unknown model is 404 `model_not_found` with `param: model`."""
    error = _rejected_before_upstream(
        scripted_upstream, post, {**OK, "model": "gpt-unknown"}, 404, "model"
    )
    assert error["code"] == "model_not_found"


def test_wrong_method_and_unknown_path(gateway: ServerProcess) -> None:
    """GET /v1/responses is 405 and an unknown path 404, both in the error shape."""
    _assert_error(httpx.get(gateway.url + "/v1/responses"), 405, code="method_not_allowed")
    _assert_error(httpx.get(gateway.url + "/v1/nothing-here"), 404, code="not_found")
    _assert_error(httpx.delete(gateway.url + "/v1/models"), 405, code="method_not_allowed")


def test_models_list_and_get(gateway: ServerProcess) -> None:
    """/v1/models lists the configured models in OpenAI's format; one can be fetched by id."""
    listing = httpx.get(gateway.url + "/v1/models").json()
    assert listing["object"] == "list"
    assert [m["id"] for m in listing["data"]] == ["scripted", "renamed", "strict", "nowhere"]
    for model in listing["data"]:
        assert set(model) == {"id", "object", "created", "owned_by"}
        assert model["object"] == "model"
    one = httpx.get(gateway.url + "/v1/models/renamed").json()
    assert one == {"id": "renamed", "object": "model", "created": 0, "owned_by": "scripted"}
    _assert_error(httpx.get(gateway.url + "/v1/models/nope"), 404, "model", "model_not_found")
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0) as sdk:
        assert [m.id for m in sdk.models.list()] == ["scripted", "renamed", "strict", "nowhere"]
        assert sdk.models.retrieve("strict").owned_by == "strict"


def test_model_rewritten_and_fields_dropped(scripted_upstream: ServerProcess, post: Any) -> None:
    """`upstream_model` replaces `model`; a provider's `drop_fields` are removed."""
    assert post({**OK, "model": "renamed"}).status_code == 200
    assert json.loads(upstream_requests(scripted_upstream)[-1]["body"]) == {
        "model": "upstream-name",
        "input": "hi",
    }
    body = {
        "model": "strict",
        "input": "hi",
        "stop": ["x"],
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.5,
    }
    post(body)
    sent = json.loads(upstream_requests(scripted_upstream)[-1]["body"])
    assert sent == {"model": "strict", "input": "hi", "stream": True, "temperature": 0.5}


def test_headers_forwarded_and_withheld(scripted_upstream: ServerProcess, post: Any) -> None:
    """Credentials, cookies and hop-by-hop headers stay; the provider key and request id go."""
    response = post(
        OK,
        {
            "authorization": f"Bearer {CLIENT_KEY}",
            "cookie": "session=abc",
            "connection": "keep-alive, x-private-hop",
            "x-private-hop": "1",
            "keep-alive": "timeout=5",
            "te": "trailers",
            "upgrade": "h2c",
            "proxy-authorization": "Basic eA==",
            "openai-organization": "org-chosen-by-client",
            "x-api-key": CLIENT_KEY,
            "x-forwarded-for": "10.0.0.1",
            "x-forwarded-port": "443",
            "forwarded": "for=10.0.0.1",
            "user-agent": "OpenAI/Python 3.57.0",
            "openai-beta": "responses=v1",
        },
    )
    assert response.status_code == 200
    sent = {k.lower(): v for k, v in upstream_requests(scripted_upstream)[-1]["headers"]}
    assert sent["authorization"] == f"Bearer {PROVIDER_KEY}"
    for withheld in (
        "cookie",
        "x-private-hop",
        "keep-alive",
        "te",
        "upgrade",
        "proxy-authorization",
        "openai-organization",
        "x-api-key",
    ):
        assert withheld not in sent, withheld
    assert sent["user-agent"] == "OpenAI/Python 3.57.0"
    assert sent["openai-beta"] == "responses=v1"
    assert sent["x-request-id"] == response.headers["x-request-id"]
    assert sent["accept-encoding"] == "identity"
    assert PROVIDER_KEY not in response.text
    assert not any(PROVIDER_KEY in v for v in response.headers.values())


def test_client_request_id_is_kept(scripted_upstream: ServerProcess, post: Any) -> None:
    """A sane client `x-request-id` is used end to end; an insane one is replaced."""
    response = post(OK, {"x-request-id": "client-id-123"})
    assert response.headers["x-request-id"] == "client-id-123"
    response = post(OK, {"x-request-id": "bad id with spaces"})
    assert response.headers["x-request-id"].startswith("req_")


@pytest.mark.parametrize("status", [400, 404, 409, 422, 429, 500, 503])
def test_upstream_error_passes_through(post: Any, status: int) -> None:
    """An upstream error with an OpenAI error body reaches the client unchanged."""
    body = json.dumps(
        {"error": {"message": f"upstream says {status}", "type": "x", "param": None, "code": "y"}}
    )
    response = post(OK, {"x-script": f"status={status};body={body}"})
    assert response.status_code == status
    assert response.json() == json.loads(body)


@pytest.mark.parametrize("status", [401, 403])
def test_upstream_auth_failure_is_502(post: Any, status: int) -> None:
    """An upstream 401/403 means the gateway's provider key is wrong: 502, caller not blamed."""
    body = json.dumps(
        {
            "error": {
                "message": f"bad key {PROVIDER_KEY}",
                "type": "x",
                "param": None,
                "code": "invalid_api_key",
            }
        }
    )
    response = post(OK, {"x-script": f"status={status};body={body}"})
    error = _assert_error(response, 502, code="upstream_auth_failed")
    assert "your API key is fine" in error["message"]
    assert PROVIDER_KEY not in response.text


def test_upstream_html_error_is_wrapped(post: Any) -> None:
    """An upstream error without an OpenAI body keeps its status, in the OpenAI shape."""
    response = post(OK, {"x-script": "status=502;body=<html>Bad Gateway</html>"})
    error = _assert_error(response, 502, code="upstream_error")
    assert "<html>" not in error["message"]


def test_unreachable_upstream_is_502(post: Any) -> None:
    """A provider whose port is closed is a 502 `upstream_unavailable`."""
    _assert_error(post({**OK, "model": "nowhere"}), 502, code="upstream_unavailable")


def test_silent_upstream_is_504(post: Any) -> None:
    """An upstream silent past `read_timeout` before its first byte is a 504."""
    _assert_error(post(OK, {"x-script": "hang"}), 504, code="upstream_timeout")


def test_response_headers_passed_and_withheld(post: Any) -> None:
    """The provider's cookies, account and rate-limit headers stay; its request id is renamed."""
    response = post(OK)
    assert response.status_code == 200
    assert response.headers["openai-processing-ms"] == "12"
    assert response.headers["x-upstream-request-id"] == "upstream-req-1"
    assert response.headers["x-request-id"] != "upstream-req-1"
    for withheld in (
        "set-cookie",
        "openai-organization",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-limit-tokens",
    ):
        assert withheld not in response.headers, withheld
