"""Reading a request body from ASGI: media type, size limit (with or without Content-Length),
content encoding (decoded as it arrives, `decoding.py`)."""

from __future__ import annotations

from litestar.types import Receive, Scope

from ..asgi import header
from ..errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType
from .decoding import decoder_for


class ClientGone(Exception):
    """The client disconnected before its request body was complete."""


def check_json_media_type(scope: Scope) -> None:
    """415 unless the request declares `application/json` (parameters such as charset allowed)."""
    value = header(scope, b"content-type")
    media = value.split(b";", 1)[0].strip().lower() if value is not None else b""
    if media != b"application/json":
        shown = value.decode("latin-1")[:100] if value is not None else "none"
        raise UnsupportedMediaType(
            f"Unsupported Content-Type '{shown}': send the body as application/json.",
        )


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole body, decoded if it is compressed, or 413 as soon as it is known to exceed
    `limit` bytes (as sent, or decoded)."""
    decoder = decoder_for(header(scope, b"content-encoding"), limit)
    declared = header(scope, b"content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise InvalidRequest("Invalid Content-Length header.") from None
        if size > limit:
            raise _too_large(limit)
    chunks: list[bytes] = []
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk: bytes = message.get("body", b"")  # type: ignore[assignment]  # http.request carries bytes
        if chunk:
            total += len(chunk)
            if total > limit:
                raise _too_large(limit)
            if decoder is None:
                chunks.append(chunk)
            else:
                decoder.feed(chunk)
        if not message.get("more_body", False):
            break
    if decoder is not None:
        return decoder.finish()
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The request body is larger than the {limit} bytes this gateway accepts."
    )
