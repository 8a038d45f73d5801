"""Who may call: issued keys, keys configured by hash, the admin API and its CLI.

Two gateway replicas share one real redis-server; every refusal must look the same whether
the key exists or not, and a revocation must reach the other replica within a second.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import time
from typing import Any

import httpx
import msgspec
import pytest

from gateway.identity import KeyHasher, KeyRecord, KeyStore
from gateway.metrics import Metrics
from gateway.settings import RedisSettings
from gateway.state import RedisKeys, RedisStore
from tests.support.admin import admin_client, create_key, keyed_config
from tests.support.gateway import ADMIN_KEY, GatewayFactory, request_line
from tests.support.procs import ServerProcess, python_module
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.processes  # the `gateway keys` CLI

BOOT_KEY = "sk-boot-Lm2secret-configured-by-hash"
OK = {"model": "scripted", "input": "hi"}


@pytest.fixture(scope="module")
def replicas(
    gateway_factory: GatewayFactory,
    redis_server: RedisServer,
    scripted_upstream: ServerProcess,
    secrets_seen: list[str],
) -> list[ServerProcess]:
    """Two replicas sharing one Redis, with a bootstrap key declared by its hash."""
    secrets_seen.append(BOOT_KEY)
    boot = {
        "id": "boot",
        "hash": hashlib.sha256(BOOT_KEY.encode()).hexdigest(),
        "user": "boot-user",
        "models": ["scripted"],
    }
    config = keyed_config(redis_server.url, scripted_upstream.url, keys=[boot])
    return [gateway_factory(config), gateway_factory(config)]


def _post(url: str, key: str | None, body: Any = OK, **kwargs: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key is not None else {}
    return httpx.post(f"{url}/v1/responses", json=body, headers=headers, timeout=10, **kwargs)


def _error(response: httpx.Response, status: int, code: str | None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    return error


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Basic dXNlcjpwYXNz", "sk-gw-no-scheme"],
)
def test_missing_credentials_are_401(
    replicas: list[ServerProcess], authorization: str | None
) -> None:
    """No or malformed Authorization is a 401 invalid_api_key that names the header."""
    headers = {} if authorization is None else {"authorization": authorization}
    response = httpx.post(f"{replicas[0].url}/v1/responses", json=OK, headers=headers)
    error = _error(response, 401, "invalid_api_key")
    assert "Authorization" in error["message"]


def test_every_bad_key_gets_the_same_answer(
    replicas: list[ServerProcess], secrets_seen: list[str]
) -> None:
    """Unknown, tampered, revoked and expired keys: one status, one body; nothing tells them
    apart."""
    url = replicas[0].url
    revoked_id, revoked = create_key(url, secrets_seen, user="bad-keys")
    _, expired = create_key(url, secrets_seen, user="bad-keys", expires_at=time.time() - 1)
    _, good = create_key(url, secrets_seen, user="bad-keys")
    with admin_client(url) as admin:
        assert admin.delete(f"/admin/keys/{revoked_id}").json()["status"] == "revoked"
    tampered = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    unknown = "sk-gw-kaaaaaaaaaaaa_" + "x" * 43
    secrets_seen.extend([tampered, unknown])
    bodies = set()
    for key in (revoked, expired, tampered, unknown, "sk-nonsense", "x" * 300):
        response = _post(url, key)
        _error(response, 401, "invalid_api_key")
        bodies.add(response.content)
    assert len(bodies) == 1
    assert _post(url, good).status_code == 200


def test_credentials_in_the_query_string_are_refused(
    replicas: list[ServerProcess], secrets_seen: list[str]
) -> None:
    """A key in the query string, under any name, is a 400 that does not echo the key."""
    _, key = create_key(replicas[0].url, secrets_seen, user="query")
    for query in ({"api_key": key}, {"key": key}, {"x": key}):
        response = _post(replicas[0].url, key, params=query)
        error = _error(response, 400, "credentials_in_query")
        assert key not in error["message"]


def test_configured_key_by_hash_and_its_models(replicas: list[ServerProcess]) -> None:
    """A key configured by its SHA-256 works for its models only and logs under its id."""
    url = replicas[0].url
    answer = _post(url, BOOT_KEY)
    assert answer.status_code == 200, answer.text
    error = _error(
        _post(url, BOOT_KEY, {"model": "other", "input": "hi"}), 403, "model_not_allowed"
    )
    assert error["param"] == "model"
    assert request_line(replicas[0], user="boot-user")["key_id"] == "boot"


def test_issued_key_limited_to_models(
    replicas: list[ServerProcess], secrets_seen: list[str]
) -> None:
    """A key issued for some models gets 403 for others, 404 for a model nobody serves."""
    url = replicas[0].url
    _, key = create_key(url, secrets_seen, user="models", models=["other"])
    assert _post(url, key, {"model": "other", "input": "hi"}).status_code == 200
    _error(_post(url, key), 403, "model_not_allowed")
    # a model nobody serves is still a 404, as for any caller
    _error(_post(url, key, {"model": "ghost", "input": "hi"}), 404, "model_not_found")


def test_admin_api_needs_its_credential(
    replicas: list[ServerProcess], secrets_seen: list[str]
) -> None:
    """The admin API refuses no key, a wrong and a client key; the admin key is no client key."""
    url = replicas[0].url
    _, client_key = create_key(url, secrets_seen, user="not-admin")
    for headers in (
        {},
        {"authorization": "Bearer wrong"},
        {"authorization": f"Bearer {client_key}"},
    ):
        response = httpx.get(f"{url}/admin/keys", headers=headers)
        _error(response, 401, "invalid_api_key")
    # and a client key cannot be used as the admin key, nor the admin key as a client key
    _error(_post(url, ADMIN_KEY), 401, "invalid_api_key")


def test_admin_api_is_absent_without_admin_key(gateway: ServerProcess) -> None:
    """Without an admin key configured, /admin/keys does not exist: 404."""
    response = httpx.get(f"{gateway.url}/admin/keys", headers={"authorization": "Bearer x"})
    _error(response, 404, "not_found")


def test_key_lifecycle_through_the_admin_api(
    replicas: list[ServerProcess], redis_server: RedisServer, secrets_seen: list[str]
) -> None:
    """Create, use, show, list, patch and revoke a key; Redis holds its digest, never the key."""
    url = replicas[0].url
    with admin_client(url) as admin:
        created = admin.post(
            "/admin/keys",
            json={"user": "life", "team": "qa", "models": ["scripted"], "expires_in_days": 30},
        )
        assert created.status_code == 201, created.text
        body = created.json()
        key, key_id = body["key"], body["id"]
        secrets_seen.append(key)
        assert key.startswith("sk-gw-")
        assert key_id in key
        assert len(key) >= 6 + 13 + 1 + 43
        assert body["status"] == "active"
        assert body["team"] == "qa"
        assert abs(body["expires_at"] - (time.time() + 30 * 86400)) < 60

        assert _post(url, key).status_code == 200
        shown = admin.get(f"/admin/keys/{key_id}").json()
        assert "key" not in shown
        assert "hash" not in shown
        assert shown["last_used_at"] is not None or _eventually_used(admin, key_id)

        listed = admin.get("/admin/keys", params={"user": "life"}).json()["data"]
        assert [k["id"] for k in listed] == [key_id]
        assert all("key" not in k and "hash" not in k for k in listed)

        patched = admin.patch(
            f"/admin/keys/{key_id}", json={"limits": {"requests_per_minute": 7}, "team": None}
        )
        assert patched.status_code == 200, patched.text
        assert patched.json()["limits"] == {
            "requests_per_minute": 7,
            "tokens_per_minute": None,
            "tokens_per_day": None,
            "concurrent_requests": None,
        }
        assert patched.json()["team"] is None
        time.sleep(0.6)  # past the key cache: the key's own limit now shows in the headers
        limited = _post(url, key)
        assert limited.headers["x-ratelimit-limit-requests"] == "7"

        bad = admin.post("/admin/keys", json={"user": "life", "tier": "platinum"})
        _error(bad, 400, None)
        _error(admin.get("/admin/keys/knothere000000"), 404, "key_not_found")
        missing = admin.post("/admin/keys", json={"team": "no user"})
        assert _error(missing, 400, "missing_required_parameter")["param"] == "user"

        assert admin.delete(f"/admin/keys/{key_id}").json()["status"] == "revoked"
    # Redis holds a digest of the key, never the key
    client = redis_server.client()
    stored = json.dumps({k: client.hgetall(k) for k in client.keys(f"gw:key:{{{key_id}}}")})
    assert key_id in stored
    assert key not in stored
    assert hashlib.sha256(key.encode()).hexdigest() in stored


def _eventually_used(admin: httpx.Client, key_id: str) -> bool:
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        if admin.get(f"/admin/keys/{key_id}").json()["last_used_at"] is not None:
            return True
        time.sleep(0.05)
    return False


def test_revocation_reaches_every_replica_within_a_second(
    replicas: list[ServerProcess], secrets_seen: list[str]
) -> None:
    """A key revoked on one replica is refused by the other, which had it cached, within 1 s."""
    first, second = replicas
    key_id, key = create_key(first.url, secrets_seen, user="revoked-everywhere")
    with httpx.Client(timeout=5) as client:
        for replica in replicas:  # both replicas have the key in their cache
            assert _post(replica.url, key).status_code == 200
        with admin_client(first.url) as admin:
            assert admin.delete(f"/admin/keys/{key_id}").status_code == 200
        revoked_at = time.monotonic()
        statuses = []
        while time.monotonic() - revoked_at < 1.0:
            response = client.post(
                f"{second.url}/v1/responses", json=OK, headers={"authorization": f"Bearer {key}"}
            )
            statuses.append(response.status_code)
            if response.status_code == 401:
                break
            time.sleep(0.02)
    assert statuses[-1] == 401, f"still accepted 1 s after revocation: {statuses}"


def _cli(url: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {"GATEWAY_URL": url, "GATEWAY_ADMIN_KEY": ADMIN_KEY, "PATH": "/usr/bin:/bin"}
    return subprocess.run(  # noqa: S603
        python_module("gateway", "keys", *args),
        capture_output=True,
        text=True,
        env=env,
        input=stdin,
        timeout=30,
        check=False,
    )


def test_cli_creates_lists_and_revokes(
    replicas: list[ServerProcess], secrets_seen: list[str]
) -> None:
    """`gateway keys` creates a working key, lists it without the secret, revokes it."""
    url = replicas[0].url
    created = _cli(url, "create", "--user", "cli-user", "--model", "scripted", "--rpm", "5")
    assert created.returncode == 0, created.stderr
    body = json.loads(created.stdout)
    secrets_seen.append(body["key"])
    assert body["limits"]["requests_per_minute"] == 5
    assert _post(url, body["key"]).status_code == 200

    listed = _cli(url, "list", "--user", "cli-user")
    assert listed.returncode == 0, listed.stderr
    assert [k["id"] for k in json.loads(listed.stdout)["data"]] == [body["id"]]
    assert body["key"] not in listed.stdout

    revoked = _cli(url, "revoke", body["id"])
    assert revoked.returncode == 0
    assert json.loads(revoked.stdout)["status"] == "revoked"
    time.sleep(0.6)
    assert _post(url, body["key"]).status_code == 401

    missing = _cli(url, "show", "knothere000000")
    assert missing.returncode == 1
    assert "No API key" in missing.stderr


def test_cli_hash_matches_the_configured_digest(replicas: list[ServerProcess]) -> None:
    """`gateway keys hash` prints the SHA-256 digest that a configured key's `hash` takes."""
    hashed = _cli(replicas[0].url, "hash", stdin=BOOT_KEY + "\n")
    assert hashed.stdout.strip() == hashlib.sha256(BOOT_KEY.encode()).hexdigest()


