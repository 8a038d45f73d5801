"""The identity provider's signing keys (its JWKS): fetched, bound to algorithms, cached.

Verifying a token never calls the identity provider: its keys are fetched once, cached, and
fetched again only when they age out or a token names a key the cache does not hold (the
provider rotated its keys). The choices about keys, each against a known JWT pitfall:

* each published key is bound to the algorithms of its own type (RSA keys to ``RS*``/``PS*``, an
  EC key to the ``ES*`` of its curve, and only to its declared ``alg`` when it has one), so a token
  cannot choose how a key is interpreted;
* symmetric (``oct``), encryption-only and private keys in the JWKS are ignored;
* unknown ``kid`` values refetch the JWKS at most once per `MIN_REFETCH_SECONDS`, and concurrent
  callers share one fetch, so a flood of made-up ``kid`` values cannot hammer the provider.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable, Mapping
from typing import Any, Final, NamedTuple

import httpx
import jwt
import structlog

from ..settings import SsoSettings

MIN_REFETCH_SECONDS: Final = 10.0
"""Shortest interval between two JWKS fetches other than the first one."""
FETCH_TIMEOUT_SECONDS: Final = 5.0
"""A provider slower than this counts as down; requests wait for it at most this long."""
MAX_JWKS_BYTES: Final = 1024 * 1024
"""A key set is a few KiB; a larger answer is a misconfigured URL, not a key set."""

_RSA_ALGORITHMS: Final = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_ALGORITHMS: Final = (("P-256", "ES256"), ("P-384", "ES384"), ("P-521", "ES512"))


class _Key(NamedTuple):
    """One usable signing key of the JWKS, loaded once per algorithm it may verify."""

    kid: str | None
    by_algorithm: Mapping[str, jwt.PyJWK]


class _JwksError(Exception):
    """The JWKS answer is unusable (status, size, JSON shape, no usable key)."""


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


class Jwks:
    """The provider's signing keys, fetched with httpx and cached.

    Not thread-safe: one instance per event loop, opened once and closed at shutdown.
    """

    def __init__(
        self, settings: SsoSettings, allowed: frozenset[str], now: Callable[[], float]
    ) -> None:
        """`allowed`: the algorithms a key may verify; `now`: the clock for the cache and the
        refetch rate limit."""
        self._settings = settings
        self._now = now
        self._allowed = allowed
        self._client: httpx.AsyncClient | None = None
        self._keys: tuple[_Key, ...] | None = None
        self._fetched_at = -math.inf
        self._attempted_at = -math.inf
        self._inflight: asyncio.Task[None] | None = None
        self._log = structlog.get_logger("gateway.sso")

    @property
    def loaded(self) -> bool:
        """Whether a key set is at hand (one was fetched, at least once)."""
        return self._keys is not None

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

    async def key(self, kid: str | None) -> _Key | None:
        """The cached key named `kid`, refreshing the cache when it is old or lacks that key;
        None when there is none (`loaded` then says whether any key set is at hand).

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
        return key

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
