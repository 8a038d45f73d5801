"""Gateway-issued API keys: their format, their hash, and their records in Redis.

A key reads ``sk-gw-<key id>_<secret>``: the id (safe to log) says which record to fetch, the
secret is 32 bytes from the OS CSPRNG (256 bits). Only a digest of the whole key is stored,
HMAC-SHA-256 with the server-side pepper when one is configured, else SHA-256, and it is
compared in constant time. The key itself is shown once, when it is created.

Checking a key costs the same whether its id exists or not (`KeyStore.find`): an id without a
record is checked against a decoy record, decoded and compared like a real one, so the time of a
refusal does not tell a caller which ids exist (`python -m bench.key_timing` measures both).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from typing import Any

import msgspec

from ..settings import QuotaLimits
from ..state import RedisKeys, RedisStore

PREFIX = "sk-gw-"
_KEY = re.compile(r"^sk-gw-(k[a-z2-7]{12})_[A-Za-z0-9_-]{43}$")
_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
EXPIRED_RECORD_KEPT = 30 * 86400
"""Seconds an expired key's record stays readable (for audit) before Redis drops it."""


class KeyRecord(msgspec.Struct, omit_defaults=True):
    """What the gateway stores about one API key (never the key itself)."""

    id: str
    hash: str
    user: str
    created_at: float
    team: str | None = None
    tier: str | None = None
    models: tuple[str, ...] | None = None
    expires_at: float | None = None
    revoked_at: float | None = None
    limits: QuotaLimits | None = None
    last_used_at: float | None = None
    """Stored apart from the record (written without rewriting it); filled in on reads, like
    `revoked_at`, which no rewrite of the record may undo."""

    def usable(self, now: float) -> bool:
        """Neither revoked nor expired."""
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(KeyRecord)

_DECOY: tuple[bytes, bytes, None] = (
    _encoder.encode(
        KeyRecord(
            id="kdecoydecoyde",
            hash="z" * 64,  # a digest is hexadecimal: no key ever matches this one
            user="decoy@example.invalid",
            created_at=round(time.time(), 3),
            team="decoy",
        )
    ),
    str(round(time.time(), 3)).encode(),
    None,
)
"""What `KeyStore.find` decodes for an id without a record (record, last use, revocation),
shaped like a key in use: refusing an unknown id costs what refusing a known id's wrong secret
does."""


def new_key() -> tuple[str, str]:
    """A fresh (key id, key)."""
    key_id = "k" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(12))
    return key_id, f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def key_id_of(key: str) -> str | None:
    """The id inside a well-formed gateway key; None for anything else."""
    match = _KEY.match(key)
    return match.group(1) if match else None


class KeyHasher:
    """Digests of keys: HMAC-SHA-256 with the pepper, or SHA-256 without one."""

    __slots__ = ("_pepper",)

    def __init__(self, pepper: str | None) -> None:
        self._pepper = pepper.encode() if pepper else None

    def digest(self, key: str) -> str:
        if self._pepper is None:
            return hashlib.sha256(key.encode()).hexdigest()
        return hmac.new(self._pepper, key.encode(), hashlib.sha256).hexdigest()

    @staticmethod
    def same(digest: str, stored: str) -> bool:
        """Constant-time comparison of a key's digest with a stored one."""
        return hmac.compare_digest(digest, stored)


