"""Refusals at the front door: a worker process's connection cap, and the answers it gives.

`FrontDoor` is what the connections of one worker process share (made when the worker loads its
`ServerConfig`): the limits, whether the connection cap is reached, and the answer, with its
request id, to a request the protocol (`front_door.py`) refuses before the app sees it.
"""

from __future__ import annotations

import structlog
from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from ..errors import GatewayError, render
from ..request_ids import RequestIds
from ..settings import ServerSettings


class FrontDoor:
    """The limits, and what the connections of one worker process share: whether the
    connection cap is reached, and the ids of the answers given here."""

    def __init__(self, limits: ServerSettings) -> None:
        self.limits = limits
        self.log = structlog.get_logger("gateway")
        self.ids = RequestIds()
        self.at_cap = False
        self._refused = 0
        # Left once a tenth of the cap is free again: a load hovering at the cap logs once.
        self._clear_at = limits.max_connections - max(1, limits.max_connections // 10)

    def refuse(self, open_connections: int) -> bool:
        """Whether a new connection, which makes `open_connections`, is one too many."""
        if open_connections <= self.limits.max_connections:
            return False
        if not self.at_cap:
            self.at_cap = True
            self.log.warning(
                "connection_limit_reached", max_connections=self.limits.max_connections
            )
        self._refused += 1
        return True

    def closed(self, open_connections: int) -> None:
        """A connection closed while the cap was reached."""
        if open_connections <= self._clear_at:
            self.at_cap = False
            self.log.info(
                "connection_limit_cleared",
                max_connections=self.limits.max_connections,
                open_connections=open_connections,
                refused=self._refused,
            )
            self._refused = 0

    def rejected(
        self, error: GatewayError, reason: str, default_headers: list[tuple[bytes, bytes]]
    ) -> bytes:
        """The answer to a request refused here (after uvicorn's `default_headers`), logged."""
        request_id = self.ids.new()
        self.log.info("request_rejected", reason=reason, status=error.status, request_id=request_id)
        body, fields = render(error, request_id)
        lines = [STATUS_LINE[error.status]]
        for name, value in default_headers:
            lines += (name, b": ", value, b"\r\n")
        lines += (b"content-type: application/json\r\ncontent-length: ", str(len(body)).encode())
        lines.append(b"\r\n")
        for field, text in fields:
            lines += (field.encode("latin-1"), b": ", text.encode("latin-1"), b"\r\n")
        lines += (b"connection: close\r\n\r\n", body)
        return b"".join(lines)
