"""Every error a client can see, and the one place that renders it (`render`).

All of them render as OpenAI's error body ``{"error": {"message", "type", "param", "code"}}``
with the status the API uses for that case::

    GatewayError
    ├── InvalidRequest            400  invalid_request_error
    ├── AuthenticationFailed      401  invalid_request_error / invalid_api_key
    ├── PermissionDenied          403  invalid_request_error
    ├── NotFound                  404  invalid_request_error
    │   └── ModelNotFound         404  model_not_found
    ├── MethodNotAllowed          405
    ├── RequestTimeout            408  a request head or body too slow (gateway/server/)
    ├── PayloadTooLarge           413
    ├── UnsupportedMediaType      415  Content-Type, or a Content-Encoding not decoded here
    ├── RequestHeaderFieldsTooLarge 431  a request head too large or with too many lines
    ├── RateLimited               429  rate_limit_exceeded / insufficient_quota (Retry-After)
    ├── InternalError             500  server_error (never for anything a client sent)
    ├── BadGateway                502  upstream unreachable, refused, or rejected our key
    ├── ServiceUnavailable        503
    └── GatewayTimeout            504  upstream silent before its first byte
"""

from __future__ import annotations

import msgspec


class _ErrorBody(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class _ErrorEnvelope(msgspec.Struct):
    error: _ErrorBody


_encoder = msgspec.json.Encoder()


class GatewayError(Exception):
    """An error answered to the client in the OpenAI error shape."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def body(self) -> bytes:
        """The JSON body the client receives."""
        return error_body(self.message, self.type, self.param, self.code)


def render(error: GatewayError, request_id: str) -> tuple[bytes, list[tuple[str, str]]]:
    """An error as its client gets it, on every route and the hot path alike: the JSON body,
    and the headers that go with it (the request id, then the error's own: ``Retry-After``,
    ``Allow``...). The transport adds its content type and length."""
    return error.body(), [("x-request-id", request_id), *error.headers.items()]


def error_body(message: str, type_: str, param: str | None, code: str | None) -> bytes:
    """Encode an OpenAI error envelope."""
    return _encoder.encode(_ErrorEnvelope(_ErrorBody(message, type_, param, code)))


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class AuthenticationFailed(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(GatewayError):
    status = 403
    type = "invalid_request_error"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"


class ModelNotFound(NotFound):
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model `{model}` does not exist or you do not have access to it.", param="model"
        )


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class RequestTimeout(GatewayError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class UnsupportedMediaType(GatewayError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class RequestHeaderFieldsTooLarge(GatewayError):
    status = 431
    type = "invalid_request_error"
    code = "request_header_fields_too_large"


class RateLimited(GatewayError):
    """A quota is reached; `type_` says which kind (``requests``, ``tokens``,
    ``insufficient_quota``), `Retry-After` when to try again."""

    status = 429
    type = "requests"
    code = "rate_limit_exceeded"

    def __init__(
        self,
        message: str,
        *,
        type_: str = "requests",
        code: str | None = None,
        headers: dict[str, str] | None = None,
        limit: str = "",
        scope: str = "",
    ) -> None:
        super().__init__(message, code=code, headers=headers)
        self.type = type_
        self.limit = limit
        """The limit reached, named as in the configuration (``requests_per_minute``...)."""
        self.scope = scope
        """Whose limit: ``user``, ``key`` or ``model``."""


class InternalError(GatewayError):
    status = 500
    type = "server_error"
    code = "server_error"


class BadGateway(GatewayError):
    status = 502
    type = "server_error"
    code = "upstream_error"


class ServiceUnavailable(GatewayError):
    status = 503
    type = "server_error"
    code = "service_unavailable"


class GatewayTimeout(GatewayError):
    status = 504
    type = "server_error"
    code = "upstream_timeout"
