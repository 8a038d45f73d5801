"""The last step of a request: what its quota is charged, its canonical log line and its usage
record (one JSON object, encoded once for both: see `gateway/ledger/record.py`)."""

from __future__ import annotations

from typing import Any

from ..exchange import Exchange
from ..ledger import Ledger, encode, record_of
from ..outcome import estimate_input_tokens
from ..quotas import Admission


def charge(ex: Exchange, admission: Admission, body_size: int) -> int:
    """The tokens to charge for a request, from what is known of its end."""
    usage = ex.outcome.usage if ex.outcome is not None else None
    if usage is not None:
        return usage.total_tokens  # the provider's own count; may exceed the reservation
    if not ex.partly_delivered:
        return 0  # nothing reached the client, or an error: the reservation is refunded
    # Broken off (client gone, upstream cut): at least what was streamed, at most the
    # reservation.
    return min(admission.reserved, estimate_input_tokens(body_size) + ex.output_estimate)


def finish(ex: Exchange, log: Any, ledger: Ledger | None) -> None:
    """Log the request's canonical line and queue its usage record (a caller's request, when
    the ledger is on)."""
    try:
        if ledger is not None and not ex.record_id:
            ex.record_id = ledger.new_id()
        record = record_of(ex)
        line = encode(record)
    except Exception:  # a bug: the answer is sent; log what is safe, count the loss, never raise
        log.exception("request", request_id=ex.request_id, status=ex.status, error="record_failed")
        if ledger is not None:
            ledger.lost(ex.request_id, ex.caller)
        return
    log.info("request", _json=line)
    if ledger is not None:
        ledger.queue(record, line)
