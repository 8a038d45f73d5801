"""Every error the mock answers, rendered in one place in the OpenAI error shape.

    {"error": {"message": str, "type": str, "param": str | null, "code": str | null}}

Errors are plain JSON replies sent before any stream starts, even when the request asked for
`stream: true`, as OpenAI does.
"""

from __future__ import annotations

import msgspec
from aiohttp import web


class MockError(Exception):
    """A request the mock refuses, with the status and OpenAI error fields to answer."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        error_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.error_type = error_type or _default_type(status)

    def response(self, request_id: str) -> web.Response:
        """The JSON reply; a 429 carries `Retry-After: 1` so clients may retry after a second."""
        body = {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }
        headers = {"x-request-id": request_id}
        if self.status == 429:
            headers["retry-after"] = "1"
        return web.Response(
            status=self.status,
            body=msgspec.json.encode(body),
            content_type="application/json",
            headers=headers,
        )


def _default_type(status: int) -> str:
    # The `type` values OpenAI uses: rate limits are "requests", 5xx are "server_error".
    if status == 429:
        return "requests"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def injected(status: int) -> MockError:
    """The error of an `x-mock-fault: status=CODE` fault, with the code OpenAI would send."""
    codes = {401: "invalid_api_key", 403: "permission_denied", 429: "rate_limit_exceeded"}
    return MockError(
        status,
        f"Injected fault: HTTP {status} (x-mock-fault).",
        code=codes.get(status, "server_error" if status >= 500 else None),
    )


def invalid_type(param: str, expected: str, value: object) -> MockError:
    """400 for a parameter of the wrong JSON type, worded like OpenAI's message."""
    return MockError(
        400,
        f"Invalid type for '{param}': expected {expected}, but got {_json_type(value)} instead.",
        param=param,
        code="invalid_type",
    )


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def missing(param: str) -> MockError:
    """400 for a required parameter that is absent."""
    return MockError(
        400,
        f"Missing required parameter: '{param}'.",
        param=param,
        code="missing_required_parameter",
    )
