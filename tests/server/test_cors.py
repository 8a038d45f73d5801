"""Browser clients: CORS for the origins in `server.cors_origins`, and for no other."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from gateway.headers import downstream_headers
from gateway.server import Cors
from gateway.settings import ConfigError, settings_from_dict
from tests.support.admin import create_key, mock_config
from tests.support.gateway import GatewayFactory, request_line
from tests.support.procs import ServerProcess
from tests.support.redis_server import RedisServer

ORIGIN = "https://chat.example.com"
OTHER = "http://localhost:5173"
SDK_HEADERS = (
    "authorization, content-type, openai-beta, x-stainless-os, x-stainless-retry-count, "
    "x-stainless-package-version, api-key, x-api-key"
)
OK = {"model": "mock-gpt", "input": "hi"}


@pytest.fixture(scope="module")
def browser_gateway(
    gateway_factory: GatewayFactory, redis_server: RedisServer, mock_upstream: ServerProcess
) -> ServerProcess:
    """A gateway with keys and quotas that lets pages of two origins call it."""
    config = mock_config(redis_server.url, mock_upstream.url, "fail_closed", 1.0)
    config["server"] = {"cors_origins": [ORIGIN, OTHER.upper()]}  # origins match in any case
    config["limits"] = {"tiers": {"default": {"requests_per_minute": 1000}}}
    return gateway_factory(config)


@pytest.fixture(scope="module")
def browser_key(browser_gateway: ServerProcess, secrets_seen: list[str]) -> str:
    return create_key(browser_gateway.url, secrets_seen, user="browser")[1]


def _cors(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.startswith("access-control-")}


def _vary(response: httpx.Response) -> list[str]:
    return [v.strip().lower() for v in response.headers.get("vary", "").split(",")]


def _preflight(url: str, path: str, method: str, origin: str, rid: str) -> httpx.Response:
    return httpx.options(
        url + path,
        headers={
            "origin": origin,
            "access-control-request-method": method,
            "access-control-request-headers": SDK_HEADERS,
            "x-request-id": rid,
        },
    )


@pytest.mark.parametrize(("path", "method"), [("/v1/responses", "POST"), ("/v1/models", "GET")])
def test_a_preflight_is_answered_without_credentials(
    browser_gateway: ServerProcess, path: str, method: str
) -> None:
    """A preflight from a listed origin gets 204 with the methods and the SDKs' headers allowed,
    a max age, and no credentials flag; it needs no API key, and leaves its log line."""
    rid = f"preflight-{method}"
    for origin in (ORIGIN, OTHER):
        response = _preflight(browser_gateway.url, path, method, origin, rid)
        assert response.status_code == 204, response.text
        cors = _cors(response)
        assert cors["access-control-allow-origin"] == origin
        assert method in cors["access-control-allow-methods"]
        allowed = {h.strip() for h in cors["access-control-allow-headers"].split(",")}
        assert allowed == {h.strip() for h in SDK_HEADERS.split(",")}
        assert int(cors["access-control-max-age"]) >= 600
        assert "access-control-allow-credentials" not in cors
        assert "origin" in _vary(response)
    line = request_line(browser_gateway, request_id=rid, method="OPTIONS")
    assert line["status"] == 204


def test_answers_to_a_listed_origin_carry_cors_headers(
    browser_gateway: ServerProcess, browser_key: str
) -> None:
    """Answers of the hot path (JSON, an SSE stream, errors) and of /v1/models allow the origin,
    vary on it, and expose the request id and the rate-limit headers to the page."""
    url, auth = browser_gateway.url, {"authorization": f"Bearer {browser_key}"}
    page = {"origin": ORIGIN}
    with httpx.Client(base_url=url, headers=page, timeout=10) as client:
        answered = client.post("/v1/responses", json=OK, headers=auth)
        assert answered.status_code == 200, answered.text
        assert answered.headers["x-ratelimit-limit-requests"] == "1000"
        with client.stream(
            "POST", "/v1/responses", json={**OK, "stream": True}, headers=auth
        ) as streamed:
            text = "".join(streamed.iter_text())
        assert streamed.status_code == 200
        assert streamed.headers["content-type"].startswith("text/event-stream")
        assert "response.completed" in text
        responses = {
            "json": answered,
            "sse": streamed,
            "401": client.post("/v1/responses", json=OK),
            "400": client.post("/v1/responses", json={**OK, "temperature": 5}, headers=auth),
            "models": client.get("/v1/models", headers=auth),
            "404": client.get("/v1/models/ghost", headers=auth),
        }
    assert [r.status_code for r in responses.values()] == [200, 200, 401, 400, 200, 404]
    for name, response in responses.items():
        cors = _cors(response)
        assert cors.get("access-control-allow-origin") == ORIGIN, name
        assert "origin" in _vary(response), name
        exposed = {h.strip() for h in cors["access-control-expose-headers"].split(",")}
        assert "x-request-id" in exposed, name
        assert {h for h in answered.headers if h.startswith("x-ratelimit-")} <= exposed
        assert "retry-after" in exposed


def test_an_origin_not_listed_gets_no_cors_headers(
    browser_gateway: ServerProcess, browser_key: str, mock_gateway: ServerProcess
) -> None:
    """No CORS header for an origin not listed, outside /v1/, nor from a gateway without
    `cors_origins`: the browser then keeps the answer from the page."""
    auth = {"authorization": f"Bearer {browser_key}"}
    evil = "https://chat.example.com.evil.test"
    cases = [
        (browser_gateway, evil, "/v1/responses"),
        (browser_gateway, "null", "/v1/models"),
        (browser_gateway, ORIGIN, "/admin/keys"),
        (mock_gateway, ORIGIN, "/v1/responses"),
    ]
    for gateway, origin, path in cases:
        preflight = _preflight(gateway.url, path, "POST", origin, "not-listed")
        assert _cors(preflight) == {}, (origin, path)
        answer = httpx.post(gateway.url + path, json=OK, headers={"origin": origin, **auth})
        assert _cors(answer) == {}, (origin, path)


def test_cors_origins_must_be_origins() -> None:
    """`server.cors_origins` takes origins as browsers send them (no path), or `*`."""
    base: dict[str, Any] = {
        "providers": {"p": {"base_url": "embedded"}},
        "models": [{"name": "m", "provider": "p"}],
        "auth": {"enabled": False},
    }
    for origins in (["*"], [ORIGIN, "http://127.0.0.1:8080", "tauri://localhost"]):
        settings = settings_from_dict({**base, "server": {"cors_origins": origins}}, "t.yaml")
        assert settings.server.cors_origins == tuple(origins)
    for bad in ("https://chat.example.com/", "chat.example.com", "https://a.example/app", ""):
        with pytest.raises(ConfigError, match=r"t\.yaml: server\.cors_origins\[1\]: expected"):
            settings_from_dict({**base, "server": {"cors_origins": [ORIGIN, bad]}}, "t.yaml")


def test_star_allows_any_origin_and_keeps_the_answers_vary() -> None:
    """With `*` any origin is echoed (never a literal `*`), and `Origin` joins the answer's own
    `Vary` instead of replacing it."""
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"vary", b"Accept-Encoding")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/v1/models",
        "headers": [(b"origin", b"https://anyone.example")],
    }
    asyncio.run(Cors(app, ["*"])(scope, None, send))  # type: ignore[arg-type]  # a minimal scope
    headers = dict(sent[0]["headers"])
    assert headers[b"access-control-allow-origin"] == b"https://anyone.example"
    assert headers[b"vary"] == b"Accept-Encoding, Origin"


def test_the_providers_own_cors_headers_never_reach_the_client() -> None:
    """An upstream's `Access-Control-*` headers are dropped: which pages may read an answer is
    the gateway's decision (a second `Allow-Origin` would also make browsers refuse it)."""
    upstream = [
        (b"Access-Control-Allow-Origin", b"*"),
        (b"access-control-expose-headers", b"x-secret"),
        (b"content-type", b"application/json"),
    ]
    assert downstream_headers(upstream, b"rid") == [
        (b"content-type", b"application/json"),
        (b"x-request-id", b"rid"),
    ]
