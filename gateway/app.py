"""The application factory: `create_app(settings) -> Litestar`."""

from __future__ import annotations

from typing import Any

from litestar import Litestar, Request, Response, asgi
from litestar.di import Provide
from litestar.exceptions import HTTPException
from litestar.types import Receive, Scope, Send

from .errors import GatewayError, InternalError, error_body
from .health import healthz, readyz
from .models_api import ModelList, ModelsController, model_list
from .runtime import Runtime
from .settings import Settings

_TYPES = {401: "invalid_request_error", 403: "invalid_request_error", 404: "invalid_request_error"}


def create_app(settings: Settings) -> Litestar:
    """Build a gateway serving `settings`; its lifespan opens and closes what it needs."""
    runtime = Runtime(settings)
    models = model_list(settings)

    async def responses(scope: Scope, receive: Receive, send: Send) -> None:
        await runtime.responses(scope, receive, send)

    def provide_models() -> ModelList:
        return models

    def provide_runtime() -> Runtime:
        return runtime

    app = Litestar(
        route_handlers=[
            asgi("/v1/responses", copy_scope=False)(responses),
            ModelsController,
            healthz,
            readyz,
        ],
        dependencies={
            "models": Provide(provide_models, sync_to_thread=False),
            "runtime": Provide(provide_runtime, sync_to_thread=False),
        },
        lifespan=[runtime.lifespan],
        exception_handlers={
            GatewayError: _gateway_error,
            HTTPException: _http_exception,
            Exception: _unexpected,
        },
        openapi_config=None,
        logging_config=None,
    )
    app.state.runtime = runtime
    return app


def _render(exc: GatewayError, request_id: str | None = None) -> Response[bytes]:
    headers = dict(exc.headers)
    if request_id:
        headers["x-request-id"] = request_id
    return Response(
        exc.body(), status_code=exc.status, media_type="application/json", headers=headers
    )


def _gateway_error(_: Request[Any, Any, Any], exc: GatewayError) -> Response[bytes]:
    return _render(exc)


def _http_exception(_: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    """Litestar's own errors (unknown path, wrong method) in the OpenAI shape."""
    status = exc.status_code
    code = {404: "not_found", 405: "method_not_allowed"}.get(status)
    body = error_body(str(exc.detail), _TYPES.get(status, "invalid_request_error"), None, code)
    headers = dict(exc.headers or {})
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    request.logger.exception("unhandled_error", path=request.url.path)
    return _render(InternalError("The gateway failed to handle this request."))
