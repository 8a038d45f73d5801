"""The ``auth`` section: who may call, with which credential."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from .schema import PositiveFloat


class KeySettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An API key declared in the configuration file by its hash (see `gateway keys hash`)."""

    id: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    """Safe to log; names the key in logs and usage. Each id is listed once."""
    hash: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
    """SHA-256 (or, with `pepper`, HMAC-SHA-256) of the key, 64 hex digits, as
    ``gateway keys hash`` prints it from the key on stdin."""
    user: Annotated[str, msgspec.Meta(min_length=1)]
    """The user the key acts for: its requests count against this user's quotas and are
    recorded under this user's usage."""
    team: str | None = None
    """Team written in the key's request log lines and usage records."""
    tier: str | None = None
    """Limits tier, a key of ``limits.tiers``; default ``limits.default_tier``."""
    models: tuple[str, ...] | None = None
    """Models (as clients name them) this key may use; all when absent."""


class SsoSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """OIDC tokens (JWT) from the organization's identity provider, as bearer credentials."""

    issuer: str
    """Expected ``iss``."""
    audience: str
    """Expected ``aud`` (one of, when the token lists several)."""
    jwks_url: str
    """Where the provider publishes its signing keys (fetched at the first token, not at
    startup)."""
    user_claim: str = "sub"
    """Claim holding the user id (a non-empty string, or the token is refused)."""
    tier_claim: str | None = None
    """Claim (a string or a list, e.g. ``groups``) whose values pick the limits tier through
    `tiers`; none: every SSO user gets ``limits.default_tier``."""
    tiers: dict[str, str] = msgspec.field(default_factory=dict)
    """Map of `tier_claim` value → limits tier: the first of the token's values that is listed
    here picks the tier; when none is, ``limits.default_tier`` applies."""
    algorithms: tuple[Literal["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"], ...] = (
        "RS256",
        "ES256",
    )
    """Signature algorithms a token's ``alg`` may name (``none`` and ``HS*`` never can); each
    signing key is used only with the algorithms of its own type."""
    leeway: Annotated[float, msgspec.Meta(ge=0, le=300)] = 30.0
    """Clock skew tolerated on ``exp``, ``nbf`` and ``iat``, in seconds."""
    jwks_cache_seconds: PositiveFloat = 300.0
    """How long fetched signing keys are used before they are fetched again (a failed fetch
    keeps them); a token naming a key not among them fetches them at once, at most every 10 s."""


class AuthSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Who may call: gateway-issued API keys, SSO tokens, the admin credential."""

    enabled: bool = True
    """``false`` serves everyone without a credential, without quotas and without usage
    records, and connects to no Redis (never in production)."""
    pepper: str | None = None
    """Server-side secret mixed into stored key hashes (HMAC-SHA-256); plain SHA-256 without
    (an empty value is none). Changing it invalidates every key issued before. Give it as
    ``${GATEWAY_KEY_PEPPER}``."""
    admin_key: Annotated[str, msgspec.Meta(min_length=16)] | None = None
    """Credential of the ``/admin`` API (16 characters at least), sent as ``Authorization:
    Bearer``; the admin API is off when unset (or while `enabled` is ``false``). Give it as
    ``${GATEWAY_ADMIN_KEY}``."""
    key_cache_seconds: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.5
    """How long a replica reuses a key it looked up: the bound on how late it sees a revocation."""
    keys: tuple[KeySettings, ...] = ()
    """Bootstrap keys, by hash; they work even before anything is in Redis."""
    sso: SsoSettings | None = None
    """SSO tokens accepted besides API keys; none: API keys only."""
