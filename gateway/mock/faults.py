"""Per-request steering of the mock, read from request headers.

- `x-mock-ttft-ms: MS`: delay before the first output delta (non-streaming: added to the wait).
- `x-mock-tokens-per-second: N`: pace of the deltas (0: back to back, no sleeping).
- `x-mock-reply: TEXT`: the text of a text answer, percent-encoded UTF-8 (`urllib.parse.quote`).
- `x-mock-fault: F[,F...]`, F one of
  - `status=CODE`: answer CODE (400-599) with an OpenAI error body before any stream
    (429 adds `Retry-After: 1`);
  - `drop-after=N`: send N stream events (all of them if fewer), then close the connection
    without the chunked body's terminating chunk; a non-streaming answer is cut after its
    headers;
  - `data-only`: frames without `event:` lines, ending with `data: [DONE]` (like OpenRouter);
  - `crlf`: CRLF line endings;
  - `comments`: a `: keep-alive` comment frame between frames;
  - `hang`: accept the request and never answer (until the client leaves or the server stops);
  - `slow-headers=MS`: wait MS before the response headers.

A value the mock cannot read is a 400 in the OpenAI error shape, naming the header.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote

from .errors import MockError

TTFT_HEADER = "x-mock-ttft-ms"
RATE_HEADER = "x-mock-tokens-per-second"
REPLY_HEADER = "x-mock-reply"
FAULT_HEADER = "x-mock-fault"
HEADERS = (TTFT_HEADER, RATE_HEADER, REPLY_HEADER, FAULT_HEADER)
_FLAGS = ("data-only", "crlf", "comments", "hang")


@dataclass(frozen=True, slots=True)
class Steering:
    """How one request is answered: its delays, reply text and faults."""

    ttft_ms: float = 0.0
    tokens_per_second: float = 0.0
    reply: str | None = None
    status: int | None = None
    drop_after: int | None = None
    data_only: bool = False
    crlf: bool = False
    comments: bool = False
    hang: bool = False
    slow_headers_ms: float = 0.0


def steered(headers: Mapping[str, str]) -> bool:
    """Whether the request carries any steering header."""
    return any(name in headers for name in HEADERS)


def steering(headers: Mapping[str, str], defaults: Steering) -> Steering:
    """The steering of a request: its headers over the server's `defaults`.

    Raises MockError (400) for a value it cannot read.
    """
    if not steered(headers):  # the common case: nothing to parse
        return defaults
    changes: dict[str, object] = {}
    if TTFT_HEADER in headers:
        changes["ttft_ms"] = _number(TTFT_HEADER, headers[TTFT_HEADER])
    if RATE_HEADER in headers:
        changes["tokens_per_second"] = _number(RATE_HEADER, headers[RATE_HEADER])
    if REPLY_HEADER in headers:
        try:
            changes["reply"] = unquote(headers[REPLY_HEADER], errors="strict")
        except UnicodeDecodeError:
            raise _bad(REPLY_HEADER, "expected percent-encoded UTF-8") from None
    for fault in headers.get(FAULT_HEADER, "").split(","):
        changes.update(_fault(fault.strip()))
    return dataclasses.replace(defaults, **changes)  # type: ignore[arg-type]  # keys are fields


def _fault(fault: str) -> dict[str, object]:
    if not fault:
        return {}  # an empty header or a stray comma
    name, has_value, value = fault.partition("=")
    if name in _FLAGS and not has_value:
        return {name.replace("-", "_"): True}
    if name == "status":
        code = _integer(fault, value)
        if not 400 <= code <= 599:
            raise _bad(FAULT_HEADER, f"status: expected a code from 400 to 599, got {value!r}")
        return {"status": code}
    if name == "drop-after":
        return {"drop_after": _integer(fault, value)}
    if name == "slow-headers":
        return {"slow_headers_ms": _number(FAULT_HEADER, value, "slow-headers: ")}
    raise _bad(
        FAULT_HEADER,
        f"unknown fault {fault!r}; expected status=CODE, drop-after=N, data-only, crlf, "
        "comments, hang or slow-headers=MS",
    )


def _number(header: str, value: str, what: str = "") -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and number >= 0):
        raise _bad(header, f"{what}expected a number >= 0, got {value!r}")
    return number


def _integer(fault: str, value: str) -> int:
    if not (value.isascii() and value.isdigit()):
        raise _bad(FAULT_HEADER, f"{fault!r}: expected a whole number >= 0")
    return int(value)


def _bad(header: str, problem: str) -> MockError:
    return MockError(400, f"Invalid '{header}' header: {problem}.", param=header)
