"""SSO tokens (JWT) are verified against the provider's JWKS and refused for the right reason.

The JWKS is served by a real aiohttp server on loopback (in the test's event loop) whose key set
a test can swap and whose fetches it can count; keys are real RSA-2048 and P-256 keys; time is
an injected clock, never a sleep.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import jwt
import msgspec
import pytest
import structlog
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from jwt.warnings import InsecureKeyLengthWarning

from gateway.identity.jwks import MIN_REFETCH_SECONDS
from gateway.identity.sso import (
    JwtVerifier,
    SsoIdentity,
    SsoRejected,
    _claim_values,
    looks_like_jwt,
)
from gateway.settings import SsoSettings
from tests.support.procs import free_port

pytestmark = pytest.mark.anyio

ISSUER = "https://idp.example.com/"
AUDIENCE = "llm-gateway"
NOW = 1_800_000_000.0
DROP = object()
"""A claim value meaning "leave this claim out"."""

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """aiohttp runs on asyncio only."""
    return "asyncio"


# --- keys and tokens ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SigningKey:
    """A private key the test signs with, and its public half as a JWK."""

    kid: str
    private: PrivateKey
    alg: str

    def jwk(self, **extra: Any) -> dict[str, Any]:
        """The public JWK, with `kid`, ``use: sig`` and the key's ``alg``, then `extra`."""
        public = self.private.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            data = RSAAlgorithm.to_jwk(public, as_dict=True)
        else:
            data = ECAlgorithm.to_jwk(public, as_dict=True)
        return {**data, "kid": self.kid, "use": "sig", "alg": self.alg, **extra}

    def token(
        self, payload: dict[str, Any] | None = None, *, alg: str | None = None, kid: Any = None
    ) -> str:
        """A token signed with this key; `kid` defaults to the key's own (DROP: no kid)."""
        headers = {} if kid is DROP else {"kid": self.kid if kid is None else kid}
        return jwt.encode(
            claims() if payload is None else payload,
            self.private,
            algorithm=alg or self.alg,
            headers=headers,
        )


def claims(**changes: Any) -> dict[str, Any]:
    """A valid payload at `NOW`, with `changes` applied (a DROP value removes the claim)."""
    payload: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "iat": int(NOW),
        "exp": int(NOW) + 300,
    }
    payload.update(changes)
    return {name: value for name, value in payload.items() if value is not DROP}


def _rsa(kid: str, bits: int = 2048) -> SigningKey:
    return SigningKey(kid, rsa.generate_private_key(public_exponent=65537, key_size=bits), "RS256")


@pytest.fixture(scope="module")
def rsa_a() -> SigningKey:
    return _rsa("rsa-a")


@pytest.fixture(scope="module")
def rsa_b() -> SigningKey:
    return _rsa("rsa-b")


@pytest.fixture(scope="module")
def ec_a() -> SigningKey:
    return SigningKey("ec-a", ec.generate_private_key(ec.SECP256R1()), "ES256")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segment(value: Any) -> str:
    return _b64(json.dumps(value).encode())


def forge_hs256(secret: bytes, header: dict[str, Any], payload: dict[str, Any]) -> str:
    """An HS256 token built by hand: PyJWT itself refuses PEM keys as HMAC secrets."""
    signing_input = f"{_segment(header)}.{_segment(payload)}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


# --- the JWKS server, the clock and the verifier -----------------------------------------------


class JwksServer:
    """The provider's JWKS endpoint: a real HTTP server whose answer tests can change."""

    def __init__(self) -> None:
        self.keys: list[Any] = []
        """The published key set (rotation: assign a new list)."""
        self.fetches = 0
        """GET requests received so far."""
        self.status = 200
        self.raw: bytes | None = None
        """Answered instead of the key set when set."""
        self.delay = 0.0
        """Seconds to wait before answering, so concurrent callers overlap."""
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/.well-known/jwks.json"

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_get("/.well-known/jwks.json", self._serve)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _serve(self, request: web.Request) -> web.Response:
        self.fetches += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status != 200:
            return web.Response(status=self.status, text="unavailable")
        if self.raw is not None:
            return web.Response(body=self.raw, content_type="application/json")
        return web.json_response({"keys": self.keys})


