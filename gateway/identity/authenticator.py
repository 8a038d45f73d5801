"""Who is calling: API keys (configured by hash or issued into Redis) and SSO tokens.

A replica keeps a key it looked up for `auth.key_cache_seconds` (at most 1 s): the hot path
then needs no Redis round trip for authentication, and a revocation written to Redis is seen by
every replica within that time. While Redis is unreachable under ``fail_open``, keys seen in
the last hour keep working (nothing can be revoked while Redis is down anyway); under
``fail_closed`` a key that must be looked up gets 503.

Every refusal says the same thing, whether the key exists or not, and takes as long: an id
without a record is checked against a decoy (`KeyStore.find`). Where the credential is read from
(three headers, never the URL) is `credentials`.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Any

import msgspec
from litestar.types import Scope

from ..errors import AuthenticationFailed, ServiceUnavailable
from ..metrics import Metrics
from ..settings import AuthSettings, QuotaLimits
from ..state import RedisUnavailable
from .credentials import presented, refuse_query_credentials
from .keys import KeyHasher, KeyRecord, KeyStore, key_id_of
from .sso import JwtVerifier, SsoRejected, looks_like_jwt

STALE_FOR = 3600.0
"""Seconds a key looked up may still be used under ``fail_open`` while Redis is unreachable:
longer than any failover, short enough that a replica does not serve a key it has not been
able to check for hours."""
CACHE_ENTRIES = 20_000
_BAD_KEY = "Incorrect API key provided. Check the key, or ask an administrator for a new one."


class Identity(msgspec.Struct, frozen=True):
    """An authenticated caller."""

    user: str
    key_id: str | None
    """The API key's id, or ``sso`` for an SSO token."""
    team: str | None = None
    tier: str | None = None
    models: frozenset[str] | None = None
    """Models this caller may use; all when None."""
    key_limits: QuotaLimits | None = None


class _Cached(msgspec.Struct):
    fresh_until: float
    stale_until: float
    identity: Identity | None


class Authenticator:
    """Turns a request's credentials into an `Identity`, or refuses it."""

    def __init__(
        self,
        settings: AuthSettings,
        keystore: KeyStore | None,
        fail_open: bool,
        log: Any,
        metrics: Metrics,
    ) -> None:
        self._settings = settings
        policy = "fail_open" if fail_open else "fail_closed"
        self._served = metrics.policy("auth", policy, "served")
        self._refused = metrics.policy("auth", policy, "refused")
        self._hasher = KeyHasher(settings.pepper)
        self._keystore = keystore
        self._fail_open = fail_open
        self._log = log
        self._configured = {
            k.hash: Identity(
                user=k.user,
                key_id=k.id,
                team=k.team,
                tier=k.tier,
                models=frozenset(k.models) if k.models is not None else None,
            )
            for k in settings.keys
        }
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        self._sso = JwtVerifier(settings.sso) if settings.sso is not None else None
        self._touching: set[asyncio.Task[None]] = set()
        self._lookups: dict[str, asyncio.Future[KeyRecord]] = {}
        self.policy_uses = 0
        """Requests authenticated from a stale cache entry because Redis was unreachable."""

    async def open(self) -> None:
        if self._sso is not None:
            await self._sso.open()

    async def close(self) -> None:
        if self._sso is not None:
            await self._sso.close()

    async def authenticate(self, scope: Scope) -> tuple[Identity, bool]:
        """The caller of `scope`, or `AuthenticationFailed` (401), or `InvalidRequest` (400)
        for a credential in the URL or two different ones; and whether Redis just failed to
        answer for it (the key came from the cache under ``fail_open``): the request then skips
        Redis for its quota too, instead of waiting a second timeout."""
        refuse_query_credentials(scope, self._configured_key)
        credential = presented(scope)
        digest = self._hasher.digest(credential)
        configured = self._configured.get(digest)
        if configured is not None:
            return configured, False
        key_id = key_id_of(credential)
        degraded = False
        if key_id is not None and self._keystore is not None:
            identity, degraded = await self._issued_key(digest, key_id)
        elif self._sso is not None and looks_like_jwt(credential):
            identity = await self._sso_token(credential)
        else:
            identity = None
        if identity is None:
            raise AuthenticationFailed(_BAD_KEY)
        return identity, degraded

    def _configured_key(self, value: str) -> bool:
        """Is `value` one of the keys configured by digest (any format, so only its digest
        tells)?"""
        return bool(self._configured) and self._hasher.digest(value) in self._configured

    async def _issued_key(self, digest: str, key_id: str) -> tuple[Identity | None, bool]:
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and now < cached.fresh_until:
            return cached.identity, False
        assert self._keystore is not None
        try:
            record = await self._lookup(key_id)
        except RedisUnavailable:
            if self._fail_open and cached is not None and now < cached.stale_until:
                self.policy_uses += 1
                self._served.inc()
                self._log.warning("auth_policy_used", policy="fail_open", key_id=key_id)
                return cached.identity, True
            self._refused.inc()  # fail_closed, or fail_open with nothing to go by
            raise ServiceUnavailable(
                "The gateway cannot check credentials right now; retry shortly.",
                code="auth_unavailable",
                headers={"retry-after": "1"},
            ) from None
        identity = _identity(record, digest)
        self._remember(digest, identity, now)
        if identity is not None:
            self._touch(key_id)
        return identity, False

    async def _lookup(self, key_id: str) -> KeyRecord:
        """One Redis read per key at a time: a burst on a cold key shares the first lookup."""
        pending = self._lookups.get(key_id)
        if pending is None:
            assert self._keystore is not None
            pending = asyncio.ensure_future(self._keystore.find(key_id))
            self._lookups[key_id] = pending
            pending.add_done_callback(lambda _: self._lookups.pop(key_id, None))
        return await asyncio.shield(pending)

    async def _sso_token(self, token: str) -> Identity | None:
        assert self._sso is not None
        try:
            found = await self._sso.verify(token)
        except SsoRejected as exc:
            self._log.info("sso_rejected", reason=exc.reason)
            return None
        return Identity(user=found.user, key_id="sso", tier=found.tier)

    def _remember(self, digest: str, identity: Identity | None, now: float) -> None:
        ttl = self._settings.key_cache_seconds
        self._cache[digest] = _Cached(now + ttl, now + STALE_FOR, identity)
        self._cache.move_to_end(digest)
        while len(self._cache) > CACHE_ENTRIES:
            self._cache.popitem(last=False)

    def _touch(self, key_id: str) -> None:
        """Record the key's last use in the background (once per cache period at most)."""
        assert self._keystore is not None
        task = asyncio.get_running_loop().create_task(self._keystore.touch(key_id, time.time()))
        self._touching.add(task)
        task.add_done_callback(self._touched)

    def _touched(self, task: asyncio.Task[None]) -> None:
        self._touching.discard(task)
        if not task.cancelled():
            task.exception()  # RedisStore logged it; the last use is informative only


def _identity(record: KeyRecord, digest: str) -> Identity | None:
    """The identity a record (or the decoy) grants the key of `digest`, if it matches and is
    usable."""
    if not KeyHasher.same(digest, record.hash) or not record.usable(time.time()):
        return None
    return Identity(
        user=record.user,
        key_id=record.id,
        team=record.team,
        tier=record.tier,
        models=frozenset(record.models) if record.models is not None else None,
        key_limits=record.limits,
    )
