"""POST /v1/responses, top to bottom: authenticate → validate → route → admit → forward → account.

`ResponsesEndpoint._handle` makes one call per step, in the order they run:

1. **authenticate** the caller: an API key or an SSO token (401; 400 for a credential in the
   URL or two different ones). Only POST gets this far (405).
2. **validate** the request: JSON media type (415), the body read once under its size cap and
   decoded if compressed (413, 400), then checked against the spec, decoding only the fields
   the gateway reads (400 naming the `param`).
3. **route** its model to a provider (404 `model_not_found`); the key's own list of models is
   checked here (403 `model_not_allowed`).
4. **admit** it against the caller's quotas, in one Redis script (429 with `Retry-After`), or
   under the Redis failure policy when Redis cannot answer (503, or no quota).
5. **forward** it upstream with only the allowlisted headers, and relay the answer byte for
   byte as it arrives (`relay`); the upstream request is closed when the client leaves
   (`disconnect`).
6. **account** for it: the quota settled with the real usage, then the canonical log line and
   the usage record (`account`), whatever the end.

A plain ASGI handler, so that the hot path owns its bytes: nothing between the socket and the
upstream parses or re-encodes more than the fields it checks.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from litestar.types import Receive, Scope, Send

from ..errors import BadGateway, GatewayError, MethodNotAllowed, PermissionDenied, RateLimited
from ..exchange import Exchange
from ..headers import upstream_headers
from ..identity import Authenticator, Identity
from ..ledger import Ledger
from ..metrics import Metrics
from ..quotas import Admission, Limiter, estimate_tokens
from ..request_ids import RequestIds
from ..upstream import Response, Upstreams
from .account import charge, finish
from .body import ClientGone, check_json_media_type, read_body
from .disconnect import while_connected
from .relay import relay_body, relay_stream, send_error
from .routing import Route, Router
from .validation import ResponsesRequest, parse_request

_SSE = b"text/event-stream"


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
                ex.status = exc.status
                await send_error(send, exc, ex.request_id, ex.ratelimit_headers)
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
        """The steps, in order; each raises the `GatewayError` its client gets."""
        identity, degraded = await self._authenticate(ex, scope)
        body, request = await self._validate(ex, scope, receive)
        route = self._route(ex, identity, request.model)
        admission = await self._admit(ex, identity, degraded, request, body)
        try:
            await while_connected(ex, receive, self._forward(ex, scope, send, route, body))
        finally:
            if admission is not None:
                assert self._limiter is not None
                self._limiter.settle(admission, charge(ex, admission, len(body)))

    async def _authenticate(self, ex: Exchange, scope: Scope) -> tuple[Identity | None, bool]:
        """The caller (None without auth), and whether Redis just failed to answer for it."""
        if ex.method != "POST":
            raise MethodNotAllowed(
                f"Method {ex.method} is not allowed on {ex.path}; use POST.",
                headers={"allow": "POST"},
            )
        if self._auth is None:
            return None, False
        identity, degraded = await self._auth.authenticate(scope)
        ex.caller, ex.key_id, ex.team = identity.user, identity.key_id, identity.team
        return identity, degraded

    async def _validate(
        self, ex: Exchange, scope: Scope, receive: Receive
    ) -> tuple[bytes, ResponsesRequest]:
        """The body as received (decoded if it was compressed) and its checked fields."""
        check_json_media_type(scope)
        body = await read_body(scope, receive, self._max_body)
        ex.body_size = len(body)
        request = parse_request(body)
        ex.model, ex.stream, ex.user = request.model, bool(request.stream), request.user
        ex.metadata = request.metadata
        return body, request

    def _route(self, ex: Exchange, identity: Identity | None, model: str) -> Route:
        """Where the model is served, if the caller may use it."""
        route = self._router.resolve(model)
        ex.provider, ex.upstream_model = route.provider, route.upstream_model
        if identity is not None and identity.models is not None and model not in identity.models:
            raise PermissionDenied(
                f"Your API key is not allowed to use the model `{model}`.",
                param="model",
                code="model_not_allowed",
            )
        return route

    async def _admit(
        self,
        ex: Exchange,
        identity: Identity | None,
        degraded: bool,
        request: ResponsesRequest,
        body: bytes,
    ) -> Admission | None:
        """The request's hold on its quotas, to settle at its end; None without one."""
        if identity is None or self._limiter is None:
            return None
        if degraded:  # Redis just failed this request: do not wait for a second timeout
            self._limiter.apply_policy(identity)
            return None
        estimate = estimate_tokens(body, request.max_output_tokens, self._default_output)
        admission = await self._limiter.admit(identity, request.model, estimate)
        if admission is not None:
            ex.ratelimit_headers = admission.headers
        return admission

    async def _forward(
        self, ex: Exchange, scope: Scope, send: Send, route: Route, body: bytes
    ) -> None:
        """Send the request upstream and relay its answer; the connection is reused only
        after a complete answer."""
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
                await relay_body(ex, send, response, route.provider, limits.max_response_bytes)
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
            return await relay_stream(ex, send, response, ledger, max_line)
        in_flight = self._metrics.streams(ex.model)
        in_flight.inc()
        try:
            return await relay_stream(ex, send, response, ledger, max_line)
        finally:
            in_flight.dec()
