"""Calling providers: the lean HTTP/1.1 client and one connection pool per provider, errors
mapped once."""

from __future__ import annotations

from .http1 import Response, UpstreamError
from .pools import Upstreams, read_all

__all__ = ["Response", "UpstreamError", "Upstreams", "read_all"]
