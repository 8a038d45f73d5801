"""The replies of the limiter's Lua scripts, decoded in this one place (their layouts are
documented at the top of each script; `tests/quotas/test_replies.py` holds the offsets).

``lua/admit.lua`` answers, for `n` scopes::

    admitted: {1, day, need_1, mask_1, ..., need_n, mask_n,
               lim_req, rem_req, reset_req_ms, lim_tok, rem_tok, reset_tok_ms}
    rejected: {0, scope index (from 1), limit name, retry_after_ms, limit}

``lua/peek.lua`` answers 8 figures per scope: each limit (in `limits.LIMITS` order) and what
is used of it. What a client is told of them is here too: the 429 of a rejection, the
``x-ratelimit-*`` headers of an admission.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

from ..errors import RateLimited
from .limits import LIMITS, UNLIMITED, Limit

TOKENS_PER_MINUTE, TOKENS_PER_DAY, SLOT = 1, 2, 4
"""The bits of a scope's mask: what an admission holds in it, for ``lua/settle.lua``."""


class Admitted(NamedTuple):
    masks: list[int]
    """Per scope, what the admission holds there (`SLOT`...)."""
    window: tuple[int, ...]
    """Requests and tokens per minute of the tightest scope: limit, remaining, reset in ms
    (`UNLIMITED` where none applies): the ``x-ratelimit-*`` headers."""


class Rejected(NamedTuple):
    scope: int
    """The index of the scope whose limit was reached (from 0)."""
    limit: Limit
    retry_ms: int
    value: int
    """The limit's value."""


def admit_reply(reply: Sequence[Any], scopes: int) -> Admitted | Rejected:
    """Decode admit.lua's reply for a call with `scopes` scopes."""
    if int(reply[0]) == 0:
        name = reply[2].decode() if isinstance(reply[2], bytes) else str(reply[2])
        return Rejected(int(reply[1]) - 1, _by_script[name], max(int(reply[3]), 1), int(reply[4]))
    masks = [int(v) for v in reply[3 : 3 + 2 * scopes : 2]]
    window = tuple(int(v) for v in reply[2 + 2 * scopes : 8 + 2 * scopes])
    return Admitted(masks, window)


def peek_reply(reply: Sequence[Any], scopes: int) -> list[dict[str, dict[str, int]]]:
    """Decode peek.lua's reply: per scope, each limit that applies with what is used of it."""
    out = []
    for i in range(scopes):
        row = [int(v) for v in reply[8 * i : 8 * i + 8]]
        shown = {}
        for j, limit in enumerate(LIMITS):
            value, used = row[2 * j], row[2 * j + 1]
            if value != UNLIMITED:
                shown[limit.setting] = {
                    "limit": value,
                    "used": used,
                    "remaining": max(value - used, 0),
                }
        out.append(shown)
    return out


def rejection(rejected: Rejected, description: str, kind: str) -> RateLimited:
    """The 429 of a rejection: `description` names the scope (``user alice``...), `kind` its
    kind (``user``, ``key`` or ``model``: never which one)."""
    limit, retry_ms, value = rejected.limit, rejected.retry_ms, rejected.value
    seconds = math.ceil(retry_ms / 1000)
    headers = {"retry-after": str(seconds), "retry-after-ms": str(retry_ms)}
    named = limit.script  # OpenAI's headers and error types name two limits so
    if named in ("requests", "tokens"):
        headers[f"x-ratelimit-limit-{named}"] = str(value)
        headers[f"x-ratelimit-remaining-{named}"] = "0"
        headers[f"x-ratelimit-reset-{named}"] = duration(retry_ms)
    daily = limit.setting == "tokens_per_day"
    return RateLimited(
        f"Rate limit reached for {description} on {limit.description}: limit {value}. "
        f"Please try again in {duration(retry_ms)}.",
        type_="insufficient_quota" if daily else ("tokens" if named == "tokens" else "requests"),
        code="insufficient_quota" if daily else "rate_limit_exceeded",
        headers=headers,
        limit=limit.setting,
        scope=kind,
    )


def window_headers(
    lim_req: int, rem_req: int, reset_req: int, lim_tok: int, rem_tok: int, reset_tok: int
) -> list[tuple[bytes, bytes]]:
    """The ``x-ratelimit-*`` headers of an admission (`Admitted.window`), as OpenAI sends
    them."""
    out: list[tuple[bytes, bytes]] = []
    if lim_req >= 0:
        out += [
            (b"x-ratelimit-limit-requests", str(lim_req).encode()),
            (b"x-ratelimit-remaining-requests", str(max(rem_req, 0)).encode()),
            (b"x-ratelimit-reset-requests", duration(reset_req).encode()),
        ]
    if lim_tok >= 0:
        out += [
            (b"x-ratelimit-limit-tokens", str(lim_tok).encode()),
            (b"x-ratelimit-remaining-tokens", str(max(rem_tok, 0)).encode()),
            (b"x-ratelimit-reset-tokens", duration(reset_tok).encode()),
        ]
    return out


def duration(ms: int) -> str:
    """A wait in OpenAI's header format: ``20ms``, ``1.5s``, ``6m0s``."""
    if ms < 1000:
        return f"{max(ms, 0)}ms"
    if ms < 60_000:
        return f"{ms / 1000:.3g}s"
    minutes, rest = divmod(ms // 1000, 60)
    return f"{minutes}m{rest}s"


_by_script = {limit.script: limit for limit in LIMITS}
