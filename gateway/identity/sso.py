"""OIDC bearer tokens (JWT) from the organization's identity provider, verified locally.

The gateway accepts a signed token instead of an API key, so users of the organization's SSO need
no key of their own. Verification never calls the identity provider per request: its signing keys
(the JWKS) are fetched once and cached (`jwks.py`, which also binds each key to its algorithms).

Security choices, each against a known JWT pitfall (those about the keys are `jwks.py`'s):

* the header's ``alg`` must be one of ``SsoSettings.algorithms`` before anything is looked up, so
  ``none`` and every ``HS*`` (an RSA public key used as an HMAC secret) are refused outright;
* the token itself is never logged nor put in an exception: rejections carry a short reason.
"""

from __future__ import annotations

import base64
import json
import math
import re
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

import jwt
import msgspec
from jwt.types import Options

from ..settings import SsoSettings
from .jwks import Jwks

MAX_TOKEN_CHARS: Final = 16 * 1024
"""Longer bearer values are refused before any parsing, as a cheap guard against abuse."""

_SEGMENT: Final = re.compile(r"[A-Za-z0-9_-]*")
_REASONS: Final[tuple[tuple[type[jwt.PyJWTError], str], ...]] = (
    # Subclasses before their bases: InvalidSignatureError is a DecodeError, and so on.
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.ImmatureSignatureError, "not_yet_valid"),
    (jwt.InvalidIssuerError, "wrong_issuer"),
    (jwt.InvalidAudienceError, "wrong_audience"),
    (jwt.MissingRequiredClaimError, "missing_claim"),
    (jwt.InvalidSignatureError, "bad_signature"),
    (jwt.InvalidAlgorithmError, "algorithm_not_allowed"),
    (jwt.InvalidKeyError, "weak_key"),
    (jwt.InvalidTokenError, "malformed"),
)


class SsoRejected(Exception):
    """Token refused.

    `reason` is a short machine-readable string, safe to log (it never contains the token):
    ``malformed``, ``bad_signature``, ``expired``, ``not_yet_valid``, ``wrong_issuer``,
    ``wrong_audience``, ``missing_claim``, ``unknown_kid``, ``algorithm_not_allowed``,
    ``weak_key``, ``missing_user_claim``, ``jwks_unavailable`` or ``invalid``.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SsoIdentity(msgspec.Struct, frozen=True):
    """Who a verified token speaks for."""

    user: str
    """The `user_claim` claim."""
    tier: str | None
    """From `tier_claim` through the `tiers` map; None when nothing matches or no tier_claim."""


def looks_like_jwt(token: str) -> bool:
    """Whether a bearer value should be verified as a JWT rather than looked up as an API key.

    Cheap and without verification: three base64url segments separated by dots whose first one
    decodes to a JSON object with ``alg``. Gateway API keys (``sk-...``) never pass.
    """
    if len(token) > MAX_TOKEN_CHARS or not token.isascii():
        return False
    segments = token.split(".")
    if len(segments) != 3 or not segments[0] or not segments[1]:
        return False
    if not all(_SEGMENT.fullmatch(segment) for segment in segments):
        return False
    header = _decode_json_segment(segments[0])
    return isinstance(header, dict) and "alg" in header


def _decode_json_segment(segment: str) -> object:
    """The JSON value in a base64url segment, or None when it is not one."""
    try:
        return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, RecursionError):
        return None


def _unverified_header(token: str) -> dict[str, Any]:
    """The token's JOSE header, for choosing a key; nothing in it is trusted yet."""
    if len(token) > MAX_TOKEN_CHARS or not token.isascii():
        raise SsoRejected("malformed")
    try:
        return jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise SsoRejected("malformed") from None


def _reason(error: jwt.PyJWTError) -> str:
    """The rejection reason for a PyJWT error (whose message is not exposed)."""
    return next((reason for kind, reason in _REASONS if isinstance(error, kind)), "invalid")