class Clock:
    """The verifier's `now`, moved by tests."""

    def __init__(self) -> None:
        self.time = NOW

    def __call__(self) -> float:
        return self.time

    def advance(self, seconds: float) -> None:
        self.time += seconds


@pytest.fixture
async def jwks(rsa_a: SigningKey, ec_a: SigningKey) -> AsyncIterator[JwksServer]:
    """A JWKS server publishing `rsa_a` and `ec_a`."""
    server = JwksServer()
    server.keys = [rsa_a.jwk(), ec_a.jwk()]
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def sso(url: str, **changes: Any) -> SsoSettings:
    """Settings for `url`, decoded like the configuration file so that they are validated."""
    fields = {"issuer": ISSUER, "audience": AUDIENCE, "jwks_url": url, **changes}
    return msgspec.convert(fields, SsoSettings)


@contextlib.asynccontextmanager
async def opened(settings: SsoSettings, clock: Clock) -> AsyncIterator[JwtVerifier]:
    verifier = JwtVerifier(settings, now=clock)
    await verifier.open()
    try:
        yield verifier
    finally:
        await verifier.close()


@pytest.fixture
async def verifier(jwks: JwksServer, clock: Clock) -> AsyncIterator[JwtVerifier]:
    """A verifier with default settings, reading `jwks`."""
    async with opened(sso(jwks.url), clock) as opened_verifier:
        yield opened_verifier


async def rejection(verifier: JwtVerifier, token: str) -> str:
    """The reason `token` is refused; the exception must not carry the token."""
    with pytest.raises(SsoRejected) as caught:
        await verifier.verify(token)
    if token:
        assert token not in str(caught.value)
        assert all(token not in str(arg) for arg in caught.value.args)
    return caught.value.reason


# --- accepted tokens ---------------------------------------------------------------------------


async def test_open_does_not_fetch(verifier: JwtVerifier, jwks: JwksServer) -> None:
    """Startup does not depend on the identity provider: the first token fetches."""
    assert jwks.fetches == 0


async def test_valid_rs256_token_is_accepted_and_keys_are_cached(
    verifier: JwtVerifier, jwks: JwksServer, rsa_a: SigningKey
) -> None:
    """An RS256 token gives its subject as user, and a second one is verified without a fetch."""
    token = rsa_a.token(claims(groups=["admins"]))
    assert await verifier.verify(token) == SsoIdentity(user="alice", tier=None)
    assert await verifier.verify(token) == SsoIdentity(user="alice", tier=None)
    assert jwks.fetches == 1


async def test_valid_es256_token_is_accepted(
    verifier: JwtVerifier, ec_a: SigningKey, jwks: JwksServer
) -> None:
    """An ES256 token on a P-256 key is accepted after one fetch of the key set."""
    identity = await verifier.verify(ec_a.token(claims(sub="bob")))
    assert identity == SsoIdentity(user="bob", tier=None)
    assert jwks.fetches == 1


async def test_audience_list_containing_ours_is_accepted(
    verifier: JwtVerifier, rsa_a: SigningKey
) -> None:
    """An `aud` list passes when it holds our audience among others."""
    token = rsa_a.token(claims(aud=["other-app", AUDIENCE]))
    assert (await verifier.verify(token)).user == "alice"


@pytest.mark.parametrize(
    ("groups", "tier", "values"),
    [
        (
            ["staff", "gold-users", "silver-users"],
            "gold",
            ("staff", "gold-users", "silver-users"),
        ),
        (
            ["staff", "silver-users", "gold-users"],
            "silver",
            ("staff", "silver-users", "gold-users"),
        ),
        ("silver-users", "silver", ("silver-users",)),
        ([7, None, "gold-users"], "gold", ("gold-users",)),
        (["staff"], None, ("staff",)),
        ({"gold-users": True}, None, ()),
        (DROP, None, ()),
    ],
    ids=["first-listed", "order-of-claim", "string", "non-strings", "no-match", "object", "none"],
)
async def test_tier_is_the_first_mapped_value_of_the_tier_claim(
    jwks: JwksServer,
    clock: Clock,
    rsa_a: SigningKey,
    groups: Any,
    tier: str | None,
    values: tuple[str, ...],
) -> None:
    """The claim's order decides, not the map's: silver is listed first in `tiers`."""
    tiers = {"silver-users": "silver", "gold-users": "gold"}
    async with opened(sso(jwks.url, tier_claim="groups", tiers=tiers), clock) as verifier:
        identity = await verifier.verify(rsa_a.token(claims(groups=groups)))
    assert identity == SsoIdentity(user="alice", tier=tier)
    assert _claim_values(None if groups is DROP else groups) == values, "the claim's strings"