def test_cli_without_admin_key_says_so(replicas: list[ServerProcess]) -> None:
    """`gateway keys` without GATEWAY_ADMIN_KEY exits 2, naming the variable."""
    done = subprocess.run(  # noqa: S603
        python_module("gateway", "keys", "list"),
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "GATEWAY_ADMIN_KEY" in done.stderr


def test_cli_sets_and_shows_a_users_limits(replicas: list[ServerProcess]) -> None:
    """`gateway keys limits` sets a user's overrides and shows them, unset ones null."""
    url = replicas[0].url
    changed = _cli(url, "limits", "cli-limited", "--rpm", "9", "--concurrency", "2")
    assert changed.returncode == 0, changed.stderr
    shown = _cli(url, "limits", "cli-limited")
    assert shown.returncode == 0, shown.stderr
    overrides = json.loads(shown.stdout)["overrides"]
    assert overrides["requests_per_minute"] == 9
    assert overrides["concurrent_requests"] == 2
    assert overrides["tokens_per_minute"] is None


def test_models_take_the_same_credentials(
    replicas: list[ServerProcess], secrets_seen: list[str]
) -> None:
    """/v1/models needs a key as /v1/responses does, and refuses one in the query string."""
    url = replicas[0].url
    _, key = create_key(url, secrets_seen, user="lister")
    _error(httpx.get(f"{url}/v1/models"), 401, "invalid_api_key")
    _error(httpx.get(f"{url}/v1/models/scripted"), 401, "invalid_api_key")
    listed = httpx.get(f"{url}/v1/models", headers={"authorization": f"Bearer {key}"})
    assert listed.status_code == 200
    assert "scripted" in [m["id"] for m in listed.json()["data"]]
    refused = httpx.get(f"{url}/v1/models", params={"api_key": key})
    _error(refused, 400, "credentials_in_query")


def test_a_revocation_survives_an_update_read_before_it(
    redis_server: RedisServer, secrets_seen: list[str]
) -> None:
    """The race of a PATCH and a revocation: the PATCH read the record before the revocation
    and writes it back after; the key must stay revoked."""

    async def race() -> KeyRecord | None:
        settings = RedisSettings(url=redis_server.url)
        store = RedisStore(settings, redis_server.url, _NoLog(), Metrics())
        keys = KeyStore(store, RedisKeys(), KeyHasher(None))
        try:
            record, key = await keys.create("raced")
            secrets_seen.append(key)
            read_before = await keys.get(record.id)
            assert read_before is not None
            await keys.revoke(record.id, time.time())
            await keys.update(msgspec.structs.replace(read_before, team="late-writer"))
            return await keys.get(record.id)
        finally:
            await store.close()

    final = asyncio.run(race())
    assert final is not None
    assert final.team == "late-writer"
    assert final.revoked_at is not None
    assert not final.usable(time.time())


class _NoLog:
    def __getattr__(self, _name: str) -> Any:
        return lambda *args, **kwargs: None


def test_models_list_only_what_the_key_may_use(
    replicas: list[ServerProcess], secrets_seen: list[str]
) -> None:
    """/v1/models lists only the key's own models; any other model is a 404 to it."""
    url = replicas[0].url
    _, key = create_key(url, secrets_seen, user="narrow-lister", models=["other"])
    headers = {"authorization": f"Bearer {key}"}
    listed = httpx.get(f"{url}/v1/models", headers=headers)
    assert [m["id"] for m in listed.json()["data"]] == ["other"]
    assert httpx.get(f"{url}/v1/models/other", headers=headers).status_code == 200
    hidden = httpx.get(f"{url}/v1/models/scripted", headers=headers)
    _error(hidden, 404, "model_not_found")
