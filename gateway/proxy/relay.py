"""Relaying an upstream's answer to the client byte for byte: a stream chunk by chunk as it
arrives (a copy watched by the SSE tap for its usage), or a body whole.

The only bytes the gateway ever adds: its own headers (request id, rate limits, no buffering
for streams), an ``error`` frame when the upstream breaks a stream off between two frames, and
an OpenAI error body in place of an upstream error answer that has none.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
from litestar.types import Send

from ..errors import GatewayError, error_body, render
from ..exchange import Exchange
from ..headers import downstream_headers
from ..ledger import Ledger, progress_of
from ..outcome import outcome_from_response
from ..upstream import Response, UpstreamError, read_all
from .decoding import decoder_for
from .sse import StreamTap


class _ErrorFrame(msgspec.Struct, omit_defaults=True):
    type: str
    code: str
    message: str
    param: str | None = None
    sequence_number: int | None = None


class _UpstreamErrorEnvelope(msgspec.Struct):
    error: dict[str, Any]


_frame_encoder = msgspec.json.Encoder()
_envelope_decoder = msgspec.json.Decoder(_UpstreamErrorEnvelope)


async def relay_stream(
    ex: Exchange,
    send: Send,
    response: Response,
    ledger: Ledger | None,
    max_line: int,
) -> bool:
    """Send the upstream's SSE chunks as they come; False when the upstream broke off. The
    `ledger` saves the stream's progress while it runs."""
    headers = downstream_headers(response.raw_headers, ex.request_id.encode())
    names = {name for name, _ in headers}
    if b"cache-control" not in names:
        headers.append((b"cache-control", b"no-cache"))
    headers.append((b"x-accel-buffering", b"no"))
    if ex.ratelimit_headers:
        headers.extend(ex.ratelimit_headers)
    ex.status = response.status
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    ex.response_started = True
    tap = StreamTap(max_line)
    following = None
    if ledger is not None:
        following = ledger.follow(
            lambda record_id: progress_of(ex, tap.frames, tap.first_token_at, record_id)
        )
    try:
        async for chunk in response.iter_chunks():
            if ex.first_byte_at is None:
                ex.first_byte_at = time.perf_counter()
            tap.feed(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except UpstreamError as exc:
        timed_out = isinstance(exc, TimeoutError)
        ex.stream_error = "upstream_timeout" if timed_out else "upstream_disconnected"
        if tap.at_frame_boundary:  # mid-frame, an added frame would be glued to a broken one
            frame = _ErrorFrame(
                type="error",
                code=ex.stream_error,
                message="The upstream provider stopped "
                + ("answering" if timed_out else "the stream")
                + " before the response was complete.",
                sequence_number=tap.next_sequence_number(),
            )
            data = b"event: error\ndata: " + _frame_encoder.encode(frame) + b"\n\n"
            await send({"type": "http.response.body", "body": data, "more_body": True})
        # Returning without the final chunk makes the server close the connection: the
        # client's HTTP library reports an incomplete body instead of a clean end.
        return False
    finally:  # whatever the end (disconnect included), keep what the stream told so far
        if following is not None:
            assert ledger is not None
            saved_as = ledger.unfollow(following)
            if saved_as:  # this record may race the one saved: they share the id
                ex.record_id, ex.checkpointed = saved_as, True
        tap.close()
        ex.first_token_at = tap.first_token_at
        ex.terminal_event = tap.terminal_event
        ex.outcome = tap.outcome
        ex.output_estimate = tap.frames
    ex.response_complete = True
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    return True


async def relay_body(
    ex: Exchange, send: Send, response: Response, provider: str, limit: int
) -> None:
    """Send a non-streamed answer whole, its usage read (from a copy inflated under `limit`
    bytes when it is compressed)."""
    body = await read_all(response, provider)
    headers = downstream_headers(response.raw_headers, ex.request_id.encode())
    status = response.status
    if status >= 400 and not _is_error_envelope(_decoded(body, response, limit)):
        kind = "server_error" if status >= 500 else "invalid_request_error"
        body = error_body(
            f"The upstream provider '{provider}' answered HTTP {status} without an error body.",
            kind,
            None,
            "upstream_error",
        )
        headers = [(n, v) for n, v in headers if n not in (b"content-type", b"content-encoding")]
        headers.append((b"content-type", b"application/json"))
    elif status == 200:
        ex.outcome = outcome_from_response(_decoded(body, response, limit))
        ex.output_estimate = len(body) // 4
    if ex.ratelimit_headers:
        headers.extend(ex.ratelimit_headers)
    headers.append((b"content-length", str(len(body)).encode()))
    ex.status = status
    ex.response_started = True
    await send({"type": "http.response.start", "status": status, "headers": headers})
    ex.response_complete = True
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _decoded(body: bytes, response: Response, limit: int) -> bytes:
    """The body as JSON text, for reading usage only (the client gets the original bytes);
    empty when it cannot be read, or would inflate to more than `limit` bytes."""
    try:
        decoder = decoder_for(response.header(b"content-encoding"), limit)
        if decoder is None:
            return body
        decoder.feed(body)
        return decoder.finish()
    except GatewayError:  # an encoding not decoded here, corrupt, or larger than `limit`
        return b""


def _is_error_envelope(text: bytes) -> bool:
    try:
        return isinstance(_envelope_decoder.decode(text).error, dict)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return False


async def send_error(
    send: Send,
    error: GatewayError,
    request_id: str,
    ratelimit_headers: list[tuple[bytes, bytes]] | None,
) -> None:
    """Answer with `error` (rendered by `errors.render`), and the caller's rate-limit headers
    when it was admitted."""
    body, fields = render(error, request_id)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers.extend((k.encode("latin-1"), v.encode("latin-1")) for k, v in fields)
    if ratelimit_headers:
        headers.extend(ratelimit_headers)
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