async def test_user_claim_is_configurable(
    jwks: JwksServer, clock: Clock, rsa_a: SigningKey
) -> None:
    """`user_claim` names the claim the user comes from; a token without it is refused."""
    async with opened(sso(jwks.url, user_claim="email"), clock) as verifier:
        token = rsa_a.token(claims(email="alice@example.com"))
        assert (await verifier.verify(token)).user == "alice@example.com"
        assert await rejection(verifier, rsa_a.token()) == "missing_user_claim"


async def test_token_without_kid_uses_the_only_key(
    jwks: JwksServer, clock: Clock, rsa_a: SigningKey, ec_a: SigningKey
) -> None:
    """Unambiguous with a single published key; refused when the set holds several."""
    jwks.keys = [rsa_a.jwk()]
    async with opened(sso(jwks.url), clock) as verifier:
        assert (await verifier.verify(rsa_a.token(kid=DROP))).user == "alice"
    jwks.keys = [rsa_a.jwk(), ec_a.jwk()]
    async with opened(sso(jwks.url), clock) as verifier:
        assert await rejection(verifier, rsa_a.token(kid=DROP)) == "unknown_kid"


# --- time --------------------------------------------------------------------------------------


async def test_expiry_is_checked_with_leeway(
    verifier: JwtVerifier, clock: Clock, rsa_a: SigningKey
) -> None:
    """A token is accepted up to the 30 s default leeway past `exp`, refused after it."""
    token = rsa_a.token(claims(exp=int(NOW)))
    clock.advance(29)
    assert (await verifier.verify(token)).user == "alice"
    clock.advance(2)
    assert await rejection(verifier, token) == "expired"


async def test_expiry_without_leeway(jwks: JwksServer, clock: Clock, rsa_a: SigningKey) -> None:
    """With `leeway: 0` a token is refused from the second of its `exp`."""
    async with opened(sso(jwks.url, leeway=0), clock) as verifier:
        assert (await verifier.verify(rsa_a.token(claims(exp=int(NOW) + 1)))).user == "alice"
        assert await rejection(verifier, rsa_a.token(claims(exp=int(NOW)))) == "expired"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"nbf": int(NOW) + 31}, "not_yet_valid"),
        ({"iat": int(NOW) + 31}, "not_yet_valid"),
        ({"nbf": int(NOW) + 29, "iat": int(NOW) + 29}, None),
    ],
    ids=["nbf-future", "iat-future", "within-leeway"],
)
async def test_not_yet_valid(
    verifier: JwtVerifier, rsa_a: SigningKey, changes: dict[str, Any], reason: str | None
) -> None:
    """A future `nbf` or `iat` beyond the leeway is not_yet_valid; within it, accepted."""
    token = rsa_a.token(claims(**changes))
    if reason is None:
        assert (await verifier.verify(token)).user == "alice"
    else:
        assert await rejection(verifier, token) == reason


# --- refused tokens ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"iss": "https://evil.example.com/"}, "wrong_issuer"),
        ({"iss": ISSUER.rstrip("/")}, "wrong_issuer"),
        ({"aud": "another-app"}, "wrong_audience"),
        ({"aud": ["another-app", "third-app"]}, "wrong_audience"),
        ({"exp": DROP}, "missing_claim"),
        ({"iss": DROP}, "missing_claim"),
        ({"aud": DROP}, "missing_claim"),
        ({"sub": DROP}, "missing_user_claim"),
        ({"sub": ""}, "missing_user_claim"),
        ({"sub": 42}, "missing_user_claim"),
        ({"exp": "tomorrow"}, "malformed"),
        ({"exp": True}, "malformed"),
        ({"exp": float("nan")}, "malformed"),
        ({"exp": float("inf")}, "malformed"),
        ({"nbf": "now"}, "malformed"),
    ],
    ids=lambda value: json.dumps(value, default=str) if isinstance(value, dict) else value,
)
async def test_claims_are_checked(
    verifier: JwtVerifier, rsa_a: SigningKey, changes: dict[str, Any], reason: str
) -> None:
    """A wrong or missing iss, aud, exp or user claim, or an ill-typed time, names its reason."""
    assert await rejection(verifier, rsa_a.token(claims(**changes))) == reason


