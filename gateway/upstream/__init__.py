"""Calling providers: the lean HTTP/1.1 client and one connection pool per provider, errors
mapped once."""

from __future__ import annotations

from .errors import UpstreamError
from .pools import Upstreams, read_all
from .response import Response

__all__ = ["Response", "UpstreamError", "Upstreams", "read_all"]
