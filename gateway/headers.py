"""Which headers cross the gateway, in each direction.

Toward the upstream: the client's headers minus its credentials, cookies, hop-by-hop headers
(RFC 9110 §7.6.1, plus any named in `Connection`) and the ones the gateway sets itself.
Toward the client: the upstream's headers minus hop-by-hop ones, provider account details and
cookies; `x-request-id` is always the gateway's.
"""

from __future__ import annotations

from collections.abc import Iterable

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

# Request headers never forwarded: credentials (ours are injected), cookies, framing the
# gateway recomputes, the body's content-encoding (the body is forwarded decoded), and account
# selectors a client must not choose for the org's key.
_DROP_UPSTREAM = _HOP_BY_HOP | {
    b"authorization",
    b"api-key",
    b"x-api-key",
    b"cookie",
    b"host",
    b"content-length",
    b"content-encoding",
    b"accept-encoding",
    b"x-request-id",
    b"openai-organization",
    b"openai-project",
    b"forwarded",
    b"x-real-ip",
}

# Response headers never passed back: framing uvicorn recomputes, the provider's cookies and
# account details, and (any `x-ratelimit-*`) the provider's own rate-limit view of the org's
# shared key, which is not the caller's quota.
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
    fixed: bytes,
    fixed_names: frozenset[bytes],
    request_id: str,
) -> bytes:
    """Header lines for the upstream request: the client's allowed ones, then the gateway's
    `fixed` lines (credentials, content type) whose names replace the client's."""
    client = list(client)
    named = _connection_tokens(client)
    lines: list[bytes] = []
    for raw_name, value in client:
        name = raw_name.lower()
        if (
            name in _DROP_UPSTREAM
            or name in named
            or name in fixed_names
            or name.startswith(b"x-forwarded-")
        ):
            continue
        lines += (name, b": ", value, b"\r\n")
    lines += (fixed, b"x-request-id: ", request_id.encode(), b"\r\n")
    return b"".join(lines)


def downstream_headers(
    upstream: Iterable[tuple[bytes, bytes]], request_id: bytes
) -> list[tuple[bytes, bytes]]:
    """Headers for the client, from the upstream's raw headers."""
    upstream = list(upstream)
    named = _connection_tokens(upstream)
    out: list[tuple[bytes, bytes]] = []
    for raw_name, value in upstream:
        name = raw_name.lower()
        if name in _DROP_DOWNSTREAM or name in named or name.startswith(b"x-ratelimit-"):
            if name == b"x-request-id":
                out.append((b"x-upstream-request-id", value))
            continue
        out.append((name, value))
    out.append((b"x-request-id", request_id))
    return out
