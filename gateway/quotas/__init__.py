"""Quotas: admit a request against its caller's four limits, settle its real usage, renew
concurrency leases."""

from __future__ import annotations

from .limiter import Admission, Limiter, estimate_tokens

__all__ = ["Admission", "Limiter", "estimate_tokens"]
