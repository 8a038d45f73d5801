"""Quotas: admit a request against its caller's limits, then settle its real usage.

Each request is checked, in one atomic Lua script (`lua/admit.lua`), against every scope that
applies to it: the user (tier limits, or the admin's overrides), the API key when the key has
limits of its own, and the model when the tier limits it. The algorithm is a sliding-window log
for the per-minute limits (exact: never more than N in any 60 s, no burst at window edges,
which GCRA and fixed windows allow), a counter of the UTC day for tokens per day, and leases
for concurrency. Tokens are unknown until the answer ends, so admission reserves an estimate
(input size / 4 + ``max_output_tokens`` or ``limits.default_output_tokens``, capped at the
limit) and `settle` replaces it by the real usage (`lua/settle.lua`).

Redis is asked once before a request is forwarded. When it cannot be asked, the configured
policy decides: ``fail_closed`` answers 503, ``fail_open`` forwards without a quota.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from ..errors import ServiceUnavailable
from ..identity import Identity
from ..metrics import Metrics
from ..outcome import estimate_input_tokens
from ..settings import LimitsSettings, QuotaLimits, TierSettings
from ..state import RedisKeys, RedisStore, RedisUnavailable, ScriptBatcher
from .limits import from_override, script_args, to_override
from .replies import (
    SLOT,
    Admitted,
    Rejected,
    admit_reply,
    peek_reply,
    rejection,
    window_headers,
)

_SETTLE_RETRY_PAUSES = (0.5, 2.0, 5.0)
"""Seconds between the attempts to write a settlement while Redis is unreachable."""


class QuotaScope:
    """One set of counters a request is checked against."""

    __slots__ = ("description", "is_user", "keys", "limits", "name")

    def __init__(
        self, name: str, description: str, limits: QuotaLimits, keys: tuple[str, ...]
    ) -> None:
        self.name, self.description, self.limits, self.keys = name, description, limits, keys
        self.is_user = name == "user"

    def argv(self) -> list[int]:
        """Its arguments to the Lua scripts: its limits, and whether it is the user's own."""
        return [*script_args(self.limits), 1 if self.is_user else 0]


class Admission:
    """An admitted request's hold on its quotas, until it is settled."""

    __slots__ = ("headers", "masks", "member", "reserved", "scopes", "settled", "user")

    def __init__(
        self,
        member: str,
        user: str,
        scopes: list[QuotaScope],
        reserved: int,
        admitted: Admitted | None = None,
    ) -> None:
        """`admitted`: admit.lua's answer; None when it is unknown (the call timed out)."""
        self.member, self.user, self.scopes, self.reserved = member, user, scopes, reserved
        self.masks = admitted.masks if admitted else []
        self.headers = window_headers(*admitted.window) if admitted else []
        self.settled = False


