"""The mock's HTTP server (aiohttp): POST /v1/responses, GET /v1/models, GET /healthz.

How a request to /v1/responses goes: steering headers are read (`faults`), the body is
checked (`request`), then the faults that act before any answer (`hang`, `slow-headers`,
`status=CODE`) apply; the answer is decided (`answer`) and sent whole as JSON or as a stream
of events (`events`, `stream`).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import ssl
import time

import msgspec
from aiohttp import web

from .answer import plan
from .errors import MockError, injected
from .events import response_object, stream_events
from .faults import Steering, steered, steering
from .request import parse_body
from .settings import MockSettings
from .stream import EVENT_STREAM, drop, frame, send_stream

_MAX_BODY = 64 * 1024 * 1024
_MAX_REPLAYS = 1024  # static mode keeps at most this many distinct answers
_GONE_POLL_SECONDS = 0.05


class _Mock:
    """The handlers, and the state one mock application owns."""

    def __init__(self, settings: MockSettings) -> None:
        self.settings = settings
        self.models = frozenset(settings.models)
        self.defaults = Steering(settings.ttft_ms, settings.tokens_per_second)
        created = int(time.time())
        self.models_by_id = {
            name: {"id": name, "object": "model", "created": created, "owned_by": "mock"}
            for name in settings.models
        }
        self.listing = msgspec.json.encode(
            {"object": "list", "data": list(self.models_by_id.values())}
        )
        self.replays: dict[bytes, tuple[bytes, str]] = {}  # static mode: body -> (answer, type)
        self.closing = asyncio.Event()  # set when the server shuts down: ends `hang` requests

    async def responses(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/responses."""
        request_id = "req_" + secrets.token_hex(16)
        try:
            if self.settings.static and not steered(request.headers):
                return await self._replay(request, request_id)
            return await self._answer(request, request_id)
        except MockError as error:
            return error.response(request_id)

    async def _answer(self, request: web.Request, request_id: str) -> web.StreamResponse:
        steer = steering(request.headers, self.defaults)
        body = parse_body(await request.read(), self.models)
        if steer.hang:
            await self._until_gone(request)
            # Only a client still there when the server stops reads this.
            raise MockError(503, "The mock upstream is shutting down.")
        if steer.slow_headers_ms:
            await asyncio.sleep(steer.slow_headers_ms / 1000)
        if steer.status is not None:
            raise injected(steer.status)
        answer = plan(body, steer.reply)
        headers = {"x-request-id": request_id, "openai-version": "2020-10-01"}
        if body.get("stream"):
            return await send_stream(request, stream_events(body, answer), steer, headers)
        delay = steer.ttft_ms / 1000
        if steer.tokens_per_second:
            delay += answer.output_tokens / steer.tokens_per_second
        if delay > 0:
            await asyncio.sleep(delay)
        payload = msgspec.json.encode(response_object(body, answer, final=True))
        if steer.drop_after is None:
            return web.Response(body=payload, content_type="application/json", headers=headers)
        # drop-after on a whole answer: the headers promise a body that never comes.
        response = web.StreamResponse(headers={**headers, "content-type": "application/json"})
        response.content_length = len(payload)
        with contextlib.suppress(ConnectionError):  # the client may be gone already
            await response.prepare(request)
        drop(request, response)
        return response

    async def _replay(self, request: web.Request, request_id: str) -> web.Response:
        """Static mode: the answer to this exact body, rendered once, sent in one write."""
        raw = await request.read()
        replay = self.replays.get(raw)
        if replay is None:
            body = parse_body(raw, self.models)
            answer = plan(body, None)
            if body.get("stream"):
                rendered = b"".join(frame(event) for event in stream_events(body, answer))
                replay = (rendered, EVENT_STREAM)
            else:
                rendered = msgspec.json.encode(response_object(body, answer, final=True))
                replay = (rendered, "application/json")
            if len(self.replays) < _MAX_REPLAYS:
                self.replays[raw] = replay
        content, content_type = replay
        return web.Response(
            body=content, headers={"content-type": content_type, "x-request-id": request_id}
        )

    async def _until_gone(self, request: web.Request) -> None:
        """Wait until the client disconnects or the server shuts down."""
        # aiohttp does not tell a handler that its client left (unless the runner cancels
        # handlers, which a caller's runner may not do), so watch the transport.
        while not self.closing.is_set():
            transport = request.transport
            if transport is None or transport.is_closing():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closing.wait(), _GONE_POLL_SECONDS)

    async def list_models(self, _: web.Request) -> web.Response:
        """GET /v1/models."""
        return web.Response(body=self.listing, content_type="application/json")

    async def get_model(self, request: web.Request) -> web.Response:
        """GET /v1/models/{model}."""
        name = request.match_info["model"]
        if name not in self.models_by_id:
            error = MockError(
                404,
                f"The model `{name}` does not exist or you do not have access to it.",
                code="model_not_found",
            )
            return error.response("req_" + secrets.token_hex(16))
        return web.Response(
            body=msgspec.json.encode(self.models_by_id[name]), content_type="application/json"
        )

    async def healthz(self, _: web.Request) -> web.Response:
        """GET /healthz: the server is up."""
        return web.Response(body=b'{"status":"ok"}', content_type="application/json")

    async def not_found(self, request: web.Request) -> web.Response:
        """Any other route, answered like OpenAI does."""
        error = MockError(404, f"Invalid URL ({request.method} {request.path})")
        return error.response("req_" + secrets.token_hex(16))

    async def on_shutdown(self, _: web.Application) -> None:
        """Release the requests that hang, so shutting down does not wait for them."""
        self.closing.set()


def create_mock_app(settings: MockSettings) -> web.Application:
    """The mock as an aiohttp application; each one has its own state."""
    mock = _Mock(settings)
    app = web.Application(client_max_size=_MAX_BODY)
    app.router.add_post("/v1/responses", mock.responses)
    app.router.add_get("/v1/models", mock.list_models)
    app.router.add_get("/v1/models/{model}", mock.get_model)
    app.router.add_get("/healthz", mock.healthz)
    app.router.add_route("*", "/{path:.*}", mock.not_found)
    app.on_shutdown.append(mock.on_shutdown)
    return app


async def start_mock_server(
    settings: MockSettings,
    host: str = "127.0.0.1",
    port: int = 0,
    tls: ssl.SSLContext | None = None,
) -> tuple[web.AppRunner, str]:
    """Serve the mock on `host:port` (port 0: a free one), over HTTPS when `tls` is given.

    Returns the runner, which the caller stops with `await runner.cleanup()`, and the base URL
    including `/v1`, e.g. `http://127.0.0.1:43123/v1`.
    """
    runner = web.AppRunner(create_mock_app(settings), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, ssl_context=tls).start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0][1]
    shown = f"[{host}]" if ":" in host else host
    return runner, f"{'https' if tls else 'http'}://{shown}:{bound}/v1"
