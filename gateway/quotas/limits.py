"""The four limits, named once: how the configuration, the admin API and the ledger call each
one, how the Lua scripts take and report it, how a user's overrides keep it in Redis, and the
`gateway keys` option that sets it.

`LIMITS` is in the order the Lua scripts take a scope's limits (``lua/admit.lua``, ARGV
``6 + 5(i-1)..``) and `peek.lua` reports them; `QuotaLimits` declares its fields in the same
order (a test holds all of it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from ..settings import QuotaLimits


class Limit(NamedTuple):
    setting: str
    """Its name in the configuration, the admin API and GET /v1/usage."""
    script: str
    """Its name in a rejection from ``lua/admit.lua``."""
    override: str
    """The field of a user's override hash in Redis (``lua/admit.lua`` reads it)."""
    option: str
    """The option of ``gateway keys create`` and ``gateway keys limits``: ``--<option>``."""
    description: str
    """How a message names it."""


LIMITS = (
    Limit("requests_per_minute", "requests", "rpm", "rpm", "requests per minute (RPM)"),
    Limit("tokens_per_minute", "tokens", "tpm", "tpm", "tokens per minute (TPM)"),
    Limit("tokens_per_day", "tokens_per_day", "tpd", "tpd", "tokens per day (TPD)"),
    Limit("concurrent_requests", "concurrency", "conc", "concurrency", "concurrent requests"),
)
UNLIMITED = -1
"""A limit not enforced, as the scripts take it."""


def script_args(limits: QuotaLimits) -> list[int]:
    """`limits` as the Lua scripts take them, in `LIMITS` order."""
    values: list[int] = []
    for limit in LIMITS:
        value: int | None = getattr(limits, limit.setting)
        values.append(UNLIMITED if value is None else value)
    return values


def to_override(limits: QuotaLimits) -> dict[str, int]:
    """The fields of a user's override hash that set `limits` (absent ones left out)."""
    fields = {limit.override: getattr(limits, limit.setting) for limit in LIMITS}
    return {name: value for name, value in fields.items() if value is not None}


def from_override(fields: Mapping[bytes, bytes]) -> QuotaLimits:
    """The limits a user's override hash sets."""
    found = {
        limit.setting: int(fields[limit.override.encode()])
        for limit in LIMITS
        if limit.override.encode() in fields
    }
    return QuotaLimits(**found)
