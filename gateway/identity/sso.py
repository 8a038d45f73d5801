"""OIDC bearer tokens (JWT) from the organization's identity provider, verified locally.

The gateway accepts a signed token instead of an API key, so users of the organization's SSO need
no key of their own. Verification never calls the identity provider per request: its signing keys
(the JWKS) are fetched once, cached, and fetched again only when they age out or a token names a
key the cache does not hold (the provider rotated its keys).

Security choices, each against a known JWT pitfall:

* the header's ``alg`` must be one of ``SsoSettings.algorithms`` before anything is looked up, so
  ``none`` and every ``HS*`` (an RSA public key used as an HMAC secret) are refused outright;
* each published key is bound to the algorithms of its own type (RSA keys to ``RS*``/``PS*``, an
  EC key to the ``ES*`` of its curve, and only to its declared ``alg`` when it has one), so a token
  cannot choose how a key is interpreted;
* symmetric (``oct``), encryption-only and private keys in the JWKS are ignored;
* unknown ``kid`` values refetch the JWKS at most once per `MIN_REFETCH_SECONDS`, and concurrent
  callers share one fetch, so a flood of made-up ``kid`` values cannot hammer the provider;
* the token itself is never logged nor put in an exception: rejections carry a short reason.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import re
import time
from collections.abc import Callable, Mapping
from typing import Any, Final, NamedTuple

import httpx
import jwt
import msgspec
import structlog
from jwt.types import Options

from ..settings import SsoSettings

MIN_REFETCH_SECONDS: Final = 10.0
"""Shortest interval between two JWKS fetches other than the first one."""
FETCH_TIMEOUT_SECONDS: Final = 5.0
"""A provider slower than this counts as down; requests wait for it at most this long."""
MAX_JWKS_BYTES: Final = 1024 * 1024
"""A key set is a few KiB; a larger answer is a misconfigured URL, not a key set."""
MAX_TOKEN_CHARS: Final = 16 * 1024
"""Longer bearer values are refused before any parsing, as a cheap guard against abuse."""

_SEGMENT: Final = re.compile(r"[A-Za-z0-9_-]*")
_RSA_ALGORITHMS: Final = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_ALGORITHMS: Final = (("P-256", "ES256"), ("P-384", "ES384"), ("P-521", "ES512"))
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


class _Key(NamedTuple):
    """One usable signing key of the JWKS, loaded once per algorithm it may verify."""

    kid: str | None
    by_algorithm: Mapping[str, jwt.PyJWK]


class _JwksError(Exception):
    """The JWKS answer is unusable (status, size, JSON shape, no usable key)."""


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


def _algorithms_of(jwk: Mapping[str, Any]) -> frozenset[str]:
    """Algorithms a key may verify, by its type and curve, narrowed to its declared ``alg``.

    Binding the algorithm to the key (not to the token's header) is what prevents a token from
    making the verifier interpret a key the wrong way.
    """
    kty, crv = jwk.get("kty"), jwk.get("crv")
    if kty == "RSA":
        family = _RSA_ALGORITHMS
    elif kty == "EC":
        family = frozenset(alg for curve, alg in _EC_ALGORITHMS if curve == crv)
    else:
        family = frozenset()
    declared = jwk.get("alg")
    if declared is None:
        return family
    return frozenset(alg for alg in family if alg == declared)


def _load_key(entry: object, allowed: frozenset[str]) -> _Key | None:
    """The key of one JWKS entry, or None when it must not or cannot be used for signatures.

    Skipped rather than fatal, so one exotic key does not disable SSO: non-objects, encryption
    keys (``use`` other than ``sig``), private keys (``d``: a published private key is a leak,
    not a verification key), symmetric and unknown key types, and keys PyJWT cannot load.
    """
    if not isinstance(entry, dict) or entry.get("use", "sig") != "sig" or "d" in entry:
        return None
    kid = entry.get("kid")
    if kid is not None and not isinstance(kid, str):
        return None
    try:
        by_algorithm = {
            alg: jwt.PyJWK(entry, algorithm=alg) for alg in sorted(_algorithms_of(entry) & allowed)
        }
    except (jwt.PyJWTError, ValueError, TypeError, KeyError):
        return None
    return _Key(kid, by_algorithm) if by_algorithm else None


def _parse_jwks(body: bytes, allowed: frozenset[str]) -> tuple[_Key, ...]:
    """The usable keys of a JWKS document.

    A document without any usable key is an error rather than an empty set: a provider briefly
    publishing garbage must not lock everyone out while the previous keys are still cached.
    """
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as error:
        raise _JwksError("the answer is not JSON") from error
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise _JwksError('the answer has no "keys" list')
    keys = tuple(key for key in (_load_key(entry, allowed) for entry in entries) if key)
    if not keys:
        raise _JwksError("the key set holds no usable signing key")
    return keys


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
    """Verifies tokens against the provider's JWKS, fetched with httpx and cached.

    Not thread-safe: one instance per event loop, opened once and closed at shutdown.
    """

    def __init__(self, settings: SsoSettings, *, now: Callable[[], float] = time.time) -> None:
        """`now`: the clock for token times, the JWKS cache and the refetch rate limit."""
        self._settings = settings
        self._now = now
        self._allowed = frozenset(settings.algorithms)
        self._client: httpx.AsyncClient | None = None
        self._keys: tuple[_Key, ...] | None = None
        self._fetched_at = -math.inf
        self._attempted_at = -math.inf
        self._inflight: asyncio.Task[None] | None = None
        self._log = structlog.get_logger("gateway.sso")

    async def open(self) -> None:
        """Create the HTTP client; the JWKS is fetched at the first token, not here.

        Not fetching here keeps startup independent of the identity provider being up.
        """
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=FETCH_TIMEOUT_SECONDS, headers={"Accept": "application/json"}
            )

    async def close(self) -> None:
        """Stop a fetch in progress and close the HTTP client."""
        task, self._inflight = self._inflight, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def verify(self, token: str) -> SsoIdentity:
        """The identity a valid token speaks for; `SsoRejected` with the reason otherwise."""
        header = _unverified_header(token)
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self._allowed:
            raise SsoRejected("algorithm_not_allowed")
        key = (await self._key(header.get("kid"))).by_algorithm.get(algorithm)
        if key is None:
            raise SsoRejected("algorithm_not_allowed")
        claims = self._decode(token, key)
        self._check_times(claims)
        return self._identity(claims)

    async def _key(self, kid: str | None) -> _Key:
        """The cached key named `kid`, refreshing the cache when it is old or lacks that key.

        A token without ``kid`` is accepted only while the key set holds a single key, the one
        case where the choice is unambiguous.
        """
        age = self._now() - self._fetched_at
        if self._keys is None or not 0 <= age < self._settings.jwks_cache_seconds:
            await self._refresh()
        key = self._find(kid)
        if key is None and kid is not None:
            await self._refresh()
            key = self._find(kid)
        if key is not None:
            return key
        raise SsoRejected("jwks_unavailable" if self._keys is None else "unknown_kid")

    def _find(self, kid: str | None) -> _Key | None:
        """The cached key named `kid`; for no `kid`, the only key when there is exactly one."""
        keys = self._keys or ()
        if kid is None:
            return keys[0] if len(keys) == 1 else None
        return next((key for key in keys if key.kid == kid), None)

    async def _refresh(self) -> None:
        """Fetch the JWKS, or join the fetch in progress, unless one was attempted recently.

        The fetch runs as its own task so that a caller giving up (its client went away) does
        not cancel it for the others waiting on it. A failed fetch keeps the cached keys.
        """
        if self._inflight is None:
            elapsed = self._now() - self._attempted_at
            if 0 <= elapsed < MIN_REFETCH_SECONDS:
                return
            self._attempted_at = self._now()
            self._inflight = asyncio.create_task(self._fetch_and_store())
        await asyncio.shield(self._inflight)

    async def _fetch_and_store(self) -> None:
        """Replace the cached keys with freshly fetched ones; on failure log and keep them."""
        try:
            async with asyncio.timeout(FETCH_TIMEOUT_SECONDS):  # httpx's is per read: bound it all
                keys = await self._fetch()
        except (httpx.HTTPError, httpx.InvalidURL, _JwksError, TimeoutError) as error:
            self._log.warning(
                "sso_jwks_fetch_failed",
                jwks_url=self._settings.jwks_url,
                error=str(error) or type(error).__name__,
                using_cached_keys=self._keys is not None,
            )
        else:
            self._keys, self._fetched_at = keys, self._now()
            self._log.info("sso_jwks_fetched", jwks_url=self._settings.jwks_url, keys=len(keys))
        finally:
            self._inflight = None

    async def _fetch(self) -> tuple[_Key, ...]:
        """GET the JWKS, reading at most `MAX_JWKS_BYTES`."""
        if self._client is None:
            raise RuntimeError("JwtVerifier.open() must be awaited before verify()")
        async with self._client.stream("GET", self._settings.jwks_url) as response:
            if response.status_code != 200:
                raise _JwksError(f"HTTP {response.status_code}")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise _JwksError(f"the answer exceeds {MAX_JWKS_BYTES} bytes")
        return _parse_jwks(bytes(body), self._allowed)

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
