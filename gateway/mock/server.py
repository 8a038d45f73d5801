"""The mock's HTTP server (aiohttp): /v1/responses, /v1/models, /healthz."""

from __future__ import annotations

import asyncio
import secrets
import ssl
import time
from typing import Any

import msgspec
from aiohttp import web

from .events import plan, response_object, stream_events
from .faults import BadOverride, Steering, steering

_encode = msgspec.json.Encoder().encode
_STATUS_TEXT = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "permission_denied"),
    404: ("invalid_request_error", "not_found"),
    429: ("requests", "rate_limit_exceeded"),
}


class MockSettings(msgspec.Struct, frozen=True):
    """Defaults of the mock; each request may override them with headers."""

    ttft_ms: float = 0.0
    """Delay before the first output delta."""
    tokens_per_second: float = 0.0
    """Pace of the deltas; 0 sends them as fast as possible."""
    models: tuple[str, ...] = ("mock-gpt",)
    """Models it answers for; others get 404 `model_not_found`."""
    static: bool = False
    """Benchmark mode: each distinct request body is answered once, then replayed from memory
    as one write, so the upstream costs next to nothing (the benchmark's static upstream)."""


def _error(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> web.Response:
    kind, default_code = _STATUS_TEXT.get(status, ("server_error", "server_error"))
    body = {
        "error": {"message": message, "type": kind, "param": param, "code": code or default_code}
    }
    headers = {"retry-after": "1"} if status == 429 else None
    return web.Response(
        status=status, body=_encode(body), content_type="application/json", headers=headers
    )


def create_mock_app(settings: MockSettings) -> web.Application:
    """The mock as an aiohttp application."""
    models = set(settings.models)
    rendered: dict[bytes, tuple[bytes, str]] = {}  # static mode: body -> (answer, content type)
    listing = _encode(
        {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": 0, "owned_by": "mock"}
                for m in settings.models
            ],
        }
    )

    async def responses(request: web.Request) -> web.StreamResponse:
        if settings.static:
            raw = await request.read()
            if raw in rendered:
                body_bytes, kind = rendered[raw]
                return web.Response(body=body_bytes, headers={"content-type": kind})
        response = await answer(request)
        if settings.static and response.status == 200 and len(rendered) < 1024:
            rendered[raw] = _render_static(await request.json(), response)
        return response

    async def answer(request: web.Request) -> web.StreamResponse:
        try:
            steer = steering(request.headers, settings.ttft_ms, settings.tokens_per_second)
        except BadOverride as exc:
            return _error(400, str(exc))
        try:
            body = msgspec.json.decode(await request.read())
        except (msgspec.DecodeError, UnicodeDecodeError):
            return _error(400, "The body is not valid JSON.")
        if not isinstance(body, dict):
            return _error(400, "The body must be a JSON object.")
        for required in ("model", "input"):
            if required not in body:
                return _error(400, f"Missing required parameter: '{required}'.", param=required)
        if body["model"] not in models:
            return _error(
                404, f"The model `{body['model']}` does not exist.", "model", "model_not_found"
            )
        if steer.hang:
            await _until_gone(request)
            return web.Response(status=499)
        if steer.slow_headers_ms:
            await asyncio.sleep(steer.slow_headers_ms / 1000)
        if steer.status is not None:
            return _error(steer.status, f"Injected fault: HTTP {steer.status}.")
        answer = plan(body, steer.reply)
        if body.get("stream"):
            return await _stream(request, body, answer, steer)
        delay = steer.ttft_ms / 1000
        if steer.tokens_per_second:
            delay += len(answer.tokens) / steer.tokens_per_second
        if delay:
            await asyncio.sleep(delay)
        return web.Response(
            body=_encode(response_object(body, answer, final=True)),
            content_type="application/json",
            headers={"x-request-id": "req_" + secrets.token_hex(12)},
        )

    async def list_models(_: web.Request) -> web.Response:
        return web.Response(body=listing, content_type="application/json")

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(body=b'{"status":"ok"}', content_type="application/json")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/responses", responses)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/healthz", healthz)
    return app


def _render_static(body: dict[str, Any], response: web.StreamResponse) -> tuple[bytes, str]:
    """The complete answer to `body` as bytes, for static replay."""
    if isinstance(response, web.Response) and response.body is not None:
        return bytes(response.body), response.content_type  # type: ignore[arg-type]  # bytes body
    events = stream_events(body, plan(body, None))
    frames = b"".join(
        b"event: " + e["type"].encode() + b"\ndata: " + _encode(e) + b"\n\n" for e in events
    )
    return frames, "text/event-stream; charset=utf-8"


async def _until_gone(request: web.Request) -> None:
    # aiohttp tells a handler nothing when its client leaves without sending: poll the transport.
    while request.transport is not None and not request.transport.is_closing():  # noqa: ASYNC110
        await asyncio.sleep(0.05)


async def _stream(
    request: web.Request, body: dict[str, Any], answer: Any, steer: Steering
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            "content-type": "text/event-stream; charset=utf-8",
            "x-request-id": "req_" + secrets.token_hex(12),
            "openai-version": "2020-10-01",
        }
    )
    await response.prepare(request)
    eol = b"\r\n" if steer.crlf else b"\n"
    gap = 1 / steer.tokens_per_second if steer.tokens_per_second else 0.0
    first_delta = True
    started = time.monotonic()
    for count, event in enumerate(stream_events(body, answer)):
        if steer.drop_after is not None and count == steer.drop_after:
            if request.transport is not None:
                request.transport.abort()  # no terminating chunk: the body stays incomplete
            return response
        if event["type"].endswith(".delta"):
            if first_delta:
                first_delta = False
                wait = steer.ttft_ms / 1000 - (time.monotonic() - started)
                if wait > 0:
                    await asyncio.sleep(wait)
            elif gap:
                await asyncio.sleep(gap)
        data = _encode(event)
        head = b"" if steer.data_only else b"event: " + event["type"].encode() + eol
        await response.write(head + b"data: " + data + eol + eol)
        if steer.comments:
            await response.write(b": keep-alive" + eol + eol)
    if steer.data_only:
        await response.write(b"data: [DONE]" + eol + eol)
    await response.write_eof()
    return response


async def start_mock_server(
    settings: MockSettings,
    host: str = "127.0.0.1",
    port: int = 0,
    tls: ssl.SSLContext | None = None,
) -> tuple[web.AppRunner, str]:
    """Serve the mock on `host:port` (0: any free port), over TLS when `tls` is given;
    returns the runner and its /v1 URL."""
    runner = web.AppRunner(create_mock_app(settings), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=tls)
    await site.start()
    bound = runner.addresses[0]
    scheme = "https" if tls else "http"
    return runner, f"{scheme}://{host}:{bound[1]}/v1"
