"""The ``limits`` section: quotas by tier, and how a request's tokens are reserved."""

from __future__ import annotations

from typing import Annotated

import msgspec

from .schema import NonNegativeInt, PositiveInt


class QuotaLimits(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A set of limits; an absent one is not enforced."""

    requests_per_minute: NonNegativeInt | None = None
    """Requests admitted in any 60 seconds (a sliding window, not calendar minutes)."""
    tokens_per_minute: NonNegativeInt | None = None
    """Tokens (input and output) in any 60 seconds: a request reserves an estimate when it is
    admitted and is charged its real usage (the provider's count, or an estimate when the
    answer broke off) when it ends."""
    tokens_per_day: NonNegativeInt | None = None
    """Tokens per calendar day, UTC."""
    concurrent_requests: NonNegativeInt | None = None
    """Requests running at once, streams included."""


class TierSettings(QuotaLimits, frozen=True, forbid_unknown_fields=True):
    """The limits of one tier, counted per user (over all of a user's keys and tokens), and
    optionally tighter ones per model."""

    models: dict[str, QuotaLimits] = msgspec.field(default_factory=dict)
    """Limits for one model (as clients name it), counted apart: a request for it is checked
    against both these and the tier's own."""


class LimitsSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Quotas: tiers, the default tier and how tokens are reserved before they are known."""

    default_tier: str = "default"
    """Tier of a caller whose key or token names none (or a tier no longer listed); a key of
    `tiers`."""
    tiers: dict[str, TierSettings] = msgspec.field(
        default_factory=lambda: {"default": TierSettings()}
    )
    """The tiers, by name; by default one, ``default``, with no limits."""
    default_output_tokens: PositiveInt = 4096
    """Output tokens reserved for a request without ``max_output_tokens``."""
    concurrency_lease: Annotated[float, msgspec.Meta(ge=5)] = 60.0
    """Seconds a concurrency slot outlives a replica that died holding it; renewed while the
    request runs."""