async def test_signature_by_another_key_with_the_same_kid_is_refused(
    verifier: JwtVerifier, rsa_a: SigningKey
) -> None:
    """A token signed by a different key that claims a published kid is bad_signature."""
    impostor = _rsa(rsa_a.kid)
    assert await rejection(verifier, impostor.token()) == "bad_signature"


async def test_altered_payload_is_refused(verifier: JwtVerifier, rsa_a: SigningKey) -> None:
    """A payload swapped under a genuine header and signature is bad_signature."""
    header, _, signature = rsa_a.token().split(".")
    altered = f"{header}.{_segment(claims(sub='mallory'))}.{signature}"
    assert await rejection(verifier, altered) == "bad_signature"


async def test_alg_none_is_refused_before_any_lookup(
    verifier: JwtVerifier, jwks: JwksServer, rsa_a: SigningKey
) -> None:
    """An unsigned `alg: none` token is refused without fetching the key set."""
    token = jwt.encode(claims(), "", algorithm="none", headers={"kid": rsa_a.kid})
    assert looks_like_jwt(token)
    assert await rejection(verifier, token) == "algorithm_not_allowed"
    assert jwks.fetches == 0


async def test_hs256_with_the_public_key_as_secret_is_refused(
    verifier: JwtVerifier, jwks: JwksServer, rsa_a: SigningKey
) -> None:
    """The classic key confusion: the RSA public key PEM used as an HMAC secret."""
    pem = rsa_a.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "typ": "JWT", "kid": rsa_a.kid}
    token = forge_hs256(pem, header, claims())
    assert await rejection(verifier, token) == "algorithm_not_allowed"
    assert jwks.fetches == 0


async def test_algorithm_outside_the_settings_is_refused_before_any_lookup(
    jwks: JwksServer, clock: Clock, rsa_a: SigningKey, ec_a: SigningKey
) -> None:
    """A token whose alg the settings do not allow is refused before any fetch."""
    async with opened(sso(jwks.url, algorithms=["ES256"]), clock) as verifier:
        assert await rejection(verifier, rsa_a.token()) == "algorithm_not_allowed"
        assert jwks.fetches == 0
        assert (await verifier.verify(ec_a.token())).user == "alice"


@pytest.mark.parametrize("alg", [["RS256"], {"RS256": True}, None, "rs256", "HS512"])
async def test_odd_alg_headers_are_refused_before_any_lookup(
    verifier: JwtVerifier, jwks: JwksServer, rsa_a: SigningKey, alg: Any
) -> None:
    """The header's ``alg`` may be any JSON value; only an allowed name passes."""
    header = {"alg": alg, "kid": rsa_a.kid}
    signature = rsa_a.token().rsplit(".", 1)[1]
    token = f"{_segment(header)}.{_segment(claims())}.{signature}"
    assert await rejection(verifier, token) == "algorithm_not_allowed"
    assert jwks.fetches == 0


async def test_a_key_verifies_only_its_own_algorithm(
    verifier: JwtVerifier, rsa_a: SigningKey, ec_a: SigningKey
) -> None:
    """A token cannot make an RSA key's kid verify an ES256 signature."""
    assert await rejection(verifier, ec_a.token(kid=rsa_a.kid)) == "algorithm_not_allowed"
    assert await rejection(verifier, rsa_a.token(kid=ec_a.kid)) == "algorithm_not_allowed"


async def test_a_key_declaring_alg_verifies_only_that_algorithm(
    jwks: JwksServer, clock: Clock, rsa_a: SigningKey
) -> None:
    """RS384 is allowed by the settings and fits an RSA key, but the JWK declares RS256."""
    settings = sso(jwks.url, algorithms=["RS256", "RS384"])
    token = rsa_a.token(alg="RS384")
    async with opened(settings, clock) as verifier:
        assert await rejection(verifier, token) == "algorithm_not_allowed"
    undeclared = rsa_a.jwk()
    del undeclared["alg"]
    jwks.keys = [undeclared]
    async with opened(settings, clock) as verifier:
        assert (await verifier.verify(token)).user == "alice"


