"""Between the socket and the routes: the front-door HTTP protocol (limits on what a client
may send), CORS, the request log of every route but the hot path, drain on SIGTERM."""

from __future__ import annotations

from .cors import Cors
from .drain import Draining
from .front_door import ServerConfig
from .request_log import RequestLog, note_error, request_id_of

__all__ = ["Cors", "Draining", "RequestLog", "ServerConfig", "note_error", "request_id_of"]
