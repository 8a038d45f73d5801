"""The application factory: `create_app(settings) -> Litestar`."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from litestar import Litestar, Request, Response, asgi
from litestar.connection import ASGIConnection
from litestar.di import Provide
from litestar.exceptions import HTTPException, ValidationException
from litestar.types import Receive, Scope, Send
from litestar.utils import normalize_path

from .admin import AdminController, UsageAdminController
from .errors import GatewayError, InternalError, ServiceUnavailable, render
from .identity import admin_guard
from .routes import (
    CallerUsageController,
    ModelList,
    ModelsController,
    healthz,
    metrics,
    model_list,
    readyz,
)
from .runtime import OnReady, Runtime
from .server import Cors, RequestLog, note_error, request_id_of
from .settings import Settings
from .state import RedisUnavailable

RESPONSES_PATH = "/v1/responses"
T = TypeVar("T")
PROBES = ("/healthz", "/readyz", "/metrics")


def create_app(
    settings: Settings, on_ready: OnReady | None = None, metrics_dir: str | None = None
) -> Litestar:
    """Build a gateway serving `settings`; its lifespan opens and closes what it needs.

    `on_ready(runtime)` is awaited once everything is open, before the first request.
    `metrics_dir`: where the worker processes of one server share their metrics (several
    workers); None keeps them in this process.
    """
    runtime = Runtime(settings, on_ready, metrics_dir)
    models = model_list(settings)

    async def responses(scope: Scope, receive: Receive, send: Send) -> None:
        await runtime.responses(scope, receive, send)

    def provide_models() -> ModelList:
        return models

    def provide_runtime() -> Runtime:
        return runtime

    def opened(service: Callable[[], T | None]) -> Provide:
        """A dependency on one of the runtime's services: 503 until it is open."""

        def provide() -> T:
            value = service()
            if value is None:
                raise ServiceUnavailable("The gateway is starting up.")
            return value

        return Provide(provide, sync_to_thread=False)

    def respond(request: Request[Any, Any, Any], error: GatewayError) -> Response[bytes]:
        """An error as Litestar answers it (rendered as the hot path does); its code and
        `param` go to the request's log line."""
        note_error(request.scope, error.code, error.param)
        request_id = request_id_of(request.scope) or runtime.ids.for_scope(request.scope)
        body, headers = render(error, request_id)
        return Response(
            body, status_code=error.status, media_type="application/json", headers=dict(headers)
        )

    def gateway_error(request: Request[Any, Any, Any], exc: GatewayError) -> Response[bytes]:
        return respond(request, exc)

    def redis_unavailable(
        request: Request[Any, Any, Any], _exc: RedisUnavailable
    ) -> Response[bytes]:
        error = ServiceUnavailable("Redis is unreachable; retry shortly.")
        error.headers["retry-after"] = "1"
        return respond(request, error)

    def http_exception(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
        """Litestar's own errors (unknown path, wrong method, a query parameter missing or of
        the wrong type) in the OpenAI shape."""
        return respond(request, _from_litestar(exc))

    def unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
        request.logger.exception("unhandled_error", path=request.url.path)
        return respond(request, InternalError("The gateway failed to handle this request."))

    async def caller_guard(connection: ASGIConnection[Any, Any, Any, Any], _: Any) -> None:
        """/v1/models and /v1/usage take the same credentials as /v1/responses."""
        if runtime.auth is not None:
            identity, _ = await runtime.auth.authenticate(connection.scope)
            connection.state.identity = identity
            connection.state.allowed_models = identity.models

    handlers: list[Any] = [
        asgi("/v1/responses", copy_scope=False)(responses),
        type(
            "Models",
            (ModelsController,),
            {  # `models` provided only where used (Litestar answers 500 to any parameter that
                # fails validation and shares a dependency's name: see admin/keys_api.py)
                "guards": [caller_guard],
                "dependencies": {"models": Provide(provide_models, sync_to_thread=False)},
            },
        ),
        healthz,
        readyz,
    ]
    if settings.metrics.enabled:
        handlers.append(metrics)
    if settings.auth.enabled:
        handlers.append(type("Usage", (CallerUsageController,), {"guards": [caller_guard]}))
    if settings.auth.enabled and settings.auth.admin_key:
        admin_only = {"guards": [admin_guard(settings.auth.admin_key)]}
        handlers.append(type("Admin", (AdminController,), admin_only))
        handlers.append(type("UsageAdmin", (UsageAdminController,), admin_only))
    app = Litestar(
        route_handlers=handlers,
        # Each handler takes what it needs, open (no handler checks for None): the names must
        # not be those of any query or body field (see `models` above).
        dependencies={
            "runtime": Provide(provide_runtime, sync_to_thread=False),  # the probes' subject
            "settings": Provide(lambda: settings, sync_to_thread=False),
            "log": Provide(lambda: runtime.log, sync_to_thread=False),
            "keystore": opened(lambda: runtime.keystore),
            "limiter": opened(lambda: runtime.limiter),
            "reports": opened(lambda: runtime.reports),
        },
        lifespan=[runtime.lifespan],
        exception_handlers={
            GatewayError: gateway_error,
            RedisUnavailable: redis_unavailable,
            HTTPException: http_exception,
            Exception: unexpected,
        },
        openapi_config=None,
        logging_config=None,
    )
    app.state.runtime = runtime
    # Around the whole app (routing included, so unknown paths too): CORS only when origins
    # are configured, and the canonical line of every request the hot path does not log.
    origins = settings.server.cors_origins
    cors = Cors(app.asgi_handler, origins) if origins else None

    def logs_itself(scope: Scope) -> bool:
        """The hot path serves this request (and writes its line): /v1/responses as Litestar
        routes it, except a CORS preflight, which `Cors` answers."""
        path = scope["path"]
        if path != RESPONSES_PATH and normalize_path(path) != RESPONSES_PATH:
            return False
        return cors is None or not cors.is_preflight(scope)

    app.asgi_handler = RequestLog(
        cors or app.asgi_handler, runtime.ids, runtime.log, logs_itself, PROBES
    )
    return app


class _LitestarError(GatewayError):
    """One of Litestar's own errors, with its status."""


def _from_litestar(exc: HTTPException) -> GatewayError:
    status = exc.status_code
    error = _LitestarError(
        str(exc.detail),
        code={404: "not_found", 405: "method_not_allowed"}.get(status),
        headers=dict(exc.headers or {}),
    )
    error.status = status
    error.type = "server_error" if status >= 500 else "invalid_request_error"
    if not isinstance(exc, ValidationException):
        return error
    missing = _MISSING.match(error.message)
    if missing:
        error.param, error.code = missing.group(1), "missing_required_parameter"
        error.message = f"Missing required parameter: '{error.param}'."
    elif isinstance(exc.extra, list) and exc.extra and isinstance(exc.extra[0], dict):
        first = exc.extra[0]  # {"message", "key", "source"}: a query or path parameter
        if first.get("key"):
            error.param, error.code = str(first["key"]), "invalid_value"
            error.message = f"Invalid '{error.param}': {first.get('message', 'invalid value')}."
    return error


_MISSING = re.compile(r"^Missing required \w+ parameter '([^']+)'")
"""Litestar's message for a required query parameter not given."""
