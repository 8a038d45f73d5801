"""The admin API: issue, list, show, change and revoke API keys; override users' limits.

Served under ``/admin`` only when ``auth.admin_key`` is set, and only to a request presenting
that credential (``Authorization: Bearer <admin key>``, `gateway.identity.admin_guard`). A
created key is in the response to its creation and nowhere else, ever.

Bodies are decoded here (`_body`), not by Litestar: Litestar takes a body field that fails
validation and shares its name with one of its dependencies (``models`` did) for a broken
dependency, and answers 500. Decoded here, a field of the wrong type or range is a 400 naming
it, whatever the dependencies are called.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from litestar import Controller, Request, delete, get, patch, post, put

from ..asgi import decode_body
from ..errors import InvalidRequest, NotFound
from ..identity import KeyRecord, KeyStore
from ..quotas import Limiter
from ..settings import QuotaLimits, Settings

_User = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
_UnixTime = Annotated[float, msgspec.Meta(ge=0, le=4_102_444_800)]  # until 2100


class KeyCreate(msgspec.Struct, forbid_unknown_fields=True):
    user: _User
    team: str | None = None
    tier: str | None = None
    models: list[str] | None = None
    expires_at: _UnixTime | None = None
    """Unix time; or give `expires_in_days`."""
    expires_in_days: Annotated[float, msgspec.Meta(gt=0, le=36_500)] | None = None
    limits: QuotaLimits | None = None


class KeyUpdate(msgspec.Struct, forbid_unknown_fields=True):
    """Fields to change; an absent field is left as it is, ``null`` clears it."""

    team: str | msgspec.UnsetType | None = msgspec.UNSET
    tier: str | msgspec.UnsetType | None = msgspec.UNSET
    models: list[str] | msgspec.UnsetType | None = msgspec.UNSET
    expires_at: _UnixTime | msgspec.UnsetType | None = msgspec.UNSET
    limits: QuotaLimits | msgspec.UnsetType | None = msgspec.UNSET


class KeyView(msgspec.Struct):
    id: str
    user: str
    status: Literal["active", "revoked", "expired"]
    created_at: float
    team: str | None = None
    tier: str | None = None
    models: tuple[str, ...] | None = None
    expires_at: float | None = None
    revoked_at: float | None = None
    last_used_at: float | None = None
    limits: QuotaLimits | None = None


class CreatedKey(KeyView, kw_only=True):
    key: str
    """The API key itself: shown here once, stored nowhere."""


class KeyList(msgspec.Struct):
    data: list[KeyView]
    object: str = "list"


class UserLimits(msgspec.Struct):
    user: str
    overrides: QuotaLimits
    """Replace the tier's limits for this user; an absent limit keeps the tier's."""


class AdminController(Controller):
    """/admin: keys and limits."""

    path = "/admin"

    @post("/keys", status_code=201)
    async def create_key(
        self, keystore: KeyStore, settings: Settings, log: Any, request: Request[Any, Any, Any]
    ) -> CreatedKey:
        """Issue a key; the response holds the key, which is never shown again."""
        data = await _body(request, _key_create)
        _check_choices(settings, data.tier, data.models)
        expires_at = data.expires_at
        if data.expires_in_days is not None:
            expires_at = time.time() + data.expires_in_days * 86400
        record, key = await keystore.create(
            data.user,
            team=data.team,
            tier=data.tier,
            models=tuple(data.models) if data.models is not None else None,
            expires_at=expires_at,
            limits=data.limits,
        )
        log.info("key_created", key_id=record.id, owner=record.user)
        view = _view(record)
        return CreatedKey(**msgspec.structs.asdict(view), key=key)

    @get("/keys")
    async def list_keys(self, keystore: KeyStore, user: str | None = None) -> KeyList:
        """Every key (of `user`, when given); never the keys themselves."""
        return KeyList([_view(r) for r in await keystore.list(user)])

    @get("/keys/{key_id:str}")
    async def show_key(self, keystore: KeyStore, key_id: str) -> KeyView:
        return _view(await _get(keystore, key_id))

    @patch("/keys/{key_id:str}")
    async def update_key(
        self,
        keystore: KeyStore,
        settings: Settings,
        log: Any,
        key_id: str,
        request: Request[Any, Any, Any],
    ) -> KeyView:
        """Change a key's limits, models, tier, team or expiry."""
        data = await _body(request, _key_update)
        record = await _get(keystore, key_id)
        changes = {
            f.name: getattr(data, f.name)
            for f in msgspec.structs.fields(data)
            if getattr(data, f.name) is not msgspec.UNSET
        }
        if isinstance(changes.get("models"), list):
            changes["models"] = tuple(changes["models"])
        _check_choices(settings, changes.get("tier"), changes.get("models"))
        updated = msgspec.structs.replace(record, **changes)
        await keystore.update(updated)
        log.info("key_updated", key_id=key_id, fields=sorted(changes))
        return _view(updated)

    @delete("/keys/{key_id:str}", status_code=200)
    async def revoke_key(self, keystore: KeyStore, log: Any, key_id: str) -> KeyView:
        """Revoke a key: every replica refuses it within `auth.key_cache_seconds`."""
        record = await _get(keystore, key_id)
        if record.revoked_at is None:
            await keystore.revoke(key_id, time.time())
            record = await _get(keystore, key_id)
            log.info("key_revoked", key_id=key_id)
        return _view(record)

    @get("/users/{user:str}/limits")
    async def show_limits(self, limiter: Limiter, user: str) -> UserLimits:
        return UserLimits(user, await limiter.overrides(user))

    @put("/users/{user:str}/limits")
    async def set_limits(
        self, limiter: Limiter, log: Any, user: str, request: Request[Any, Any, Any]
    ) -> UserLimits:
        """Replace `user`'s overrides; they apply to the next request on every replica."""
        data = await _body(request, _limits)
        await limiter.set_overrides(user, data)
        given = {k: v for k, v in msgspec.structs.asdict(data).items() if v is not None}
        log.info("limits_updated", owner=user, limits=given)
        return UserLimits(user, data)

    @delete("/users/{user:str}/limits", status_code=200)
    async def clear_limits(self, limiter: Limiter, user: str) -> UserLimits:
        await limiter.clear_overrides(user)
        return UserLimits(user, QuotaLimits())


