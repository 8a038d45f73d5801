"""SSO tokens through a real gateway: a JWKS served over HTTP by a separate process, tokens
signed with real RS256 and ES256 keys, the tier picked from the groups claim."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from tests.support.admin import keyed_config
from tests.support.gateway import GatewayFactory, log_lines, request_line
from tests.support.procs import ServerProcess, free_port, python_module
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.processes  # a JWKS server process

ISSUER = "https://sso.example.test"
AUDIENCE = "llm-gateway"
OK = {"model": "scripted", "input": "hi"}


@pytest.fixture(scope="module")
def signing_keys() -> dict[str, Any]:
    return {
        "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ec": ec.generate_private_key(ec.SECP256R1()),
        "stranger": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    }


@pytest.fixture(scope="module")
def jwks_server(tmp_path_factory: pytest.TempPathFactory, signing_keys: dict[str, Any]) -> Any:
    """The identity provider's key set, served by `python -m http.server`."""
    folder = tmp_path_factory.mktemp("idp")
    keys = [
        {**RSAAlgorithm.to_jwk(signing_keys["rsa"].public_key(), as_dict=True), "kid": "r1",
         "use": "sig", "alg": "RS256"},
        {**ECAlgorithm.to_jwk(signing_keys["ec"].public_key(), as_dict=True), "kid": "e1",
         "use": "sig", "alg": "ES256"},
    ]  # fmt: skip
    (folder / "jwks.json").write_text(json.dumps({"keys": keys}))
    port = free_port()
    argv = python_module(
        "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(folder)
    )
    server = ServerProcess(argv, port, ready_path="/jwks.json")
    server.start(Path(folder) / "server.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def sso_gateway(
    gateway_factory: GatewayFactory,
    redis_server: RedisServer,
    scripted_upstream: ServerProcess,
    jwks_server: ServerProcess,
) -> ServerProcess:
    config = keyed_config(
        redis_server.url,
        scripted_upstream.url,
        limits={
            "tiers": {"default": {"requests_per_minute": 5}, "big": {"requests_per_minute": 50}}
        },
        sso={
            "issuer": ISSUER,
            "audience": AUDIENCE,
            "jwks_url": jwks_server.url + "/jwks.json",
            "user_claim": "email",
            "tier_claim": "groups",
            "tiers": {"ml-platform": "big"},
            "leeway": 5,
        },
    )
    return gateway_factory(config)


def _token(key: Any, kid: str, alg: str, secrets_seen: list[str], **changes: Any) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "email": "ana@example.test", "sub": "u-1",
              "iat": now, "exp": now + 300, **changes}  # fmt: skip
    claims = {k: v for k, v in claims.items() if v is not None}
    token = jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})
    secrets_seen.append(token)
    return token


def _post(gateway: ServerProcess, token: str) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/v1/responses",
        json=OK,
        headers={"authorization": f"Bearer {token}"},
        timeout=10,
    )


def test_rs256_and_es256_tokens_are_accepted(
    sso_gateway: ServerProcess, signing_keys: dict[str, Any], secrets_seen: list[str]
) -> None:
    """RS256 and ES256 tokens are served, each user at its group's tier, logged as key sso."""
    rs = _post(sso_gateway, _token(signing_keys["rsa"], "r1", "RS256", secrets_seen))
    assert rs.status_code == 200, rs.text
    assert rs.headers["x-ratelimit-limit-requests"] == "5"  # the default tier
    es = _post(
        sso_gateway,
        _token(
            signing_keys["ec"], "e1", "ES256", secrets_seen,
            email="bo@example.test", groups=["staff", "ml-platform"],
        ),
    )  # fmt: skip
    assert es.status_code == 200, es.text
    assert es.headers["x-ratelimit-limit-requests"] == "50"  # the tier of the group
    for user in ("ana@example.test", "bo@example.test"):
        assert request_line(sso_gateway, user=user)["key_id"] == "sso"


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("expired", "expired"),
        ("future", "not_yet_valid"),
        ("audience", "wrong_audience"),
        ("issuer", "wrong_issuer"),
        ("stranger", "bad_signature"),
        ("unknown_kid", "unknown_kid"),
        ("no_user", "missing_user_claim"),
        ("hs256", "algorithm_not_allowed"),
    ],
)
def test_each_bad_token_is_refused_alike(
    sso_gateway: ServerProcess,
    signing_keys: dict[str, Any],
    secrets_seen: list[str],
    case: str,
    reason: str,
) -> None:
    """Every bad token gets the 401 of a bad API key; only the log says the reason."""
    now = int(time.time())
    rsa_key = signing_keys["rsa"]
    tokens = {
        "expired": lambda: _token(rsa_key, "r1", "RS256", secrets_seen, exp=now - 60),
        "future": lambda: _token(rsa_key, "r1", "RS256", secrets_seen, nbf=now + 600),
        "audience": lambda: _token(rsa_key, "r1", "RS256", secrets_seen, aud="other-app"),
        "issuer": lambda: _token(rsa_key, "r1", "RS256", secrets_seen, iss="https://evil.test"),
        "stranger": lambda: _token(signing_keys["stranger"], "r1", "RS256", secrets_seen),
        "unknown_kid": lambda: _token(signing_keys["stranger"], "zz", "RS256", secrets_seen),
        "no_user": lambda: _token(rsa_key, "r1", "RS256", secrets_seen, email=None),
        "hs256": lambda: _token(b"k" * 32, "r1", "HS256", secrets_seen),
    }
    response = _post(sso_gateway, tokens[case]())
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert response.json()["error"]["message"].startswith("Incorrect API key provided")
    reasons = [
        line.get("reason") for line in log_lines(sso_gateway) if line.get("event") == "sso_rejected"
    ]
    assert reason in reasons


def test_a_token_follows_the_rules_of_a_key(
    sso_gateway: ServerProcess, signing_keys: dict[str, Any], secrets_seen: list[str]
) -> None:
    """A token is taken from `x-api-key` or `api-key` too, never from the URL, and never beside
    a different credential."""
    token = _token(signing_keys["rsa"], "r1", "RS256", secrets_seen)
    url = f"{sso_gateway.url}/v1/responses"
    for header in ("x-api-key", "api-key"):
        accepted = httpx.post(url, json=OK, headers={header: token}, timeout=10)
        assert accepted.status_code == 200, accepted.text
    bearer = {"authorization": f"Bearer {token}"}
    in_url = httpx.post(url, json=OK, headers=bearer, params={"jwt": token}, timeout=10)
    assert in_url.status_code == 400
    assert in_url.json()["error"]["code"] == "credentials_in_query"
    other = _token(signing_keys["ec"], "e1", "ES256", secrets_seen, email="bo@example.test")
    both = httpx.post(url, json=OK, headers={**bearer, "x-api-key": other}, timeout=10)
    assert both.status_code == 400
    assert both.json()["error"]["code"] == "conflicting_credentials"
