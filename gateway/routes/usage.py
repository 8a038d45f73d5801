"""`GET /v1/usage`: a caller's own usage today and this month, by model, and what remains of
each of its limits. It takes the same credentials as /v1/responses."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, get

from ..identity import Identity
from ..ledger import UsageReports
from ..quotas import Limiter
from ..settings import Settings


class CallerUsageController(Controller):
    """/v1/usage: a caller's own usage; the app adds the guard that authenticates it."""

    path = "/v1/usage"

    @get("")
    async def caller_usage(
        self,
        reports: UsageReports,
        limiter: Limiter,
        settings: Settings,
        request: Request[Any, Any, Any],
    ) -> dict[str, Any]:
        """The caller's usage today and this month, and what remains of each of its limits."""
        identity: Identity = request.state.identity
        body: dict[str, Any] = {
            "object": "usage",
            "user": identity.user,
            "key_id": identity.key_id,
            "tier": identity.tier or settings.limits.default_tier,
        }
        body.update(await reports.caller(identity.user))
        body["limits"] = await limiter.peek(identity)
        return body