_key_create = msgspec.json.Decoder(KeyCreate)
_key_update = msgspec.json.Decoder(KeyUpdate)
_limits = msgspec.json.Decoder(QuotaLimits)
T = TypeVar("T")


async def _body(request: Request[Any, Any, Any], decoder: msgspec.json.Decoder[T]) -> T:
    """The request's JSON body, typed; a 400 naming the field otherwise."""
    return decode_body(decoder, await request.body())


async def _get(keystore: KeyStore, key_id: str) -> KeyRecord:
    record: KeyRecord | None = await keystore.get(key_id)
    if record is None:
        raise NotFound(f"No API key with id `{key_id}`.", code="key_not_found")
    return record


def _check_choices(settings: Settings, tier: str | None, models: Any) -> None:
    tiers = settings.limits.tiers
    if tier is not None and tier not in tiers:
        raise InvalidRequest(
            f"Unknown tier `{tier}`; expected one of {', '.join(sorted(tiers))}.", param="tier"
        )
    known = {m.name for m in settings.models}
    for model in models or ():
        if model not in known:
            raise InvalidRequest(f"Unknown model `{model}`.", param="models")


def _view(record: KeyRecord) -> KeyView:
    if record.revoked_at is not None:
        status: Literal["active", "revoked", "expired"] = "revoked"
    elif record.expires_at is not None and record.expires_at <= time.time():
        status = "expired"
    else:
        status = "active"
    # every field of the view but `status` is the record's own (the record's `hash` is not one)
    shown = {name: getattr(record, name) for name in KeyView.__struct_fields__ if name != "status"}
    return KeyView(status=status, **shown)
