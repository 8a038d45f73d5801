"""The record of one finished request: its canonical log line and its usage-ledger entry.

Both are one JSON object, encoded once per request at its end (`encode(record_of(ex))`): the
log line is that object with structlog's `event`, `level` and `timestamp` in front (see
`logging.py`), and the ledger writes the very same bytes to its stream. Encoding the request's
facts twice, once for each, was most of what the ledger cost (see docs/performance.md).
"""

from __future__ import annotations

import functools
import time

import msgspec

from ..exchange import Exchange, elapsed_ms
from ..outcome import Usage, estimate_input_tokens


class UsageRecord(msgspec.Struct, omit_defaults=True, gc=False):
    """What one request used, whatever its end, and how it went. (Not tracked by the garbage
    collector: it holds only text, numbers and a dict of text, never a cycle.) A field at its
    default is left out of the JSON.

    Its fields are in the order `_record` passes them."""

    request_id: str
    time: float
    """Unix time the request arrived."""
    end: str
    """completed, incomplete, failed, rejected, error, client_disconnected or interrupted (the
    stream was cut by its replica's shutdown or death)."""
    status: int
    stream: bool
    id: str = ""
    """Unique per record, given when the ledger keeps one: the idempotency key of its write.
    (Its default, the empty string, is a single object: omitted as a default should be.)"""
    user: str | None = None
    key_id: str | None = None
    team: str | None = None
    model: str | None = None
    """A model this gateway serves (any other text is `requested_model`)."""
    provider: str | None = None
    upstream_model: str | None = None
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    total_tokens: int = 0
    latency_ms: float | None = None
    ttft_ms: float | None = None
    request_user: str | None = None
    metadata: dict[str, str] | None = None
    response_id: str | None = None
    usage_estimated: bool = False
    """The provider's usage is unknown (the stream was broken off): the tokens are estimated
    from the request's size and the frames streamed, as the quota charged them."""
    checkpointed: bool = False
    """The stream's progress was saved while it ran: another replica may write this record
    (from the save) if this one seems dead, so its write is also checked by id."""
    # How it went, for the log line (the ledger keeps them too: they explain a charge).
    requested_model: str | None = None
    """The request's `model` when this gateway does not serve it."""
    method: str | None = None
    """Only when not POST (the answer was a 405)."""
    path: str | None = None
    """Only when not /v1/responses."""
    upstream_status: int | None = None
    error_code: str | None = None
    stream_error: str | None = None
    ttfb_ms: float | None = None
    terminal_event: str | None = None
    response_status: str | None = None
    client_disconnected: bool = False
    interrupted: bool = False
    param: str | None = None
    """The request field an error names (``temperature``, ``tools[0].name``...)."""

    def day(self) -> str:
        """The UTC day the request arrived, ``YYYY-MM-DD``."""
        return utc_day(int(self.time // 86_400))


@functools.lru_cache(maxsize=8)
def utc_day(number: int) -> str:
    """Day `number` since the Unix epoch, ``YYYY-MM-DD`` (records come from a few days)."""
    return time.strftime("%Y-%m-%d", time.gmtime(number * 86_400))


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(UsageRecord)


def encode(record: UsageRecord) -> bytes:
    """The record's JSON: the log line's fields and a line of the ledger entry's `r` field."""
    return _encoder.encode(record)


def decode(data: bytes) -> UsageRecord:
    """A record from its JSON (raises `msgspec.DecodeError`)."""
    return _decoder.decode(data)


def record_of(ex: Exchange) -> UsageRecord:
    """The record of a finished exchange."""
    outcome = ex.outcome
    usage = outcome.usage if outcome is not None else None
    latency, ttft = elapsed_ms(ex.started, ex.ended), elapsed_ms(ex.started, ex.first_token_at)
    record = _record(ex, ex.end(), latency, ttft, usage or _NO_USAGE)
    if usage is None and ex.partly_delivered:
        _estimate(record, ex, ex.output_estimate)
    return record


_NO_USAGE = Usage()


def progress_of(
    ex: Exchange, frames: int, first_token_at: float | None, record_id: str
) -> UsageRecord:
    """A running stream's usage so far, as the record to write should its replica die: it
    carries `record_id`, the id its own record will have (which may then race this one), and
    is marked as saved. `ex` is only read."""
    latency = elapsed_ms(ex.started, time.perf_counter())
    record = _record(ex, "interrupted", latency, elapsed_ms(ex.started, first_token_at), _NO_USAGE)
    record.id, record.checkpointed = record_id, True
    record.interrupted = True  # as it will be if it is ever written: its replica died
    _estimate(record, ex, frames)
    return record


def _record(
    ex: Exchange, end: str, latency_ms: float | None, ttft_ms: float | None, usage: Usage
) -> UsageRecord:
    outcome = ex.outcome
    served = ex.provider is not None
    # Positional: msgspec matches keyword arguments by name, ten times slower per record.
    return UsageRecord(
        ex.request_id,
        round(ex.arrived * 1000) / 1000,  # ms: faster than round(x, 3)
        end,
        ex.status,
        ex.stream,
        ex.record_id,
        ex.caller,
        ex.key_id,
        ex.team,
        ex.model if served else None,  # a served model, never any text
        ex.provider,
        ex.upstream_model,
        usage.input_tokens,
        usage.cached_input_tokens,
        usage.output_tokens,
        usage.reasoning_tokens,
        usage.total_tokens,
        latency_ms,
        ttft_ms,
        ex.user,  # the request's own `user` field
        ex.metadata,
        outcome.response_id if outcome is not None else None,
        False,
        ex.checkpointed,
        None if served else ex.model,
        None if ex.method == "POST" else ex.method,  # (msgspec omits defaults by identity)
        None if ex.path == "/v1/responses" else ex.path,
        ex.upstream_status,
        ex.error_code,
        ex.stream_error,
        elapsed_ms(ex.started, ex.first_byte_at),
        ex.terminal_event,
        outcome.status if outcome is not None else None,
        ex.client_disconnected,
        ex.interrupted,
        ex.error_param,
    )


def _estimate(record: UsageRecord, ex: Exchange, output_tokens: int) -> None:
    record.input_tokens = estimate_input_tokens(ex.body_size)
    record.output_tokens = output_tokens
    record.total_tokens = record.input_tokens + output_tokens
    record.usage_estimated = True
