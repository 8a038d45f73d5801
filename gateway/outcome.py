"""Token usage read from an upstream answer: the terminal event of a stream or a JSON body.

Providers disagree on details (OpenRouter adds `cost`, vLLM `*_per_turn`, older payloads lack
`cache_write_tokens`), so every field is optional and extra keys are ignored.
"""

from __future__ import annotations

import msgspec


class _InputDetails(msgspec.Struct):
    cached_tokens: int | None = None


class _OutputDetails(msgspec.Struct):
    reasoning_tokens: int | None = None


class _WireUsage(msgspec.Struct):
    input_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None
    input_tokens_details: _InputDetails | None = None
    output_tokens_details: _OutputDetails | None = None


class _WireResponse(msgspec.Struct):
    id: str | None = None
    status: str | None = None
    usage: _WireUsage | None = None


class _WireEvent(msgspec.Struct):
    type: str | None = None
    response: _WireResponse | None = None
    sequence_number: int | None = None


class Usage(msgspec.Struct, frozen=True):
    """What one answer consumed, as the provider reported it."""

    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    total_tokens: int = 0


class Outcome(msgspec.Struct):
    """What the gateway learned from an answer: its id, final status and usage."""

    response_id: str | None = None
    status: str | None = None
    usage: Usage | None = None


_event_decoder = msgspec.json.Decoder(_WireEvent)
_response_decoder = msgspec.json.Decoder(_WireResponse)


def _usage(wire: _WireUsage | None) -> Usage | None:
    if wire is None:
        return None
    inp = wire.input_tokens or 0
    out = wire.output_tokens or 0
    return Usage(
        input_tokens=inp,
        cached_input_tokens=(wire.input_tokens_details and wire.input_tokens_details.cached_tokens)
        or 0,
        output_tokens=out,
        reasoning_tokens=(
            wire.output_tokens_details and wire.output_tokens_details.reasoning_tokens
        )
        or 0,
        total_tokens=wire.total_tokens if wire.total_tokens is not None else inp + out,
    )


def outcome_from_response(body: bytes) -> Outcome | None:
    """Read a non-streamed Response object; None when it is not one."""
    try:
        wire = _response_decoder.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
    return Outcome(response_id=wire.id, status=wire.status, usage=_usage(wire.usage))


def outcome_from_event(data: bytes) -> tuple[str | None, Outcome | None]:
    """Read a stream event's `type` and, for events carrying a Response, its outcome."""
    try:
        wire = _event_decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None, None
    if wire.response is None:
        return wire.type, None
    response = wire.response
    return wire.type, Outcome(response.id, response.status, _usage(response.usage))


def estimate_input_tokens(body_size: int) -> int:
    """A generous estimate of a request body's input tokens: ~4 bytes per token."""
    return body_size // 4 + 1
