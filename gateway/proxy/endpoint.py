"""POST /v1/responses: authenticate → validate → limit → route → forward → account.

Written as a plain ASGI handler so the hot path owns its bytes: the body is read once with a
size limit, only the fields to check are decoded, and the upstream's chunks are sent to the
client the moment they arrive, unchanged. A watcher on the client connection cancels the
upstream request as soon as the client goes away.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
from litestar.types import Receive, Scope, Send

from ..errors import (
    BadGateway,
    GatewayError,
    MethodNotAllowed,
    PermissionDenied,
    RateLimited,
    error_body,
)
from ..exchange import Exchange
from ..headers import downstream_headers, upstream_headers
from ..identity import Authenticator, Identity
from ..ledger import Ledger, encode, progress_of, record_of
from ..metrics import Metrics
from ..outcome import estimate_input_tokens, outcome_from_response
from ..quotas import Admission, Limiter, estimate_tokens
from ..request_ids import RequestIds
from ..upstream import Response, UpstreamError, Upstreams, read_all
from .body import ClientGone, check_json_media_type, read_body
from .decoding import decoder_for
from .routing import Route, Router
from .sse import StreamTap
from .validation import parse_request

_SSE = b"text/event-stream"


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


class ResponsesEndpoint:
    """The ASGI handler for POST /v1/responses."""

    def __init__(
        self,
        router: Router,
        upstreams: Upstreams,
        ids: RequestIds,
        max_body_bytes: int,
        log: Any,
        *,
        auth: Authenticator | None = None,
        limiter: Limiter | None = None,
        ledger: Ledger | None = None,
        metrics: Metrics | None = None,
        default_output_tokens: int = 4096,
    ) -> None:
        self._router = router
        self._upstreams = upstreams
        self._ids = ids
        self._max_body = max_body_bytes
        self._log = log
        self._auth = auth
        self._limiter = limiter
        self._ledger = ledger
        self._metrics = metrics
        self._default_output = default_output_tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ex = Exchange(self._ids.for_scope(scope), time.perf_counter(), time.time())
        ex.method = scope["method"]  # type: ignore[typeddict-item]  # routed here for HTTP only
        ex.path = scope["path"]
        try:
            await self._handle(ex, scope, receive, send)
        except GatewayError as exc:
            ex.error_code, ex.error_param = exc.code, exc.param
            if isinstance(exc, RateLimited):
                ex.rate_limit = (exc.limit, exc.scope)
            if not ex.response_started:
                await _send_error(send, ex, exc)
        except ClientGone:
            ex.client_disconnected = True
        except asyncio.CancelledError:  # shutdown: the grace for requests in flight ran out
            ex.interrupted = True
            raise
        finally:
            ex.ended = time.perf_counter()
            finish(ex, self._log, self._ledger if ex.caller is not None else None)
            if self._metrics is not None:
                self._metrics.observe(ex, ex.ended)

    async def _handle(self, ex: Exchange, scope: Scope, receive: Receive, send: Send) -> None:
        if ex.method != "POST":
            raise MethodNotAllowed(
                f"Method {ex.method} is not allowed on {ex.path}; use POST.",
                headers={"allow": "POST"},
            )
        identity, degraded = None, False
        if self._auth is not None:
            identity, degraded = await self._auth.authenticate(scope)
            ex.caller, ex.key_id, ex.team = identity.user, identity.key_id, identity.team
        check_json_media_type(scope)
        body = await read_body(scope, receive, self._max_body)
        ex.body_size = len(body)
        request = parse_request(body)
        ex.model, ex.stream, ex.user = request.model, bool(request.stream), request.user
        ex.metadata = request.metadata
        route = self._router.resolve(request.model)
        ex.provider, ex.upstream_model = route.provider, route.upstream_model
        admission = None
        if identity is not None:
            _check_model_allowed(identity, request.model)
            if self._limiter is not None and degraded:
                self._limiter.apply_policy(identity)  # Redis just failed this request
            elif self._limiter is not None:
                estimate = estimate_tokens(body, request.max_output_tokens, self._default_output)
                admission = await self._limiter.admit(identity, request.model, estimate)
        if admission is None:
            await self._while_connected(ex, scope, receive, send, route, body)
            return
        ex.ratelimit_headers = admission.headers
        try:
            await self._while_connected(ex, scope, receive, send, route, body)
        finally:
            assert self._limiter is not None
            self._limiter.settle(admission, _charge(ex, admission, len(body)))

    async def _while_connected(
        self, ex: Exchange, scope: Scope, receive: Receive, send: Send, route: Route, body: bytes
    ) -> None:
        """Forward, but stop (closing the upstream request) as soon as the client leaves."""
        task = asyncio.current_task()
        if task is None:  # ASGI servers always run requests in tasks
            raise RuntimeError("the request is not running in an asyncio task")
        watch = _DisconnectWatch(receive, task, ex)
        try:
            await self._forward(ex, scope, send, route, body)
        except asyncio.CancelledError:
            if not ex.client_disconnected:
                raise
            task.uncancel()
        finally:
            watch.stop()

    async def _forward(
        self, ex: Exchange, scope: Scope, send: Send, route: Route, body: bytes
    ) -> None:
        headers = upstream_headers(
            scope["headers"], route.forwarded, route.fixed_headers, ex.request_id, ex.caller
        )
        response = await self._upstreams.post(
            route.provider, route.path, route.upstream_body(body), headers
        )
        finished = False
        try:
            ex.upstream_status = response.status
            if response.status in (401, 403):
                raise BadGateway(
                    f"The upstream provider '{route.provider}' rejected the gateway's own "
                    f"credentials (HTTP {response.status}); your API key is fine. "
                    "An operator must fix the provider key.",
                    code="upstream_auth_failed",
                )
            if 300 <= response.status < 400:
                raise BadGateway(
                    f"The upstream provider '{route.provider}' answered with a redirect "
                    f"(HTTP {response.status}); check its base_url.",
                )
            content_type = response.header(b"content-type") or b""
            limits = self._upstreams.settings(route.provider)
            if response.status == 200 and content_type.startswith(_SSE):
                finished = await self._stream(ex, send, response, limits.max_event_bytes)
            else:
                ex.first_byte_at = time.perf_counter()  # headers and body come together
                await _relay_body(ex, send, response, route.provider, limits.max_response_bytes)
                finished = True
        finally:
            if finished:
                response.release()
            else:
                response.close()  # the upstream sees the connection close

    async def _stream(self, ex: Exchange, send: Send, response: Response, max_line: int) -> bool:
        """Relay a stream, counted in flight, its progress saved while it runs."""
        ledger = self._ledger if ex.caller is not None else None
        if self._metrics is None:
            return await _relay_stream(ex, send, response, ledger, max_line)
        in_flight = self._metrics.streams(ex.model)
        in_flight.inc()
        try:
            return await _relay_stream(ex, send, response, ledger, max_line)
        finally:
            in_flight.dec()


def _check_model_allowed(identity: Identity, model: str) -> None:
    if identity.models is not None and model not in identity.models:
        raise PermissionDenied(
            f"Your API key is not allowed to use the model `{model}`.",
            param="model",
            code="model_not_allowed",
        )


def _charge(ex: Exchange, admission: Admission, body_size: int) -> int:
    """The tokens to charge for a request, from what is known of its end."""
    usage = ex.outcome.usage if ex.outcome is not None else None
    if usage is not None:
        return usage.total_tokens  # the provider's own count; may exceed the reservation
    if not ex.partly_delivered:
        return 0  # nothing reached the client, or an error: the reservation is refunded
    # Broken off (client gone, upstream cut): at least what was streamed, at most the
    # reservation.
    return min(admission.reserved, estimate_input_tokens(body_size) + ex.output_estimate)


class _DisconnectWatch:
    """Cancels a request's task when its client leaves.

    Only requests still running after `WATCH_AFTER` seconds are watched: most non-streamed
    answers from a fast upstream finish sooner, and a watcher task for each of them would cost
    more than the rest of the request path. A departure is noticed within that delay.
    """

    WATCH_AFTER = 0.05

    __slots__ = ("_ex", "_receive", "_task", "_timer", "_watcher")

    def __init__(self, receive: Receive, task: asyncio.Task[Any], ex: Exchange) -> None:
        self._receive, self._task, self._ex = receive, task, ex
        self._watcher: asyncio.Task[None] | None = None
        self._timer = task.get_loop().call_later(self.WATCH_AFTER, self._start)

    def _start(self) -> None:
        self._watcher = self._task.get_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        # uvicorn also reports a disconnect once the response is complete: no departure.
        if not self._ex.response_complete:
            self._ex.client_disconnected = True
            self._task.cancel()

    def stop(self) -> None:
        """The request is over: watch no more."""
        self._timer.cancel()
        if self._watcher is not None:
            self._watcher.cancel()


async def _relay_stream(
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
        _record(ex, tap)
    ex.response_complete = True
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    return True


def finish(ex: Exchange, log: Any, ledger: Ledger | None) -> None:
    """Log the request's canonical line and queue its usage record (a caller's request, when
    the ledger is on): one JSON object, encoded once for both (see `record.py`)."""
    try:
        if ledger is not None and not ex.record_id:
            ex.record_id = ledger.new_id()
        record = record_of(ex)
        line = encode(record)
    except Exception:  # a bug: the answer is sent; log what is safe, count the loss, never raise
        log.exception("request", request_id=ex.request_id, status=ex.status, error="record_failed")
        if ledger is not None:
            ledger.lost(ex.request_id, ex.caller)
        return
    log.info("request", _json=line)
    if ledger is not None:
        ledger.queue(record, line)


def _record(ex: Exchange, tap: StreamTap) -> None:
    ex.first_token_at = tap.first_token_at
    ex.terminal_event = tap.terminal_event
    ex.outcome = tap.outcome
    ex.output_estimate = tap.frames


async def _relay_body(
    ex: Exchange, send: Send, response: Response, provider: str, limit: int
) -> None:
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


async def _send_error(send: Send, ex: Exchange, exc: GatewayError) -> None:
    body = exc.body()
    ex.status = exc.status
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", ex.request_id.encode()),
    ]
    headers.extend((k.encode("latin-1"), v.encode("latin-1")) for k, v in exc.headers.items())
    if ex.ratelimit_headers:
        headers.extend(ex.ratelimit_headers)
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
