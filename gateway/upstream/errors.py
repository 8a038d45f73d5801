"""The HTTP/1.1 client's errors: `UpstreamError`, and a subclass for each way a call fails.

They are mapped to client-facing ones once, in `pools.py`.
"""

from __future__ import annotations


class UpstreamError(Exception):
    """The upstream could not be reached or broke the exchange."""


class ConnectError(UpstreamError):
    """No connection could be opened."""


class UpstreamTimeout(UpstreamError, TimeoutError):
    """The upstream was silent for longer than allowed."""


class Disconnected(UpstreamError):
    """The upstream closed the connection before its answer was complete."""


class ProtocolError(UpstreamError):
    """The upstream's bytes are not an HTTP/1.1 answer the gateway can relay."""


class TooLarge(UpstreamError):
    """The upstream's body is larger than the caller accepts."""
