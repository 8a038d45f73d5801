"""Which headers cross the gateway, in each direction.

Toward the upstream: only the client headers named in `FORWARDED`, and those a provider adds
with `forward_headers` (the embedded upstream adds its steering headers), then the gateway's own
lines (credentials, content type, ``accept-encoding``, ``x-request-id``). Everything else stays:
credentials of any provider (``x-goog-api-key``, ``X-Amz-Security-Token``, ...), cookies, the
client's addresses (``Forwarded``, ``True-Client-IP``, ``Via``), method and URL overrides,
``Expect``, ``Content-Encoding``, hop-by-hop headers and whatever a client makes up. Left out
on purpose:

- ``baggage`` (W3C Baggage): whatever the caller's services put in it, user and tenant ids
  included; its specification warns against sending it to third parties.
- ``x-stainless-*``: the OpenAI SDKs' telemetry (OS, architecture, runtime and its version,
  retry count, read timeout) describes the caller's machine, not the request; the provider's
  client is the gateway.
- ``content-type``, ``accept-encoding``, ``x-request-id``: the gateway's own (it sends the JSON
  it checked, takes bodies unencoded, and names the request).

Toward the client: the upstream's headers minus hop-by-hop ones, provider account details and
cookies; `x-request-id` is always the gateway's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

FORWARDED = frozenset(
    {
        # What the client reads back: `application/json` or `text/event-stream`.
        b"accept",
        # The SDK and its version: how a provider tells which client sent a request it rejects.
        b"user-agent",
        # Opt-in to a provider's beta behaviour: it changes what the request means.
        b"openai-beta",
        # A retried request is answered once; scoped to the caller first (`_scoped`), since
        # every caller's request reaches the provider under the same organisation key.
        b"idempotency-key",
        # W3C Trace Context: the provider's spans join the caller's trace (random ids only).
        b"traceparent",
        # W3C Trace Context's vendor entries, which belong with `traceparent`.
        b"tracestate",
    }
)
"""Client request headers forwarded to every provider (lower case); the one list, held by
tests/test_headers.py."""

_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

NEVER_FORWARDED = _HOP_BY_HOP | {
    # The caller's credentials (the provider gets the gateway's) and cookies.
    b"authorization",
    b"api-key",
    b"x-api-key",
    b"cookie",
    # Framing and encoding the gateway sets for the bytes it sends.
    b"host",
    b"content-length",
    b"content-type",
    b"content-encoding",
    b"accept-encoding",
    b"expect",  # the gateway holds the whole body before it sends: nothing to wait for
    # The gateway's request id, and where the request came from (also any `x-forwarded-*`).
    b"x-request-id",
    b"forwarded",
    b"x-real-ip",
    b"true-client-ip",
    b"cf-connecting-ip",
    b"via",
    # Account selectors: a caller must not choose them for the organisation's key.
    b"openai-organization",
    b"openai-project",
}
"""Names a provider's `forward_headers` may not list: what the gateway owns or must withhold."""


def forwardable(name: str) -> bool:
    """May a provider's `forward_headers` list `name`?"""
    lowered = name.lower().encode("latin-1")
    return lowered not in NEVER_FORWARDED and not lowered.startswith(b"x-forwarded-")


# Response headers never passed back: framing uvicorn recomputes, the provider's cookies and
# account details, (any `x-ratelimit-*`) the provider's own rate-limit view of the org's
# shared key, which is not the caller's quota, and (any `access-control-*`) the provider's CORS
# answer: which pages may read an answer is the gateway's decision (`gateway/server/cors.py`).
_DROP_DOWNSTREAM_PREFIXES = (b"x-ratelimit-", b"access-control-")
_DROP_DOWNSTREAM = _HOP_BY_HOP | {
    b"content-length",
    b"set-cookie",
    b"server",
    b"date",
    b"x-request-id",
    b"openai-organization",
    b"openai-project",
    b"alt-svc",
    b"cf-ray",
    b"strict-transport-security",
}


def _connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    return frozenset(tokens)


def upstream_headers(
    client: Iterable[tuple[bytes, bytes]],
    forwarded: frozenset[bytes],
    fixed: bytes,
    request_id: str,
    caller: str | None,
) -> bytes:
    """Header lines for the upstream request: the client's headers named in `forwarded` (the
    route's: `FORWARDED` and its provider's own, minus the names of `fixed`), then the
    gateway's `fixed` lines and the request id; `caller` scopes ``idempotency-key``."""
    client = list(client)
    named = _connection_tokens(client)
    lines: list[bytes] = []
    for raw_name, value in client:
        name = raw_name.lower()
        if name not in forwarded or name in named:
            continue
        if name == b"idempotency-key":
            value = _scoped(value, caller)
        lines += (name, b": ", value, b"\r\n")
    lines += (fixed, b"x-request-id: ", request_id.encode(), b"\r\n")
    return b"".join(lines)


def _scoped(value: bytes, caller: str | None) -> bytes:
    """The caller's idempotency key as the provider sees it: the same for the same caller and
    value, never equal for two callers (who could otherwise replay each other's answers)."""
    scope = (caller or "").encode()
    return hashlib.sha256(b"%d:%s:%s" % (len(scope), scope, value)).hexdigest().encode()


def downstream_headers(
    upstream: Iterable[tuple[bytes, bytes]], request_id: bytes
) -> list[tuple[bytes, bytes]]:
    """Headers for the client, from the upstream's raw headers."""
    upstream = list(upstream)
    named = _connection_tokens(upstream)
    out: list[tuple[bytes, bytes]] = []
    for raw_name, value in upstream:
        name = raw_name.lower()
        if name in _DROP_DOWNSTREAM or name in named or name.startswith(_DROP_DOWNSTREAM_PREFIXES):
            if name == b"x-request-id":
                out.append((b"x-upstream-request-id", value))
            continue
        out.append((name, value))
    out.append((b"x-request-id", request_id))
    return out
