"""Quotas: admit a request against its caller's four limits, settle its real usage, renew
concurrency leases; the four limits named once (`LIMITS`)."""

from __future__ import annotations

from .limiter import Admission, Limiter, estimate_tokens
from .limits import LIMITS, Limit

__all__ = ["LIMITS", "Admission", "Limit", "Limiter", "estimate_tokens"]
