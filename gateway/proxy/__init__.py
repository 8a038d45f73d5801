"""POST /v1/responses: the request path, read top to bottom in `endpoint`, and what it uses
only there (request body, validation, routing, the SSE tap, relaying)."""

from __future__ import annotations

from .endpoint import ResponsesEndpoint
from .routing import Router
from .sse import StreamTap

__all__ = ["ResponsesEndpoint", "Router", "StreamTap"]
