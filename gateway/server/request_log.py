"""The canonical line of every request the hot path does not serve, and its request id.

POST /v1/responses writes its own line (`gateway/proxy/account.py`). Every other request (the
models, usage and admin routes, probes, unknown paths, wrong methods, CORS preflights) is logged
here, as the same record (`gateway/ledger/record.py`) with what is known of it: request id, status,
latency, method and path, the error's `code` and `param`, and the caller when one authenticated. Its
answer gets an `x-request-id` when it has none (the client's when it is a sane token, as on the hot
path).

Probes that succeed (`quiet_paths`: /healthz, /readyz, /metrics, asked every few seconds) are
logged at debug level, so they stay out of an info-level log; a failing probe is logged at info.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection
from typing import Any

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from ..exchange import Exchange
from ..ledger import encode, record_of
from ..request_ids import RequestIds

_ERROR = "gateway_error"
"""The key in the ASGI scope's `state` under which the app notes the error it answered."""
_MAX_PATH = 512
"""Longer paths (a client's mistake, or a probe for holes) are logged cut to this length."""


def note_error(scope: Scope, code: str | None, param: str | None) -> None:
    """Record the `code` and `param` of the error answered to the request in `scope`."""
    scope.setdefault("state", {})[_ERROR] = (code, param)


def request_id_of(scope: Scope) -> str | None:
    """The id `RequestLog` gave the request in `scope` (None outside of it)."""
    request_id: str | None = scope.get("state", {}).get("request_id")
    return request_id


class RequestLog:
    """Wraps the app: one canonical line per request that `logs_itself` says is not logged
    by its handler."""

    __slots__ = ("_app", "_ids", "_log", "_logs_itself", "_quiet")

    def __init__(
        self,
        app: ASGIApp,
        ids: RequestIds,
        log: Any,
        logs_itself: Callable[[Scope], bool],
        quiet_paths: Collection[str] = (),
    ) -> None:
        self._app, self._ids, self._log = app, ids, log
        self._logs_itself = logs_itself
        self._quiet = frozenset(quiet_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._logs_itself(scope) or scope["type"] != ScopeType.HTTP:  # the hot path first
            await self._app(scope, receive, send)
            return
        ex = Exchange(self._ids.for_scope(scope), time.perf_counter(), time.time())
        ex.method = scope["method"]
        ex.path = scope["path"][:_MAX_PATH]  # before routing, which may rewrite it
        scope.setdefault("state", {})["request_id"] = ex.request_id
        given = ex.request_id.encode()

        async def send_logged(message: Message) -> None:
            if message["type"] == "http.response.start":
                ex.status, ex.response_started = message["status"], True
                headers = list(message.get("headers", ()))
                if not any(name.lower() == b"x-request-id" for name, _ in headers):
                    headers.append((b"x-request-id", given))
                    message = {**message, "headers": headers}
            await send(message)

        try:
            await self._app(scope, receive, send_logged)
            ex.response_complete = ex.response_started
        except asyncio.CancelledError:  # shutdown: the grace for requests in flight ran out
            ex.interrupted = True
            raise
        except Exception:
            ex.status = ex.status or 500  # uvicorn answers 500 when nothing was sent
            raise
        finally:
            ex.ended = time.perf_counter()
            self._write(ex, scope)

    def _write(self, ex: Exchange, scope: Scope) -> None:
        state = scope.get("state", {})
        ex.error_code, ex.error_param = state.get(_ERROR, (None, None))
        identity = state.get("identity")
        if identity is not None:
            ex.caller, ex.key_id, ex.team = identity.user, identity.key_id, identity.team
        line = encode(record_of(ex))
        if ex.path in self._quiet and ex.status < 400:
            self._log.debug("request", _json=line)
        else:
            self._log.info("request", _json=line)
