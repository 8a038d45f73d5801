"""An incremental reader of a copy of an SSE stream: usage, terminal event, first token.

The bytes forwarded to the client never pass through here; this only watches them. It accepts
LF, CRLF and CR line endings, frames with or without `event:`, comments, `[DONE]`, and frames
split across any chunk boundary (a CRLF included). To stay cheap on the hot path it decodes JSON
only for frames that can matter: terminal events, and deltas until the first one is seen.

Its memory is bounded whatever the upstream sends: a line, or a frame's data, longer than
`max_line` bytes is skipped rather than held (the client still gets it; only this reader
does not read it, so the stream's usage is then estimated).
"""

from __future__ import annotations

import re
import time

from ..outcome import Outcome, outcome_from_event

TERMINAL_EVENTS = frozenset(
    {"response.completed", "response.incomplete", "response.failed", "error"}
)
_TERMINAL_HINTS = (
    b'"response.completed"',
    b'"response.incomplete"',
    b'"response.failed"',
    b'"error"',
)
_EOL = re.compile(rb"\r\n|\r|\n")
_SEQUENCE = re.compile(rb'"sequence_number"\s*:\s*(\d+)')


class StreamTap:
    """Watches the chunks of a Responses stream as they go by."""

    __slots__ = (
        "_after_cr",
        "_data",
        "_data_bytes",
        "_event",
        "_frame_open",
        "_last_data",
        "_max_line",
        "_overlong",
        "_skipping",
        "_tail",
        "_tail_parts",
        "_tail_size",
        "first_token_at",
        "frames",
        "outcome",
        "terminal_event",
    )

    def __init__(self, max_line: int = 16 * 1024 * 1024) -> None:
        self._max_line = max_line
        self._skipping = False
        """Inside a line too long to hold: its bytes are dropped up to its end."""
        self._after_cr = False
        """The skipped line ended in a CR at a chunk's end: an LF next belongs to it."""
        self._overlong = False
        """The open frame lost a line: it is not read."""
        self._data_bytes = 0
        self._tail = b""
        self._tail_parts: list[bytes] = []
        """Chunks with no line end in them, waiting for one (joined once, not per chunk)."""
        self._tail_size = 0
        self._event: bytes | None = None
        self._data: list[bytes] = []
        self._frame_open = False
        self._last_data = b""
        self.frames = 0
        self.first_token_at: float | None = None
        """`time.perf_counter()` when the first output delta arrived."""
        self.terminal_event: str | None = None
        self.outcome: Outcome | None = None

    @property
    def at_frame_boundary(self) -> bool:
        """True when the bytes seen so far end exactly between two frames."""
        return not self._tail and not self._tail_parts and not self._frame_open

    def feed(self, chunk: bytes) -> None:
        """Take the next chunk of the stream."""
        if self._after_cr:
            self._after_cr = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if self._skipping:
            chunk = self._skip(chunk)
            if not chunk:
                return
        if b"\n" not in chunk and b"\r" not in chunk:  # the line goes on
            self._tail_parts.append(chunk)
            self._tail_size += len(chunk)
            if len(self._tail) + self._tail_size > self._max_line:
                self._overflow()
            return
        if self._tail_parts:
            self._tail = b"".join((self._tail, *self._tail_parts))
            self._tail_parts, self._tail_size = [], 0
        self._split(chunk)
        if len(self._tail) > self._max_line:
            self._overflow()

    def _overflow(self) -> None:
        self._tail, self._tail_parts, self._tail_size = b"", [], 0
        self._skipping = True
        self._drop_frame()

    def _skip(self, chunk: bytes) -> bytes:
        """What follows the end of the line being skipped, if it ends in `chunk`."""
        match = _EOL.search(chunk)
        if match is None:
            return b""
        self._skipping = False
        if match.end() == len(chunk) and chunk[match.start()] == 0x0D:
            self._after_cr = True
        return chunk[match.end() :]

    def _drop_frame(self) -> None:
        self._frame_open = True
        self._overlong = True
        self._data = []
        self._data_bytes = 0

    def _split(self, chunk: bytes) -> None:
        data = self._tail + chunk if self._tail else chunk
        if b"\r" not in data:  # the usual LF-only stream: split in C
            lines = data.split(b"\n")
            self._tail = lines.pop()
            for line in lines:
                self._line(line)
            return
        start = 0
        end = len(data)
        while start < end:
            match = _EOL.search(data, start)
            if match is None:
                break
            if match.end() == end and data[match.start()] == 0x0D:
                break  # a CR at the very end may be the first half of a CRLF
            self._line(data[start : match.start()])
            start = match.end()
        self._tail = data[start:]

    def close(self) -> None:
        """The stream ended: a last frame without its blank line still counts for usage."""
        if self._tail_parts:
            self._tail = b"".join((self._tail, *self._tail_parts))
            self._tail_parts, self._tail_size = [], 0
        if self._tail:
            line, self._tail = self._tail.rstrip(b"\r"), b""
            self._line(line)
        if self._frame_open:
            self._dispatch()

    def next_sequence_number(self) -> int | None:
        """The number an event added after the last one seen should carry."""
        match = _SEQUENCE.search(self._last_data)
        return int(match.group(1)) + 1 if match else None

    def _line(self, line: bytes) -> None:
        if not line:
            if self._frame_open:
                self._dispatch()
            return
        if line[0] == 0x3A:  # ":" comment / keep-alive
            return
        self._frame_open = True
        field, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if field == b"data":
            if self._overlong:
                return
            self._data_bytes += len(value)
            if self._data_bytes > self._max_line:
                self._drop_frame()
                return
            self._data.append(value)
        elif field == b"event":
            self._event = value

    def _dispatch(self) -> None:
        event, parts, overlong = self._event, self._data, self._overlong
        self._event, self._data, self._frame_open = None, [], False
        self._overlong, self._data_bytes = False, 0
        if overlong:
            self.frames += 1
            return
        if not parts:
            return
        data = parts[0] if len(parts) == 1 else b"\n".join(parts)
        self.frames += 1
        self._last_data = data
        if data == b"[DONE]":
            return
        if event is not None:
            name = event.decode("utf-8", "replace")
            is_delta = name.endswith(".delta")
            if not (name in TERMINAL_EVENTS or (is_delta and self.first_token_at is None)):
                return
        elif not (
            (self.first_token_at is None and b'.delta"' in data)
            or any(hint in data for hint in _TERMINAL_HINTS)
        ):
            return
        kind, outcome = outcome_from_event(data)
        if kind is None:
            return
        if kind.endswith(".delta") and self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        elif kind in TERMINAL_EVENTS:
            self.terminal_event = kind
            if outcome is not None:
                self.outcome = outcome