class KeyStore:
    """API key records in Redis: ``gw:key:{id}`` holds ``record`` (JSON) and ``last_used``."""

    def __init__(self, store: RedisStore, keys: RedisKeys, hasher: KeyHasher) -> None:
        self._store, self._keys, self._hasher = store, keys, hasher

    async def create(
        self,
        user: str,
        *,
        team: str | None = None,
        tier: str | None = None,
        models: tuple[str, ...] | None = None,
        expires_at: float | None = None,
        limits: QuotaLimits | None = None,
    ) -> tuple[KeyRecord, str]:
        """Issue a key; returns its record and the key, which is never available again."""
        key_id, key = new_key()
        record = KeyRecord(
            id=key_id,
            hash=self._hasher.digest(key),
            user=user,
            created_at=round(time.time(), 3),
            team=team,
            tier=tier,
            models=models,
            expires_at=expires_at,
            limits=limits,
        )
        await self._save(record, new=True)
        return record, key

    async def get(self, key_id: str) -> KeyRecord | None:
        """The record of `key_id`, with its last use; None if there is none."""
        raw, used, revoked = await self._read(key_id)
        return None if raw is None else _decoded(raw, used, revoked)

    async def find(self, key_id: str) -> KeyRecord:
        """The record to check a presented key against: `key_id`'s own or, when it has none,
        the decoy, decoded the same way.

        The read is HMGET, not HGETALL: Redis answers three values (or three nils) either way,
        and the client parses a reply of one shape; HGETALL's empty answer for an unknown id
        came back measurably sooner (`bench.key_timing`)."""
        raw, used, revoked = await self._read(key_id)
        if raw is None:
            raw, used, revoked = _DECOY
        return _decoded(raw, used, revoked)

    async def _read(self, key_id: str) -> tuple[bytes | None, bytes | None, bytes | None]:
        name = self._keys.key_record(key_id)
        values: list[Any] = await self._store.call(
            lambda r: r.hmget(name, "record", "last_used", "revoked"), "key_get"
        )
        return values[0], values[1], values[2]

    async def list(self, user: str | None = None) -> list[KeyRecord]:
        """Every record (of `user`, when given), oldest first."""
        index = self._keys.key_index()
        ids: set[Any] = await self._store.call(lambda r: r.smembers(index), "key_list")

        async def fetch(r: Any) -> list[dict[bytes, bytes]]:
            pipe = r.pipeline(transaction=False)
            for key_id in sorted(ids):
                pipe.hgetall(self._keys.key_record(key_id.decode()))
            return list(await pipe.execute())

        records = [_record(fields) for fields in await self._store.call(fetch, "key_list")]
        found = [r for r in records if r is not None and (user is None or r.user == user)]
        return sorted(found, key=lambda r: (r.created_at, r.id))

    async def update(self, record: KeyRecord) -> None:
        """Replace a record's limits, models, tier, team or expiry (never its revocation)."""
        await self._save(record, new=False)

    async def revoke(self, key_id: str, when: float) -> None:
        """Revoke a key: a field of its own, which no update of the record can undo."""
        name = self._keys.key_record(key_id)
        await self._store.call(lambda r: r.hsetnx(name, "revoked", str(round(when, 3))), "revoke")

    async def touch(self, key_id: str, when: float) -> None:
        """Note a use of the key (best effort, off the request path)."""
        name = self._keys.key_record(key_id)
        await self._store.call(lambda r: r.hset(name, "last_used", str(round(when, 3))), "touch")

    async def _save(self, record: KeyRecord, *, new: bool) -> None:
        name = self._keys.key_record(record.id)
        stored = msgspec.structs.replace(record, last_used_at=None, revoked_at=None)
        if new:  # listed first: an id listed without a record is skipped by `list`
            index = self._keys.key_index()
            await self._store.call(lambda r: r.sadd(index, record.id), "key_save")

        async def write(r: Any) -> None:
            # One key, so one Cluster slot: the record and its expiry change together.
            pipe = r.pipeline(transaction=True)
            pipe.hset(name, "record", _encoder.encode(stored))
            if record.expires_at is not None:  # kept from its expiry, or from now if past
                kept_from = max(record.expires_at, time.time())
                pipe.expireat(name, int(kept_from) + EXPIRED_RECORD_KEPT)
            else:
                pipe.persist(name)
            await pipe.execute()

        await self._store.call(write, "key_save")


def _record(fields: dict[Any, Any]) -> KeyRecord | None:
    raw = fields.get(b"record")
    if raw is None:
        return None
    return _decoded(raw, fields.get(b"last_used"), fields.get(b"revoked"))


def _decoded(raw: bytes, used: bytes | None, revoked: bytes | None) -> KeyRecord:
    record = _decoder.decode(raw)
    if used is not None:
        record.last_used_at = float(used)
    if revoked is not None:
        record.revoked_at = float(revoked)
    return record
