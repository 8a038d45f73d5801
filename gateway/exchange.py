"""What the gateway knows about one request while it runs (its record, built by
`gateway/ledger/record.py`, is what the canonical log line and the usage ledger keep of it)."""

from __future__ import annotations

from dataclasses import dataclass

from .outcome import Outcome


@dataclass(slots=True)
class Exchange:
    """One request's facts, filled in by each step; its record is logged once at the end."""

    request_id: str
    started: float
    """`perf_counter()` when the request arrived."""
    arrived: float = 0.0
    """Unix time when the request arrived."""
    ended: float = 0.0
    """`perf_counter()` when its answer ended (0 while it runs)."""
    record_id: str = ""
    """The id of its usage record (unique, unlike a client's request id), given at a stream's
    first save (its saves carry it) or at the request's end, when the ledger keeps a record."""
    body_size: int = 0
    checkpointed: bool = False
    """A running stream's progress was saved (see `gateway/ledger/`)."""
    method: str = "POST"
    path: str = "/v1/responses"
    model: str | None = None
    provider: str | None = None
    upstream_model: str | None = None
    stream: bool = False
    caller: str | None = None
    """The authenticated user."""
    key_id: str | None = None
    team: str | None = None
    user: str | None = None
    """The request's own `user` field."""
    metadata: dict[str, str] | None = None
    status: int = 0
    upstream_status: int | None = None
    error_code: str | None = None
    error_param: str | None = None
    """The request field a 4xx names (its error's `param`)."""
    stream_error: str | None = None
    first_byte_at: float | None = None
    first_token_at: float | None = None
    terminal_event: str | None = None
    outcome: Outcome | None = None
    response_started: bool = False
    response_complete: bool = False
    client_disconnected: bool = False
    interrupted: bool = False
    """Cut by this process's shutdown (its grace for requests in flight ran out)."""
    ratelimit_headers: list[tuple[bytes, bytes]] | None = None
    output_estimate: int = 0
    """Output tokens seen so far when usage is unknown (stream frames, body size / 4)."""
    rate_limit: tuple[str, str] | None = None
    """The limit and scope kind of a 429."""

    @property
    def partly_delivered(self) -> bool:
        """Some of a successful answer reached the client, though its usage is unknown."""
        return (
            self.response_started
            and self.first_byte_at is not None
            and (self.upstream_status or 0) < 300
        )

    def end(self) -> str:
        """How the request ended: completed, incomplete, failed (as the response says),
        rejected (429), client_disconnected, interrupted (cut by the gateway's shutdown) or
        error."""
        if self.status == 429:
            return "rejected"
        if self.client_disconnected:
            return "client_disconnected"
        if self.interrupted:
            return "interrupted"
        outcome = self.outcome
        if outcome is not None and outcome.status in ("completed", "incomplete", "failed"):
            return outcome.status
        if self.status >= 400 or self.stream_error is not None:
            return "error"
        return "completed"

    def upstream_error(self) -> str | None:
        """What went wrong upstream, if anything did (a client's mistake is not counted)."""
        if self.stream_error is not None:
            return self.stream_error
        if self.error_code in _UPSTREAM_CODES:
            return self.error_code
        if self.upstream_status is not None and self.upstream_status >= 500:
            return f"http_{self.upstream_status}"
        return None


_UPSTREAM_CODES = frozenset(
    ("upstream_error", "upstream_timeout", "upstream_unavailable", "upstream_auth_failed")
)


def elapsed_ms(start: float, end: float | None) -> float | None:
    """Milliseconds from `start` to `end` (`perf_counter()` values), rounded; None without
    an end."""
    # Whole microseconds, then ms: round(x, 3) goes through decimal digits, ~4x slower, and
    # this runs three times per request (its record).
    return None if end is None else round((end - start) * 1_000_000) / 1000