class Limiter:
    """Admission and settlement of requests against quotas kept in Redis."""

    def __init__(
        self,
        store: RedisStore,
        keys: RedisKeys,
        settings: LimitsSettings,
        fail_open: bool,
        log: Any,
        metrics: Metrics,
        batch: ScriptBatcher,
    ) -> None:
        self._store, self._keys, self._settings = store, keys, settings
        self._policy = (
            metrics.policy("limits", "fail_open", "served")
            if fail_open
            else metrics.policy("limits", "fail_closed", "refused")
        )
        self._fail_open = fail_open
        self._log = log
        self._admit = store.script("admit")
        self._settle = store.script("settle")
        self._renew = store.script("renew")
        self._peek = store.script("peek")
        self._batch = batch
        self._lease_ms = int(settings.concurrency_lease * 1000)
        self._holding: dict[str, Admission] = {}
        self._pending: set[asyncio.Task[None]] = set()
        self.policy_uses = 0
        """Requests forwarded without a quota check because Redis was unreachable."""

    def scopes(self, identity: Identity, model: str) -> list[QuotaScope]:
        """Every scope that applies to `identity` calling `model`."""
        tier = self._tier(identity)
        user = identity.user
        found = [QuotaScope("user", f"user {user}", tier, self._keys.scope(user, "user"))]
        if identity.key_limits is not None and identity.key_id is not None:
            found.append(
                QuotaScope(
                    f"key:{identity.key_id}",
                    f"API key {identity.key_id}",
                    identity.key_limits,
                    self._keys.scope(user, f"key:{identity.key_id}"),
                )
            )
        per_model = tier.models.get(model)
        if per_model is not None:
            found.append(self._model_scope(user, model, per_model))
        return found

    def _tier(self, identity: Identity) -> TierSettings:
        tiers = self._settings.tiers
        # a key may name a tier since removed from the configuration: the default applies
        return tiers.get(identity.tier or "") or tiers[self._settings.default_tier]

    def _model_scope(self, user: str, model: str, limits: QuotaLimits) -> QuotaScope:
        return QuotaScope(
            f"model:{model}",
            f"model {model} for user {user}",
            limits,
            self._keys.scope(user, f"model:{model}"),
        )

    async def peek(self, identity: Identity) -> list[dict[str, Any]]:
        """What each scope of `identity` has used of its limits and what remains, changing
        nothing: the user, the key, and every model its tier limits (that the key may use)."""
        scopes = self.scopes(identity, "")
        for model, limits in sorted(self._tier(identity).models.items()):
            if identity.models is None or model in identity.models:
                scopes.append(self._model_scope(identity.user, model, limits))
        keys = self._keys.limiter(identity.user)
        argv: list[Any] = ["", len(scopes)]
        for scope in scopes:
            keys.extend(scope.keys)
            argv.extend(scope.argv())
        figures: list[Any] = await self._store.call(
            lambda r: self._peek(keys=keys, args=argv, client=r), "peek"
        )
        rows = peek_reply(figures, len(scopes))
        return [
            {"scope": scope.name, "limits": shown}
            for scope, shown in zip(scopes, rows, strict=True)
        ]

    async def admit(self, identity: Identity, model: str, estimate: int) -> Admission | None:
        """Reserve a place for one request, or raise 429; None when admitted by policy."""
        scopes = self.scopes(identity, model)
        member = os.urandom(12).hex()
        keys = self._keys.limiter(identity.user)
        argv: list[Any] = [member, estimate, "", self._lease_ms, len(scopes)]
        for scope in scopes:
            keys.extend(scope.keys)
            argv.extend(scope.argv())

        def orphaned(result: list[Any]) -> None:
            """Admitted after its caller left (cancelled): give the reservation back."""
            reply = admit_reply(result, len(scopes))
            if isinstance(reply, Admitted):
                self.settle(Admission(member, identity.user, scopes, estimate, reply), 0)

        pending = self._batch.run(self._admit, keys, argv, orphaned)
        try:
            result = await pending
        except asyncio.CancelledError:
            # cancelled after the answer came but before this resumed: no orphan callback then
            if pending.done() and not pending.cancelled() and pending.exception() is None:
                orphaned(pending.result())
            raise
        except RedisUnavailable as exc:
            if exc.maybe_ran:
                # A timeout: Redis may have run the script even so. Undo it if it did, once
                # Redis answers again; settling an admission that never happened does nothing.
                self.settle(Admission(member, identity.user, scopes, estimate), 0)
            self.apply_policy(identity)
            return None
        reply = admit_reply(result, len(scopes))
        if isinstance(reply, Rejected):
            scope = scopes[reply.scope]
            raise rejection(reply, scope.description, scope.name.split(":", 1)[0])
        admission = Admission(member, identity.user, scopes, estimate, reply)
        if any(mask & SLOT for mask in admission.masks):
            self._holding[member] = admission
        return admission

    def settle(self, admission: Admission, tokens: int) -> None:
        """Charge `tokens` for an admitted request and free its slot, in the background."""
        if admission.settled:
            return
        admission.settled = True
        task = asyncio.get_running_loop().create_task(self._write_settlement(admission, tokens))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def drain(self) -> None:
        """Wait for the settlements still being written (shutdown)."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        await self._batch.drain()

    async def _write_settlement(self, admission: Admission, tokens: int) -> None:
        """Settle, retrying: settle.lua applies a settlement once however often it is sent."""
        keys = self._keys.limiter(admission.user)
        for scope in admission.scopes:
            keys.extend(scope.keys)
        argv: list[Any] = [admission.member, tokens, "", len(admission.scopes)]
        for pause in (*_SETTLE_RETRY_PAUSES, None):
            try:
                await self._batch.run(self._settle, keys, argv)
                break
            except RedisUnavailable:
                if pause is None:
                    self._log.error(
                        "settle_failed",
                        user=admission.user,
                        tokens=tokens,
                        reserved=admission.reserved,
                        note="the reservation stands; the concurrency slot expires with its lease",
                    )
                    break
                await asyncio.sleep(pause)
        self._holding.pop(admission.member, None)

    async def renew_leases(self) -> None:
        """Extend the concurrency leases of the requests this replica is running; forever."""
        interval = self._settings.concurrency_lease / 3
        while True:
            await asyncio.sleep(interval)
            holding = list(self._holding.values())
            if not holding:
                continue

            renewals = []
            for admission in holding:
                conc = [
                    s.keys[4]
                    for s, mask in zip(admission.scopes, admission.masks, strict=True)
                    if mask & SLOT
                ]
                if conc:
                    args = [admission.member, self._lease_ms, ""]
                    renewals.append(self._batch.run(self._renew, conc, args))
            # Sent together, each to the node of its user. A failure is logged by the store;
            # leases are long enough to survive a blip.
            await asyncio.gather(*renewals, return_exceptions=True)

    async def overrides(self, user: str) -> QuotaLimits:
        """The admin's overrides of `user`'s limits (those of its tier where none is set)."""
        name = self._keys.user_override(user)
        fields: Any = await self._store.call(lambda r: r.hgetall(name), "limits")
        return from_override(fields)  # bytes to bytes: the client decodes no replies

    async def set_overrides(self, user: str, limits: QuotaLimits) -> None:
        """Replace `user`'s overrides; every replica applies them from its next request."""
        name, mapping = self._keys.user_override(user), to_override(limits)

        async def write(r: Any) -> None:
            pipe = r.pipeline(transaction=True)
            pipe.delete(name)
            if mapping:
                pipe.hset(name, mapping=mapping)
            await pipe.execute()

        await self._store.call(write, "limits")

    async def clear_overrides(self, user: str) -> None:
        """`user`'s tier decides its limits again."""
        name = self._keys.user_override(user)
        await self._store.call(lambda r: r.delete(name), "limits")

    def apply_policy(self, identity: Identity) -> None:
        """Redis cannot be asked: forward without a quota (fail_open) or answer 503."""
        self.policy_uses += 1
        self._policy.inc()
        policy = "fail_open" if self._fail_open else "fail_closed"
        self._log.warning("ratelimit_policy_used", policy=policy, user=identity.user)
        if self._fail_open:
            return
        raise ServiceUnavailable(
            "The gateway cannot check quotas right now; retry shortly.",
            code="quota_unavailable",
            headers={"retry-after": "1"},
        )


def estimate_tokens(body: bytes, max_output_tokens: int | None, default_output: int) -> int:
    """A generous estimate of a request's tokens: its input, plus its output."""
    return estimate_input_tokens(len(body)) + (max_output_tokens or default_output)
