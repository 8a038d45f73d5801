"""An incremental reader of a copy of an SSE stream: usage, terminal event, first token.

The bytes forwarded to the client never pass through here; this only watches them. It accepts
LF, CRLF and CR line endings, frames with or without `event:`, comments, `[DONE]`, and frames
split across any chunk boundary (a CRLF included). To stay cheap on the hot path it decodes JSON
only for frames that can matter: terminal events, and deltas until the first one is seen.
"""

from __future__ import annotations

import re
import time

from .usage import Outcome, outcome_from_event

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
        "_data",
        "_event",
        "_frame_open",
        "_last_data",
        "_tail",
        "first_token_at",
        "frames",
        "outcome",
        "terminal_event",
    )

    def __init__(self) -> None:
        self._tail = b""
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
        return not self._tail and not self._frame_open

    def feed(self, chunk: bytes) -> None:
        """Take the next chunk of the stream."""
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
            self._data.append(value)
        elif field == b"event":
            self._event = value

    def _dispatch(self) -> None:
        event, parts = self._event, self._data
        self._event, self._data, self._frame_open = None, [], False
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
