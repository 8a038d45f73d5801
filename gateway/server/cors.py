"""CORS for browser clients of the API (`server.cors_origins`): an ASGI wrapper of the app.

Installed only when origins are configured, so a gateway without them pays nothing. It acts
only on requests under ``/v1/`` whose ``Origin`` is listed (or when ``*`` is): a preflight
(``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) is answered here, before
routing and authentication, and every other answer gets ``Access-Control-Allow-Origin`` (the
request's origin, echoed) and ``Vary: Origin``. Any other request passes through untouched:
an origin not listed sees no CORS header at all, and the browser keeps the answer from it.

Callers authenticate with an ``Authorization`` (or ``api-key``) header that the page sets
itself, not with cookies or other ambient credentials, so no
``Access-Control-Allow-Credentials`` is sent: the spec's rule against ``*`` with credentials
never applies, and a page can never make a browser spend a user's cookies here.
"""

from __future__ import annotations

from collections.abc import Iterable

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from ..asgi import header as _header

ALLOWED_REQUEST_HEADERS = frozenset(
    {
        "accept",
        "authorization",
        "api-key",  # Azure-style clients
        "x-api-key",  # Anthropic-style clients
        "content-type",
        "idempotency-key",
        "openai-beta",
        "openai-organization",
        "openai-project",
        "user-agent",
        "x-request-id",
    }
)
"""Request headers a page may send (what the OpenAI SDKs send), and any ``x-stainless-*``."""
_PLATFORM = "x-stainless-"  # the SDKs' platform headers: lang, os, arch, retry-count...

EXPOSED_HEADERS = (
    "x-request-id",
    "x-upstream-request-id",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
    "retry-after",
    "retry-after-ms",
    "x-should-retry",
    "openai-processing-ms",
    "openai-version",
)
"""Response headers a page may read, beyond the few every browser shows (content-type...)."""

ALLOWED_METHODS = b"GET, POST"
MAX_AGE_SECONDS = 7200
"""How long a browser may reuse a preflight's answer (Chromium's own ceiling: 2 hours)."""

_PREFIX = "/v1/"


class Cors:
    """Wraps an ASGI app with CORS for `origins` (``*``: any origin)."""

    __slots__ = ("_any", "_app", "_expose", "_origins")

    def __init__(self, app: ASGIApp, origins: Iterable[str]) -> None:
        listed = {origin.lower() for origin in origins}
        self._app = app
        self._any = "*" in listed
        self._origins = frozenset(o.encode() for o in listed if o != "*")
        self._expose = ", ".join(EXPOSED_HEADERS).encode()

    def allowed(self, scope: Scope) -> bytes | None:
        """The origin of an HTTP request when CORS applies to it (an API path, an origin
        listed)."""
        if not scope["path"].startswith(_PREFIX):
            return None
        origin = _header(scope, b"origin")
        if origin is None or not (self._any or origin.lower() in self._origins):
            return None
        return origin

    def is_preflight(self, scope: Scope) -> bool:
        """A preflight this wrapper answers itself (the app never sees it)."""
        return (
            scope["type"] == ScopeType.HTTP
            and scope["method"] == "OPTIONS"
            and self.allowed(scope) is not None
            and _header(scope, b"access-control-request-method") is not None
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (origin := self.allowed(scope)) is None or scope["type"] != ScopeType.HTTP:
            await self._app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS" and _header(scope, b"access-control-request-method"):
            await self._preflight(scope, origin, send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                _add_vary(headers)
                headers.append((b"access-control-allow-origin", origin))
                headers.append((b"access-control-expose-headers", self._expose))
                message = {**message, "headers": headers}
            await send(message)

        await self._app(scope, receive, send_with_cors)

    async def _preflight(self, scope: Scope, origin: bytes, send: Send) -> None:
        requested = _header(scope, b"access-control-request-headers") or b""
        names = [n.strip().lower() for n in requested.decode("latin-1").split(",")]
        allowed = [n for n in names if n in ALLOWED_REQUEST_HEADERS or n.startswith(_PLATFORM)]
        headers = [
            (b"access-control-allow-origin", origin),
            (b"access-control-allow-methods", ALLOWED_METHODS),
            (b"access-control-max-age", str(MAX_AGE_SECONDS).encode()),
            (b"vary", b"Origin"),
            (b"content-length", b"0"),
        ]
        if allowed:  # a header not listed is left out: the browser then refuses the request
            headers.append((b"access-control-allow-headers", ", ".join(allowed).encode()))
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _add_vary(headers: list[tuple[bytes, bytes]]) -> None:
    """``Origin`` added to the answer's ``Vary`` (an upstream's own ``Vary`` is kept)."""
    for index, (name, value) in enumerate(headers):
        if name.lower() == b"vary":
            if b"origin" not in value.lower() and value.strip() != b"*":
                headers[index] = (name, value + b", Origin")
            return
    headers.append((b"vary", b"Origin"))
