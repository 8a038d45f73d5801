"""Every request leaves one canonical log line: the hot path's, and every other route's,
unknown paths and wrong methods included; a 400's line names the rejected field."""

from __future__ import annotations

import itertools
from typing import Any

import httpx
import pytest

from tests.support.admin import admin_client, create_key, keyed_config
from tests.support.gateway import GatewayFactory, log_lines, request_line
from tests.support.procs import ServerProcess
from tests.support.redis_server import RedisServer

_ids = itertools.count()


@pytest.fixture(scope="module")
def logged(
    gateway_factory: GatewayFactory, redis_server: RedisServer, scripted_upstream: ServerProcess
) -> ServerProcess:
    """A gateway with keys and the admin API, logging at info level."""
    return gateway_factory(keyed_config(redis_server.url, scripted_upstream.url))


@pytest.fixture(scope="module")
def caller_key(logged: ServerProcess, secrets_seen: list[str]) -> str:
    return create_key(logged.url, secrets_seen, user="logged-caller")[1]


def _only_line(server: ServerProcess, request_id: str, **fields: Any) -> dict[str, Any]:
    """The request's line, once another request's line came after it: there is no second."""
    line = request_line(server, request_id=request_id, **fields)
    after = f"after-{request_id}"
    httpx.get(f"{server.url}/no-such-path", headers={"x-request-id": after})
    request_line(server, request_id=after)
    lines = [x for x in log_lines(server) if x["event"] == "request"]
    assert [x for x in lines if x["request_id"] == request_id] == [line]
    return line


CASES: list[tuple[str, str, str, Any, dict[str, Any]]] = [
    ("unknown_path", "GET", "/v2/responses", None, {"status": 404, "error_code": "not_found"}),
    ("unknown_below_hot_path", "POST", "/v1/responses/x", {}, {"status": 404}),
    (
        "wrong_method",
        "DELETE",
        "/v1/models",
        None,
        {"status": 405, "method": "DELETE", "error_code": "method_not_allowed"},
    ),
    ("models", "GET", "/v1/models", None, {"status": 200, "user": "logged-caller"}),
    (
        "unknown_model",
        "GET",
        "/v1/models/ghost",
        None,
        {"status": 404, "error_code": "model_not_found", "param": "model"},
    ),
    ("usage", "GET", "/v1/usage", None, {"status": 200, "key_id": "?"}),
    ("admin_list", "GET", "/admin/keys", None, {"status": 200, "path": "/admin/keys"}),
    ("admin_create", "POST", "/admin/keys", {"user": "logged"}, {"status": 201}),
    (
        "admin_bad_field",
        "POST",
        "/admin/keys",
        {"user": "logged", "models": {}},
        {"status": 400, "error_code": "invalid_value", "param": "models"},
    ),
    (
        "admin_unknown_key",
        "PATCH",
        "/admin/keys/knosuchkey0000",
        {"team": "x"},
        {"status": 404, "error_code": "key_not_found", "method": "PATCH"},
    ),
    ("admin_refused", "GET", "/admin/keys", None, {"status": 401, "error_code": "invalid_api_key"}),
]


@pytest.mark.parametrize(
    ("case", "method", "path", "body", "expected"), CASES, ids=[c[0] for c in CASES]
)
def test_every_other_request_leaves_one_line(
    logged: ServerProcess,
    caller_key: str,
    secrets_seen: list[str],
    case: str,
    method: str,
    path: str,
    body: Any,
    expected: dict[str, Any],
) -> None:
    """Routes other than POST /v1/responses, unknown paths and wrong methods each write one
    `request` line with the request id the client saw, the status, latency, and the error's
    code and `param`; admin calls too, never with a credential."""
    rid = f"line-{case}-{next(_ids)}"
    credential = caller_key if path.startswith("/v1/") else "sk-wrong-admin-credential"
    with admin_client(logged.url) as admin:
        if case != "admin_refused" and path.startswith("/admin"):
            credential = admin.headers["authorization"].split(" ", 1)[1]
        headers = {"authorization": f"Bearer {credential}", "x-request-id": rid}
        response = admin.request(method, path, json=body, headers=headers)
    assert response.status_code == expected["status"], response.text
    assert response.headers["x-request-id"] == rid
    if response.status_code == 201:
        secrets_seen.append(response.json()["key"])
    line = _only_line(logged, rid)
    assert line["level"] == "info"
    assert line["latency_ms"] >= 0
    assert line.get("path", "/v1/responses") == path
    assert line.get("method", "POST") == method
    for name, value in expected.items():
        if value == "?":
            assert line[name], name
        elif name not in ("method", "path"):
            assert line.get(name) == value, (name, line)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "scripted", "input": "hi", "temperature": 5}, "temperature"),
        ({"model": "scripted"}, "input"),
        ({"model": "scripted", "input": "hi", "tools": [{"type": "function"}]}, "tools[0].name"),
        ({"model": "ghost", "input": "hi"}, "model"),
    ],
)
def test_a_rejected_field_is_named_in_the_line(
    logged: ServerProcess, caller_key: str, body: dict[str, Any], param: str
) -> None:
    """A /v1/responses request refused for one of its fields logs that field as `param`, as
    the error body names it."""
    rid = f"param-{next(_ids)}"
    headers = {"authorization": f"Bearer {caller_key}", "x-request-id": rid}
    response = httpx.post(f"{logged.url}/v1/responses", json=body, headers=headers)
    assert response.status_code in (400, 404), response.text
    assert response.json()["error"]["param"] == param
    line = request_line(logged, request_id=rid)
    assert line["param"] == param
    assert line["error_code"] == response.json()["error"]["code"]
    assert _only_line(logged, rid) == line


@pytest.fixture(scope="module")
def debug_gateway(gateway_factory: GatewayFactory, mock_upstream: ServerProcess) -> ServerProcess:
    """A gateway logging at debug level."""
    return gateway_factory(
        {
            "providers": {"mock": {"base_url": mock_upstream.url + "/v1", "api_key": "k"}},
            "models": [{"name": "mock-gpt", "provider": "mock"}],
            "auth": {"enabled": False},
            "logging": {"level": "debug"},
        }
    )


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_probes_are_logged_at_debug_level(
    debug_gateway: ServerProcess, logged: ServerProcess, path: str
) -> None:
    """A successful probe's line is at debug level: present when the log level is debug,
    absent from an info-level log (probes come every few seconds)."""
    rid = f"probe-{next(_ids)}"
    assert httpx.get(debug_gateway.url + path, headers={"x-request-id": rid}).status_code == 200
    line = _only_line(debug_gateway, rid)
    assert (line["level"], line["path"], line["status"]) == ("debug", path, 200)
    quiet = f"quiet-{next(_ids)}"
    assert httpx.get(logged.url + path, headers={"x-request-id": quiet}).status_code == 200
    after = f"after-{quiet}"
    httpx.get(f"{logged.url}/no-such-path", headers={"x-request-id": after})
    request_line(logged, request_id=after)
    assert not [x for x in log_lines(logged) if x.get("request_id") == quiet]