def _numeric_date(claims: Mapping[str, Any], name: str) -> int | float | None:
    """A NumericDate claim, None when absent.

    Stricter than PyJWT: a string, a boolean or a non-finite number (``NaN`` would make every
    comparison false, hence a token that never expires) is malformed.
    """
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SsoRejected("malformed")
    if isinstance(value, float) and not math.isfinite(value):
        raise SsoRejected("malformed")
    return value


def _claim_values(value: object) -> tuple[str, ...]:
    """The strings of a claim that is a string or a list (other members are ignored)."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list):
        return tuple(item for item in value if isinstance(item, str))
    return ()


def _decode_options() -> Options:
    """PyJWT options: signature, ``iss`` and ``aud`` checked by PyJWT; times by the verifier.

    The times are checked against the verifier's own clock (injectable, for tests and for a
    consistent view of "now"), which PyJWT cannot use; ``sub`` and ``jti`` are not used.
    """
    return {
        "require": ["exp", "iss", "aud"],
        "verify_exp": False,
        "verify_nbf": False,
        "verify_iat": False,
        "verify_sub": False,
        "verify_jti": False,
        "enforce_minimum_key_length": True,
    }


class JwtVerifier:
    """Verifies tokens against the provider's JWKS (a `Jwks`: fetched with httpx and cached).

    Not thread-safe: one instance per event loop, opened once and closed at shutdown.
    """

    def __init__(self, settings: SsoSettings, *, now: Callable[[], float] = time.time) -> None:
        """`now`: the clock for token times, the JWKS cache and the refetch rate limit."""
        self._settings = settings
        self._now = now
        self._allowed = frozenset(settings.algorithms)
        self._jwks = Jwks(settings, self._allowed, now)

    async def open(self) -> None:
        """Open the key cache (`Jwks.open`: the JWKS is fetched at the first token)."""
        await self._jwks.open()

    async def close(self) -> None:
        """Close the key cache (`Jwks.close`)."""
        await self._jwks.close()

    async def verify(self, token: str) -> SsoIdentity:
        """The identity a valid token speaks for; `SsoRejected` with the reason otherwise."""
        header = _unverified_header(token)
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self._allowed:
            raise SsoRejected("algorithm_not_allowed")
        found = await self._jwks.key(header.get("kid"))
        if found is None:
            raise SsoRejected("unknown_kid" if self._jwks.loaded else "jwks_unavailable")
        key = found.by_algorithm.get(algorithm)
        if key is None:
            raise SsoRejected("algorithm_not_allowed")
        claims = self._decode(token, key)
        self._check_times(claims)
        return self._identity(claims)

    def _decode(self, token: str, key: jwt.PyJWK) -> dict[str, Any]:
        """The claims, once PyJWT checked the signature, ``iss``, ``aud`` and required claims."""
        settings = self._settings
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=list(settings.algorithms),
                issuer=settings.issuer,
                audience=settings.audience,
                leeway=settings.leeway,  # unused while PyJWT's time checks are off; see below
                options=_decode_options(),
            )
        except jwt.PyJWTError as error:
            raise SsoRejected(_reason(error)) from None
        return claims

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        """``exp``, ``nbf`` and ``iat`` against the verifier's clock, with `leeway` either way."""
        now, leeway = self._now(), self._settings.leeway
        expires = _numeric_date(claims, "exp")
        if expires is None:
            raise SsoRejected("missing_claim")
        if expires <= now - leeway:
            raise SsoRejected("expired")
        for name in ("nbf", "iat"):
            moment = _numeric_date(claims, name)
            if moment is not None and moment > now + leeway:
                raise SsoRejected("not_yet_valid")

    def _identity(self, claims: Mapping[str, Any]) -> SsoIdentity:
        """The user and, through the tier claim's first mapped value, the limits tier."""
        settings = self._settings
        user = claims.get(settings.user_claim)
        if not isinstance(user, str) or not user:
            raise SsoRejected("missing_user_claim")
        groups = _claim_values(claims.get(settings.tier_claim)) if settings.tier_claim else ()
        tier = next((settings.tiers[g] for g in groups if g in settings.tiers), None)
        return SsoIdentity(user=user, tier=tier)
