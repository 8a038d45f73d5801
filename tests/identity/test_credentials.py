"""Where a caller's credential may be, and what refusing a bad one costs.

A real gateway on a real redis-server: a key is taken from one of three headers, two different
ones are a 400, the URL never carries one; and an unknown key id is refused after the same work
as a known id with a wrong secret.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from typing import Any
from urllib.parse import quote

import httpx
import openai
import pytest

import gateway.identity.keys
from gateway.errors import AuthenticationFailed
from gateway.identity import Authenticator
from gateway.identity.keys import PREFIX, KeyHasher, KeyStore, new_key
from gateway.metrics import Metrics
from gateway.settings import AuthSettings, RedisSettings
from gateway.state import RedisKeys, RedisStore
from tests.support.admin import create_key, keyed_config
from tests.support.gateway import GatewayFactory
from tests.support.procs import ServerProcess
from tests.support.redis_server import RedisServer

BOOT_KEY = "boot-Wd4secret-configured-by-hash"
"""A key configured by its digest, of no recognisable format."""
OK = {"model": "scripted", "input": "hi"}
JWT_SHAPED = (
    "eyJhbGciOiJSUzI1NiIsImtpZCI6InIxIn0."
    "eyJzdWIiOiJ1LTEiLCJhdWQiOiJsbG0tZ2F0ZXdheSJ9."
    "c2lnbmF0dXJlLW5vdC1jaGVja2Vk"
)


@pytest.fixture(scope="module")
def keyed(
    gateway_factory: GatewayFactory,
    redis_server: RedisServer,
    scripted_upstream: ServerProcess,
    secrets_seen: list[str],
) -> tuple[ServerProcess, str, str]:
    """A gateway with keys in Redis and one configured by hash; returns it and two keys."""
    secrets_seen.append(BOOT_KEY)
    boot = {"id": "boot", "hash": hashlib.sha256(BOOT_KEY.encode()).hexdigest(), "user": "boot"}
    gateway = gateway_factory(keyed_config(redis_server.url, scripted_upstream.url, keys=[boot]))
    _, first = create_key(gateway.url, secrets_seen, user="creds-first")
    _, second = create_key(gateway.url, secrets_seen, user="creds-second")
    return gateway, first, second


def _post(url: str, headers: Any, params: Any = None) -> httpx.Response:
    return httpx.post(f"{url}/v1/responses", json=OK, headers=headers, params=params, timeout=10)


def _error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    return error


def test_each_credential_header_is_accepted(keyed: tuple[ServerProcess, str, str]) -> None:
    """A key is taken from `Authorization: Bearer`, `api-key` or `x-api-key` alike."""
    gateway, key, _ = keyed
    for headers in ({"authorization": f"Bearer {key}"}, {"api-key": key}, {"x-api-key": key}):
        assert _post(gateway.url, headers).status_code == 200, headers


def test_the_azure_sdk_key_header_is_accepted(keyed: tuple[ServerProcess, str, str]) -> None:
    """The AzureOpenAI SDK (`api-key` header, `?api-version=`) gets its answer."""
    gateway, key, _ = keyed
    with openai.AzureOpenAI(
        api_key=key, base_url=gateway.url + "/v1", api_version="2025-04-01-preview", max_retries=0
    ) as sdk:
        assert sdk.responses.create(model="scripted", input="hi").status == "completed"


@pytest.mark.parametrize(
    "pair",
    [("authorization", "api-key"), ("authorization", "x-api-key"), ("api-key", "x-api-key")],
)
def test_two_different_credentials_are_a_400(
    keyed: tuple[ServerProcess, str, str], pair: tuple[str, str]
) -> None:
    """Two valid but different keys in one request: 400, the gateway does not pick one; the
    same key in both is one credential."""
    gateway, first, second = keyed
    same = [(name, f"Bearer {first}" if name == "authorization" else first) for name in pair]
    assert _post(gateway.url, same).status_code == 200
    headers = [
        (name, f"Bearer {key}" if name == "authorization" else key)
        for name, key in zip(pair, (first, second), strict=True)
    ]
    error = _error(_post(gateway.url, headers), 400, "conflicting_credentials")
    assert first not in error["message"]
    assert second not in error["message"]


def test_two_authorization_headers_with_different_keys_are_a_400(
    keyed: tuple[ServerProcess, str, str],
) -> None:
    """A repeated `Authorization` header with two keys is refused the same way."""
    gateway, first, second = keyed
    headers = [("authorization", f"Bearer {first}"), ("authorization", f"Bearer {second}")]
    _error(_post(gateway.url, headers), 400, "conflicting_credentials")


def _query_forms(key: str) -> dict[str, str]:
    """Raw query strings that each carry a credential (beyond the names `api_key` and `key`
    and values starting `sk-`, which were refused before)."""
    return {
        "jwt": f"jwt={JWT_SHAPED}",
        "any name, bearer": "x=" + quote(f"Bearer {key}"),
        "any name, plus-encoded bearer": f"x=Bearer+{key}",
        "any name, jwt": f"t={JWT_SHAPED}",
        "any name, configured key": f"x={BOOT_KEY}",
        "after ;": f"a=1;key={key}",
    }


@pytest.mark.parametrize("form", sorted(_query_forms("k")))
@pytest.mark.parametrize("path", ["/v1/responses", "/v1/models"])
def test_credentials_in_the_query_string_are_refused_in_every_form(
    keyed: tuple[ServerProcess, str, str], form: str, path: str
) -> None:
    """A credential in the URL is a 400 `credentials_in_query`, whether or not a header also
    carries one, and the message does not repeat it."""
    gateway, key, _ = keyed
    query = _query_forms(key)[form]
    for headers in ({}, {"authorization": f"Bearer {key}"}):
        response = httpx.request(
            "POST" if path == "/v1/responses" else "GET",
            f"{gateway.url}{path}?{query}",
            json=OK if path == "/v1/responses" else None,
            headers=headers,
            timeout=10,
        )
        error = _error(response, 400, "credentials_in_query")
        assert key not in error["message"]
        assert BOOT_KEY not in error["message"]


class _NoLog:
    def __getattr__(self, _name: str) -> Any:
        return lambda *args, **kwargs: None


def test_an_unknown_id_costs_what_a_wrong_secret_does(
    redis_server: RedisServer, secrets_seen: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refusing an unknown key id runs the same Redis command, digest, decoding and
    constant-time comparison as refusing a known id with a wrong secret."""
    trace: list[tuple[Any, ...]] = []
    digest, compare, decoded = KeyHasher.digest, hmac.compare_digest, gateway.identity.keys._decoded

    def spy_digest(hasher: KeyHasher, key: str) -> str:
        trace.append(("digest", len(key)))
        return digest(hasher, key)

    def spy_compare(a: str, b: str) -> bool:
        trace.append(("compare_digest", len(a), len(b)))
        return compare(a, b)

    def spy_decoded(raw: bytes, used: bytes | None, revoked: bytes | None) -> Any:
        trace.append(("decode", type(raw), type(used), type(revoked)))
        return decoded(raw, used, revoked)

    monkeypatch.setattr(KeyHasher, "digest", spy_digest)
    monkeypatch.setattr(hmac, "compare_digest", spy_compare)
    monkeypatch.setattr(gateway.identity.keys, "_decoded", spy_decoded)

    async def refusals() -> dict[str, list[tuple[Any, ...]]]:
        store = RedisStore(
            RedisSettings(url=redis_server.url), redis_server.url, _NoLog(), Metrics()
        )
        keystore = KeyStore(store, RedisKeys(prefix="timing"), KeyHasher("pepper"))
        auth = Authenticator(AuthSettings(pepper="pepper"), keystore, False, _NoLog(), Metrics())
        real_command = store.client.execute_command

        async def command(*args: Any, **options: Any) -> Any:
            trace.append(("redis", args[0], len(args)))
            return await real_command(*args, **options)

        store.client.execute_command = command  # type: ignore[method-assign]  # a spy
        try:
            record, key = await keystore.create("timing-user", team="t")
            secrets_seen.append(key)
            await keystore.touch(record.id, 1.0)  # a key in use, as a probed key would be
            traces = {}
            for kind, key_id in (("unknown", new_key()[0]), ("wrong secret", record.id)):
                trace.clear()
                scope: Any = {"type": "http", "headers": [
                    (b"authorization", f"Bearer {PREFIX}{key_id}_{'A' * 43}".encode())
                ]}  # fmt: skip
                with pytest.raises(AuthenticationFailed) as refused:
                    await auth.authenticate(scope)
                traces[kind] = [*trace, ("refused", str(refused.value))]
            return traces
        finally:
            await store.close()

    traces = asyncio.run(refusals())
    assert traces["unknown"] == traces["wrong secret"]
    names = [step[0] for step in traces["unknown"]]
    assert names == ["digest", "redis", "decode", "compare_digest", "refused"]