async def test_weak_rsa_key_is_refused(jwks: JwksServer, verifier: JwtVerifier) -> None:
    """A token signed by a published 1024-bit RSA key is refused as weak_key."""
    weak = _rsa("weak", bits=1024)
    jwks.keys = [weak.jwk()]
    with pytest.warns(InsecureKeyLengthWarning):
        token = weak.token()
    assert await rejection(verifier, token) == "weak_key"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b",
        "a.b.c",
        "a.b.c.d",
        "!!!.@@@.###",
        "\ud800.x.y",
        "é.é.é",
        f"{_segment([1, 2])}.{_segment({})}.",
        f"{_b64(b'not json')}.{_segment({})}.",
        f"{_segment({'alg': 'RS256', 'kid': 7})}.{_segment({})}.",
        f"{_segment({'alg': 'RS256'})}.{'A' * 20000}.",
    ],
    ids=[
        "empty",
        "one-segment",
        "two-segments",
        "abc",
        "four-segments",
        "not-base64",
        "surrogate",
        "non-ascii",
        "header-array",
        "header-not-json",
        "kid-not-string",
        "too-long",
    ],
)
async def test_malformed_tokens_are_refused_without_a_fetch(
    verifier: JwtVerifier, jwks: JwksServer, token: str
) -> None:
    """Anything not shaped like a JWT is `malformed` and costs no fetch of the key set."""
    assert await rejection(verifier, token) == "malformed"
    assert jwks.fetches == 0


# --- the key set -------------------------------------------------------------------------------


async def test_unknown_kid_refetches_once_and_accepts_the_rotated_key(
    verifier: JwtVerifier, jwks: JwksServer, clock: Clock, rsa_a: SigningKey, rsa_b: SigningKey
) -> None:
    """An unknown kid fetches the set again once, accepting a rotated key; the old one is gone."""
    assert (await verifier.verify(rsa_a.token())).user == "alice"
    jwks.keys = [rsa_b.jwk()]
    clock.advance(MIN_REFETCH_SECONDS + 1)
    assert (await verifier.verify(rsa_b.token())).user == "alice"
    assert jwks.fetches == 2
    # The rotation removed rsa-a; too soon for another fetch, so it is simply unknown.
    assert await rejection(verifier, rsa_a.token()) == "unknown_kid"
    assert jwks.fetches == 2


async def test_unknown_kid_flood_fetches_at_most_once_per_interval(
    verifier: JwtVerifier, jwks: JwksServer, clock: Clock, rsa_a: SigningKey, rsa_b: SigningKey
) -> None:
    """A flood of unknown kids fetches the key set at most once per MIN_REFETCH_SECONDS."""
    assert (await verifier.verify(rsa_a.token())).user == "alice"
    clock.advance(MIN_REFETCH_SECONDS + 1)
    jwks.delay = 0.1
    flood = [rsa_a.token(kid=f"random-{i}") for i in range(100)]
    reasons = await asyncio.gather(*(rejection(verifier, token) for token in flood))
    assert set(reasons) == {"unknown_kid"}
    assert jwks.fetches == 2
    clock.advance(MIN_REFETCH_SECONDS - 1)
    jwks.keys = [rsa_a.jwk(), rsa_b.jwk()]  # rotated, but the last fetch is too recent
    assert await rejection(verifier, rsa_b.token()) == "unknown_kid"
    assert await rejection(verifier, rsa_a.token(kid="random-x")) == "unknown_kid"
    assert jwks.fetches == 2
    clock.advance(2)
    assert (await verifier.verify(rsa_b.token())).user == "alice"
    assert jwks.fetches == 3


async def test_concurrent_first_use_shares_one_fetch(
    verifier: JwtVerifier, jwks: JwksServer, rsa_a: SigningKey, ec_a: SigningKey
) -> None:
    """Twenty tokens verified at once before any keys are known share a single fetch."""
    jwks.delay = 0.2
    tokens = [key.token(claims(sub=f"user-{i}")) for i in range(10) for key in (rsa_a, ec_a)]
    identities = await asyncio.gather(*(verifier.verify(token) for token in tokens))
    assert sorted({identity.user for identity in identities}) == sorted(
        f"user-{i}" for i in range(10)
    )
    assert jwks.fetches == 1


