"""Per-request steering of the mock, read from request headers.

- `x-mock-ttft-ms: MS`: delay before the first output delta (non-streaming: before answering).
- `x-mock-tokens-per-second: N`: pace of the deltas (0: as fast as possible).
- `x-mock-reply: TEXT`: the answer text, percent-encoded UTF-8.
- `x-mock-fault: F[,F...]` with F one of
  `status=CODE` (answer CODE with an OpenAI error body; 429 adds `Retry-After: 1`),
  `drop-after=N` (abort the connection after N stream events, body never terminated),
  `data-only` (no `event:` lines; ends with `data: [DONE]`), `crlf` (CRLF line endings),
  `comments` (a `: keep-alive` comment between events), `hang` (never answer),
  `slow-headers=MS` (wait MS before the response headers).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

from multidict import CIMultiDictProxy


class BadOverride(ValueError):
    """A steering header the mock cannot understand."""


@dataclass(frozen=True)
class Steering:
    """How one request should be answered."""

    ttft_ms: float
    tokens_per_second: float
    reply: str | None = None
    status: int | None = None
    drop_after: int | None = None
    data_only: bool = False
    crlf: bool = False
    comments: bool = False
    hang: bool = False
    slow_headers_ms: float = 0.0


def _number(name: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise BadOverride(f"{name}: expected a number, got {value!r}") from None
    if number < 0:
        raise BadOverride(f"{name}: expected a number >= 0, got {value!r}")
    return number


def steering(headers: CIMultiDictProxy[str], ttft_ms: float, tokens_per_second: float) -> Steering:
    """Read the steering headers over the server's defaults."""
    if "x-mock-ttft-ms" in headers:
        ttft_ms = _number("x-mock-ttft-ms", headers["x-mock-ttft-ms"])
    if "x-mock-tokens-per-second" in headers:
        tokens_per_second = _number("x-mock-tokens-per-second", headers["x-mock-tokens-per-second"])
    reply = unquote(headers["x-mock-reply"]) if "x-mock-reply" in headers else None
    options: dict[str, object] = {}
    for fault in filter(None, (f.strip() for f in headers.get("x-mock-fault", "").split(","))):
        name, _, value = fault.partition("=")
        if name == "status":
            code = int(_number("status", value))
            if not 400 <= code <= 599:
                raise BadOverride(f"status: expected 400-599, got {value!r}")
            options["status"] = code
        elif name == "drop-after":
            options["drop_after"] = int(_number("drop-after", value))
        elif name == "slow-headers":
            options["slow_headers_ms"] = _number("slow-headers", value)
        elif name in ("data-only", "crlf", "comments", "hang") and not value:
            options[name.replace("-", "_")] = True
        else:
            raise BadOverride(f"x-mock-fault: unknown fault {fault!r}")
    return Steering(ttft_ms, tokens_per_second, reply, **options)  # type: ignore[arg-type]
