"""Compressed request bodies (``Content-Encoding``: gzip, deflate, zstd), decoded as they arrive.

Decoded output is capped: a decoder never holds more than `limit` decoded bytes (plus, near
the cap, two of zstd's blocks, 256 KiB), so a small body that decodes to gigabytes (a "bomb")
is a 413 once past the cap, not an allocation. zstd's window, the history it keeps, is capped
too. What the gateway parses and forwards is the decoded body; the `content-encoding` header is
not forwarded (`gateway/headers.py`).
"""

from __future__ import annotations

import zlib
from typing import Protocol

import zstandard

from ..errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType

_ZSTD_MAX_WINDOW = 1 << 27
"""zstd's own default bound on a frame's window (128 MiB)."""
_ZSTD_MIN_WINDOW = 1 << 23
"""The window of zstd's levels up to 19 (8 MiB), which a streaming encoder declares whatever
the body's size."""
_BLOCK = 128 * 1024
"""The most one zstd block decodes to."""
_WRITE_SIZE = 16 * 1024
"""zstandard's output buffer per step (its default, 128 KiB, is slower to allocate per call)."""


class Decoder(Protocol):
    """Decodes one body, fed chunk by chunk."""

    def feed(self, chunk: bytes) -> None:
        """Decode `chunk`; 400 if it is corrupt, 413 once the decoded size passes the cap."""

    def finish(self) -> bytes:
        """The whole decoded body; 400 if it ended early."""


def decoder_for(encoding: bytes | None, limit: int) -> Decoder | None:
    """The decoder for a `Content-Encoding` header's value (None: the body is not encoded);
    415 for an encoding not decoded here."""
    if encoding is None:
        return None
    name = encoding.strip().lower()
    if name in (b"", b"identity"):
        return None
    if name in (b"gzip", b"x-gzip"):
        return _ZlibDecoder("gzip", 16 + zlib.MAX_WBITS, limit)
    if name == b"deflate":  # RFC 9110 §8.4.1.2: the zlib format
        return _ZlibDecoder("deflate", zlib.MAX_WBITS, limit)
    if name == b"zstd":
        return _ZstdDecoder(limit)
    shown = encoding.decode("latin-1")[:100]
    raise UnsupportedMediaType(
        f"Unsupported Content-Encoding '{shown}': send the body as gzip, deflate, zstd or "
        "uncompressed, one encoding at a time.",
    )


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The request body, decoded, is larger than the {limit} bytes this gateway accepts."
    )


def _corrupt(name: str) -> InvalidRequest:
    return InvalidRequest(
        f"The request body is not valid {name} data (Content-Encoding: {name}).",
        code="invalid_content_encoding",
    )


class _ZlibDecoder:
    """gzip (several members allowed, as gzip itself does) or deflate."""

    def __init__(self, name: str, wbits: int, limit: int) -> None:
        self._name, self._wbits, self._limit = name, wbits, limit
        self._zlib = zlib.decompressobj(wbits)
        self._parts: list[bytes] = []
        self._size = 0

    def feed(self, chunk: bytes) -> None:
        while chunk:
            room = self._limit - self._size
            try:
                # One byte more than there is room for: more output than that is a 413 anyway,
                # and less means the whole chunk was taken in.
                out = self._zlib.decompress(chunk, room + 1)
            except zlib.error:
                raise _corrupt(self._name) from None
            if len(out) > room:
                raise _too_large(self._limit)
            self._size += len(out)
            self._parts.append(out)
            chunk = b""
            if self._zlib.eof and self._zlib.unused_data:
                if self._name != "gzip":
                    raise _corrupt(self._name)  # bytes after the end
                chunk = self._zlib.unused_data  # the next gzip member
                self._zlib = zlib.decompressobj(self._wbits)

    def finish(self) -> bytes:
        if not self._zlib.eof:
            raise _corrupt(self._name)
        return b"".join(self._parts)


class _ZstdDecoder:
    """zstd, one frame or several. zstandard's `decompressobj` returns all that its input
    decodes to, so the input is fed in steps small enough for their output to fit: a block
    takes at least 4 bytes (header and content) and decodes to at most `_BLOCK`, and one block
    begun in an earlier step may end in this one, so `step` bytes decode to at most
    ``(step / 4 + 1) * _BLOCK``. Near the cap steps are 4 bytes, whose output may pass it by
    2 blocks before the 413."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        window = min(_ZSTD_MAX_WINDOW, max(_ZSTD_MIN_WINDOW, 1 << (limit - 1).bit_length()))
        self._zstd = zstandard.ZstdDecompressor(max_window_size=window)
        self._frame = self._zstd.decompressobj(write_size=_WRITE_SIZE)
        self._parts: list[bytes] = []
        self._size = 0
        self._frames = 0
        self._mid_frame = False

    def feed(self, chunk: bytes) -> None:
        data, position = memoryview(chunk), 0
        while position < len(data):
            step = max(4, 4 * ((self._limit - self._size) // _BLOCK - 1))
            piece = data[position : position + step]
            position += step
            try:
                out = self._frame.decompress(piece)
            except zstandard.ZstdError:
                raise _corrupt("zstd") from None
            self._size += len(out)
            if self._size > self._limit:
                raise _too_large(self._limit)
            self._parts.append(out)
            self._mid_frame = not self._frame.eof
            if self._frame.eof:  # a next frame starts in what this one left, if anything
                self._frames += 1
                rest = self._frame.unused_data
                self._frame = self._zstd.decompressobj(write_size=_WRITE_SIZE)
                if rest:
                    data, position = memoryview(rest + data[position:].tobytes()), 0

    def finish(self) -> bytes:
        if self._mid_frame or not self._frames:
            raise _corrupt("zstd")  # cut short, or empty
        return b"".join(self._parts)
