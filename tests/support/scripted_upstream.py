"""A scripted upstream for tests, run as `python -m tests.support.scripted_upstream PORT`.

POST /v1/responses answers according to request headers:
- `x-replay-file: PATH` + `x-replay-seed: N` + `x-replay-max-chunk: M`: send the file's bytes as
  an SSE body in chunks of random sizes (1..M bytes), each written and drained separately.
- `x-replay-abort: 1` with a replay: close the connection at the end instead of ending the body.
- `x-script: hang`: never answer; note when the gateway closes the connection.
- `x-script: trickle`: send a comment frame every 50 ms, forever; note when the connection closes.
- `x-script: stall`: send one complete SSE frame, then nothing more (the gateway's read timeout).
- `x-script: status=CODE;body=TEXT`: answer CODE with the body TEXT (JSON or not).
Every request's headers and body are recorded; GET /_requests returns them, GET /_closed the
request ids whose connection the gateway closed, POST /_reset clears both. A gateway forwards
the steering headers (`STEERING_HEADERS`) only to a provider that lists them in
`forward_headers`.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from pathlib import Path

from aiohttp import web

STEERING_HEADERS = (
    "x-script",
    "x-replay-file",
    "x-replay-seed",
    "x-replay-max-chunk",
    "x-replay-abort",
)


def _app() -> web.Application:
    requests: list[dict[str, object]] = []
    closed: list[dict[str, object]] = []

    async def responses(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        requests.append(
            {"headers": [[k, v] for k, v in request.headers.items()], "body": body.decode()}
        )
        rid = request.headers.get("x-request-id", "")
        script = request.headers.get("x-script", "")
        if "x-replay-file" in request.headers:
            return await _replay(request)
        if script == "hang":
            await _wait_closed(request, rid, closed, time.monotonic())
            return web.Response(status=204)
        if script == "stall":
            return await _stall(request, rid, closed)
        if script == "trickle":
            return await _trickle(request, rid, closed)
        if script.startswith("status="):
            parts = dict(p.split("=", 1) for p in script.split(";"))
            return web.Response(
                status=int(parts["status"]),
                body=parts.get("body", "").encode(),
                content_type="application/json"
                if parts.get("body", "").startswith("{")
                else "text/html",
            )
        return web.json_response(
            {
                "id": "resp_1",
                "object": "response",
                "status": "completed",
                "output": [],
                "usage": {"input_tokens": 3, "output_tokens": 5, "total_tokens": 8},
            },
            headers={  # what OpenAI sends beside its answers
                "x-request-id": "upstream-req-1",
                "openai-processing-ms": "12",
                "openai-organization": "org-shared",
                "x-ratelimit-remaining-requests": "9999",
                "x-ratelimit-limit-tokens": "2000000",
                "set-cookie": "__cf_bm=abc; path=/",
            },
        )

    async def get_requests(_: web.Request) -> web.Response:
        return web.json_response(requests)

    async def get_closed(_: web.Request) -> web.Response:
        return web.json_response(closed)

    async def reset(_: web.Request) -> web.Response:
        requests.clear()
        closed.clear()
        return web.json_response({})

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/responses", responses)
    app.router.add_get("/_requests", get_requests)
    app.router.add_get("/_closed", get_closed)
    app.router.add_post("/_reset", reset)
    app.router.add_get("/healthz", healthz)
    return app


async def _replay(request: web.Request) -> web.StreamResponse:
    data = Path(request.headers["x-replay-file"]).read_bytes()  # noqa: ASYNC240  (small test files)
    rng = random.Random(int(request.headers.get("x-replay-seed", "0")))
    biggest = int(request.headers.get("x-replay-max-chunk", "64"))
    response = web.StreamResponse(headers={"content-type": "text/event-stream; charset=utf-8"})
    await response.prepare(request)
    position = 0
    while position < len(data):
        size = rng.randint(1, biggest)
        await response.write(data[position : position + size])
        position += size
    if request.headers.get("x-replay-abort") and request.transport is not None:
        request.transport.abort()  # the chunked body is never terminated
        return response
    await response.write_eof()
    return response


async def _wait_closed(
    request: web.Request, rid: str, closed: list[dict[str, object]], since: float
) -> None:
    # aiohttp gives a handler no event for a peer that leaves without sending: poll the transport
    while request.transport is not None and not request.transport.is_closing():  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    closed.append({"request_id": rid, "after_s": time.monotonic() - since})


async def _trickle(
    request: web.Request, rid: str, closed: list[dict[str, object]]
) -> web.StreamResponse:
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    started = time.monotonic()
    try:
        while request.transport is not None and not request.transport.is_closing():
            await response.write(b": tick\n\n")
            await asyncio.sleep(0.05)
    except (ConnectionError, RuntimeError):
        pass
    closed.append({"request_id": rid, "after_s": time.monotonic() - started})
    return response


async def _stall(
    request: web.Request, rid: str, closed: list[dict[str, object]]
) -> web.StreamResponse:
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    await response.write(
        b'event: response.created\ndata: {"type":"response.created","sequence_number":0}\n\n'
    )
    await _wait_closed(request, rid, closed, time.monotonic())
    return response


if __name__ == "__main__":
    web.run_app(_app(), host="127.0.0.1", port=int(sys.argv[1]), print=None)