async def test_a_caller_giving_up_does_not_cancel_the_shared_fetch(
    verifier: JwtVerifier, jwks: JwksServer, rsa_a: SigningKey
) -> None:
    """A verification cancelled mid-fetch leaves the fetch running for the other callers."""
    jwks.delay = 0.2
    impatient = asyncio.create_task(verifier.verify(rsa_a.token()))
    await asyncio.sleep(0.05)
    impatient.cancel()
    assert (await verifier.verify(rsa_a.token())).user == "alice"
    assert impatient.cancelled()
    assert jwks.fetches == 1


async def test_keys_are_fetched_again_when_the_cache_expires(
    jwks: JwksServer, clock: Clock, rsa_a: SigningKey
) -> None:
    """The key set is fetched again only once `jwks_cache_seconds` have passed."""
    async with opened(sso(jwks.url, jwks_cache_seconds=60), clock) as verifier:
        token = rsa_a.token(claims(exp=int(NOW) + 3600))
        await verifier.verify(token)
        clock.advance(59)
        await verifier.verify(token)
        assert jwks.fetches == 1
        clock.advance(2)
        await verifier.verify(token)
        assert jwks.fetches == 2


async def test_unusable_keys_in_the_set_are_skipped(
    verifier: JwtVerifier, jwks: JwksServer, rsa_a: SigningKey, rsa_b: SigningKey
) -> None:
    """Keys that are odd, broken, private, HMAC or for encryption are skipped; the rest verify."""
    assert isinstance(rsa_b.private, rsa.RSAPrivateKey)
    private = RSAAlgorithm.to_jwk(rsa_b.private, as_dict=True)
    jwks.keys = [
        "not-an-object",
        {"kty": "oct", "k": _b64(b"shared-secret-shared-secret-32b!"), "kid": "hmac"},
        {"kty": "XYZ", "kid": "exotic"},
        {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
        {"kty": "EC", "kid": "odd-curve", "crv": "P-192", "x": "AA", "y": "AA"},
        {**private, "kid": "leaked-private"},
        rsa_b.jwk(use="enc", kid="encryption"),
        rsa_a.jwk(),
    ]
    assert (await verifier.verify(rsa_a.token())).user == "alice"
    for kid in ("encryption", "leaked-private", "broken"):
        assert await rejection(verifier, rsa_b.token(kid=kid)) == "unknown_kid"
    header = {"alg": "HS256", "kid": "hmac"}
    hmac_token = forge_hs256(b"shared-secret-shared-secret-32b!", header, claims())
    assert await rejection(verifier, hmac_token) == "algorithm_not_allowed"
    assert jwks.fetches == 1


async def test_jwks_unreachable_at_first_use(clock: Clock, rsa_a: SigningKey) -> None:
    """Nothing listens on the port: refused, and the provider is not retried at every token."""
    url = f"http://127.0.0.1:{free_port()}/jwks.json"
    async with opened(sso(url), clock) as verifier:
        with structlog.testing.capture_logs() as logs:
            assert await rejection(verifier, rsa_a.token()) == "jwks_unavailable"
    assert [entry["event"] for entry in logs] == ["sso_jwks_fetch_failed"]
    assert rsa_a.token() not in repr(logs)


@pytest.mark.parametrize(
    "answer",
    [
        (503, None),
        (200, b"<html>login</html>"),
        (200, b"[]"),
        (200, b'{"keys": "none"}'),
        (200, b'{"keys": []}'),
        (200, b'{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}'),
    ],
    ids=["503", "html", "array", "keys-not-list", "no-keys", "only-hmac"],
)
async def test_unusable_jwks_at_first_use_then_recovery(
    verifier: JwtVerifier,
    jwks: JwksServer,
    clock: Clock,
    rsa_a: SigningKey,
    answer: tuple[int, bytes | None],
) -> None:
    """An unusable first answer refuses tokens with one fetch; a good answer later recovers."""
    jwks.status, jwks.raw = answer
    token = rsa_a.token(claims(exp=int(NOW) + 3600))
    assert await rejection(verifier, token) == "jwks_unavailable"
    assert await rejection(verifier, token) == "jwks_unavailable"
    assert jwks.fetches == 1
    jwks.status, jwks.raw = 200, None
    clock.advance(MIN_REFETCH_SECONDS)
    assert (await verifier.verify(token)).user == "alice"
    assert jwks.fetches == 2


async def test_oversized_jwks_is_refused(
    verifier: JwtVerifier, jwks: JwksServer, rsa_a: SigningKey
) -> None:
    """A valid key set padded beyond 1 MiB is not read: no such key set is legitimate."""
    padded = {"keys": [rsa_a.jwk()], "padding": "x" * (1024 * 1024)}
    jwks.raw = json.dumps(padded).encode()
    assert await rejection(verifier, rsa_a.token()) == "jwks_unavailable"
    assert jwks.fetches == 1


async def test_jwks_down_after_a_fetch_keeps_the_cached_keys(
    verifier: JwtVerifier, jwks: JwksServer, clock: Clock, rsa_a: SigningKey, rsa_b: SigningKey
) -> None:
    """With the provider down after a fetch, expired cached keys still verify, logged once."""
    token = rsa_a.token(claims(exp=int(NOW) + 3600))
    assert (await verifier.verify(token)).user == "alice"
    await jwks.stop()
    clock.advance(301)  # the cache has expired: a refresh is attempted and fails
    with structlog.testing.capture_logs() as logs:
        assert (await verifier.verify(token)).user == "alice"
    assert [(e["event"], e["using_cached_keys"]) for e in logs] == [("sso_jwks_fetch_failed", True)]
    clock.advance(MIN_REFETCH_SECONDS)
    assert await rejection(verifier, rsa_b.token(claims(exp=int(NOW) + 3600))) == "unknown_kid"


async def test_an_unusable_answer_after_a_fetch_keeps_the_cached_keys(
    verifier: JwtVerifier, jwks: JwksServer, clock: Clock, rsa_a: SigningKey
) -> None:
    """An empty key set on a refresh does not replace the keys already cached."""
    token = rsa_a.token(claims(exp=int(NOW) + 3600))
    await verifier.verify(token)
    jwks.raw = b'{"keys": []}'
    clock.advance(301)
    assert (await verifier.verify(token)).user == "alice"
    assert jwks.fetches == 2


async def test_verify_before_open_is_a_programming_error(
    jwks: JwksServer, clock: Clock, rsa_a: SigningKey
) -> None:
    """Verifying with a verifier never opened raises RuntimeError instead of refusing."""
    verifier = JwtVerifier(sso(jwks.url), now=clock)
    with pytest.raises(RuntimeError, match="open"):
        await verifier.verify(rsa_a.token())
    await verifier.close()


# --- looks_like_jwt ----------------------------------------------------------------------------


def test_looks_like_jwt_accepts_real_tokens(rsa_a: SigningKey, ec_a: SigningKey) -> None:
    """Real RS256 and ES256 tokens look like JWTs."""
    assert looks_like_jwt(rsa_a.token())
    assert looks_like_jwt(ec_a.token())


@pytest.mark.parametrize(
    "value",
    [
        "sk-gw-abc",
        "",
        "a.b",
        "a.b.c",
        "sk-gw-a.b.c",
        "..",
        f"{_segment({'typ': 'JWT'})}.{_segment({})}.sig",
        f"{_segment(['alg'])}.{_segment({})}.sig",
        f"{_segment({'alg': 'RS256'})}..sig",
        f"{_segment({'alg': 'RS256'})}.{_segment({})}.si+g",
        f"{_segment({'alg': 'RS256'})}.{_segment({})}.sig.extra",
    ],
)
def test_looks_like_jwt_refuses_other_values(value: str) -> None:
    """Gateway keys and near-JWT shapes (bad header, empty or odd segments) do not."""
    assert not looks_like_jwt(value)


@given(st.text())
def test_gateway_api_keys_never_look_like_a_jwt(suffix: str) -> None:
    """Nothing that starts with `sk-`, as every gateway key does, looks like a JWT."""
    assert not looks_like_jwt("sk-" + suffix)
