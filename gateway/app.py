"""The application factory: `create_app(settings) -> Litestar`."""

from __future__ import annotations

from typing import Any

from litestar import Litestar, Request, Response, asgi
from litestar.connection import ASGIConnection
from litestar.di import Provide
from litestar.exceptions import HTTPException
from litestar.types import Receive, Scope, Send

from .admin import AdminController, admin_guard
from .errors import GatewayError, InternalError, ServiceUnavailable, error_body
from .health import healthz, metrics, readyz
from .models_api import ModelList, ModelsController, model_list
from .redis_store import RedisUnavailable
from .runtime import OnReady, Runtime
from .settings import Settings
from .usage_api import CallerUsageController, UsageAdminController


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

    def request_id(request: Request[Any, Any, Any]) -> str:
        return runtime.ids.for_scope(request.scope)

    async def tag(response: Response[Any]) -> Response[Any]:
        """Every answer of the other routes carries an `x-request-id` too."""
        if "x-request-id" not in response.headers:
            response.headers["x-request-id"] = runtime.ids.new()
        return response

    def gateway_error(request: Request[Any, Any, Any], exc: GatewayError) -> Response[bytes]:
        return _render(exc.status, exc.body(), exc.headers, request_id(request))

    def redis_unavailable(
        request: Request[Any, Any, Any], _exc: RedisUnavailable
    ) -> Response[bytes]:
        error = ServiceUnavailable("Redis is unreachable; retry shortly.")
        return _render(error.status, error.body(), {"retry-after": "1"}, request_id(request))

    def http_exception(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
        """Litestar's own errors (unknown path, wrong method) in the OpenAI shape."""
        status = exc.status_code
        code = {404: "not_found", 405: "method_not_allowed"}.get(status)
        kind = "server_error" if status >= 500 else "invalid_request_error"
        body = error_body(str(exc.detail), kind, None, code)
        return _render(status, body, dict(exc.headers or {}), request_id(request))

    def unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
        request.logger.exception("unhandled_error", path=request.url.path)
        error = InternalError("The gateway failed to handle this request.")
        return _render(error.status, error.body(), {}, request_id(request))

    async def caller_guard(connection: ASGIConnection[Any, Any, Any, Any], _: Any) -> None:
        """/v1/models and /v1/usage take the same credentials as /v1/responses."""
        if runtime.auth is not None:
            identity, _ = await runtime.auth.authenticate(connection.scope)
            connection.state.identity = identity
            connection.state.allowed_models = identity.models

    handlers: list[Any] = [
        asgi("/v1/responses", copy_scope=False)(responses),
        type("Models", (ModelsController,), {"guards": [caller_guard]}),
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
        dependencies={
            "models": Provide(provide_models, sync_to_thread=False),
            "runtime": Provide(provide_runtime, sync_to_thread=False),
        },
        after_request=tag,
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
    return app


def _render(status: int, body: bytes, headers: dict[str, str], request_id: str) -> Response[bytes]:
    return Response(
        body,
        status_code=status,
        media_type="application/json",
        headers={**headers, "x-request-id": request_id},
    )
