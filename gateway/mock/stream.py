"""Sending a streamed answer as server-sent events: framing, pacing, and the stream faults.

A frame is `event: TYPE\\ndata: JSON\\n\\n` (one-line JSON), each written as its own chunk as
a real provider streams; the faults `data-only`, `crlf`, `comments` and `drop-after` change
that (see `faults`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec
from aiohttp import web

from .faults import Steering

EVENT_STREAM = "text/event-stream; charset=utf-8"
_DONE = b"data: [DONE]"
_COMMENT = b": keep-alive"


def frame(event: dict[str, Any], data_only: bool = False, eol: bytes = b"\n") -> bytes:
    """One event as an SSE frame, blank line included."""
    data = b"data: " + msgspec.json.encode(event) + eol + eol
    if data_only:
        return data
    name: str = event["type"]
    return b"event: " + name.encode() + eol + data


def drop(request: web.Request, response: web.StreamResponse) -> None:
    """Close the connection now, so a body already begun is never finished."""
    response.force_close()  # not kept alive: aiohttp must not reuse the connection
    if request.transport is not None:
        # close() rather than abort(): what was written still goes out, then the FIN, and the
        # client sees a body cut exactly where the fault says.
        request.transport.close()


async def send_stream(
    request: web.Request,
    events: Iterable[dict[str, Any]],
    steer: Steering,
    headers: Mapping[str, str],
) -> web.StreamResponse:
    """Stream `events`: the first delta `ttft_ms` after the headers, then one per
    1/`tokens_per_second`; no sleeping at all when both are 0."""
    response = web.StreamResponse(headers={**headers, "content-type": EVENT_STREAM})
    # A client leaving mid-stream is normal for a server: nothing to report.
    with contextlib.suppress(ConnectionError):
        await response.prepare(request)
        await _send_events(request, response, events, steer)
    return response


async def _send_events(
    request: web.Request,
    response: web.StreamResponse,
    events: Iterable[dict[str, Any]],
    steer: Steering,
) -> None:
    eol = b"\r\n" if steer.crlf else b"\n"
    comment = _COMMENT + eol + eol if steer.comments else b""
    loop = asyncio.get_running_loop()
    paced = steer.ttft_ms > 0 or steer.tokens_per_second > 0
    gap = 1 / steer.tokens_per_second if steer.tokens_per_second else 0.0
    due = loop.time() + steer.ttft_ms / 1000  # when the next delta may go
    for sent, event in enumerate(events):
        if sent == steer.drop_after:
            drop(request, response)
            return
        if paced and event["type"].endswith(".delta"):
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            # Paced from when this delta actually went, so a slow reader gets no burst later.
            due = max(due, loop.time()) + gap
        if comment and sent:
            await response.write(comment)
        await response.write(frame(event, steer.data_only, eol))
    if steer.data_only:
        if comment:
            await response.write(comment)
        await response.write(_DONE + eol + eol)
    if steer.drop_after is not None:  # fewer events than N: still leave the body unfinished
        drop(request, response)
        return
    await response.write_eof()
