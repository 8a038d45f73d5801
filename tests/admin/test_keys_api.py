"""The admin API's answers to what a client should not send: a 400 naming the field, never
a 500, and no record written or lost."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.identity.keys import EXPIRED_RECORD_KEPT
from tests.support.admin import admin_client, create_key, keyed_config
from tests.support.gateway import GatewayFactory
from tests.support.procs import ServerProcess
from tests.support.redis_server import RedisServer

WRONG: list[Any] = [
    {},
    [],
    [1],
    {"a": []},
    "",
    "x",
    "9" * 5000,
    0,
    -1,
    1.5,
    10**30,
    -(10**30),
    1e300,
    -1e300,
    None,
    True,
    False,
]
"""Values of every JSON type, and huge ones, for every field."""
WRONG_QUERY = ["", "x", "0", "-1", "1.5", "1e300", "-1e300", "nan", "inf", "null", "true", "[]"]
WRONG_QUERY += ["{}", "9" * 400, "2026-13-45", "2026-01-01T25:00", "day,day", "ü"]
WRONG_PATH = ["x", "..", "a" * 3000, "ü", "{key_id}", "%00", "%2F", "a%20b"]
LIMITS = ("requests_per_minute", "tokens_per_minute", "tokens_per_day", "concurrent_requests")
_users = itertools.count()


@pytest.fixture(scope="module")
def admin_gateway(
    gateway_factory: GatewayFactory, redis_server: RedisServer, scripted_upstream: ServerProcess
) -> ServerProcess:
    return gateway_factory(keyed_config(redis_server.url, scripted_upstream.url))


@pytest.fixture
def admin(admin_gateway: ServerProcess) -> Iterator[httpx.Client]:
    with admin_client(admin_gateway.url) as client:
        yield client


def _fields(fields: tuple[str, ...]) -> list[str]:
    """The fields of a body, the limits' own included, and names the body does not have (one
    of them a name Litestar gives a dependency)."""
    return [*fields, *(f"limits.{name}" for name in LIMITS), "runtime", "hash"]


def _with(body: dict[str, Any], field: str, value: Any) -> dict[str, Any]:
    if field.startswith("limits."):
        return {**body, "limits": {field.split(".", 1)[1]: value}}
    return {**body, field: value}


def _check(response: httpx.Response, ok: int, field: str | None) -> None:
    """`ok`, or a 400 in the OpenAI error shape whose `param` names `field`; never else."""
    assert response.status_code in (ok, 400), (field, response.status_code, response.text)
    if response.status_code == 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error"
        if field is not None:
            assert (error["param"] or "").startswith(field), (field, error)


def test_models_of_the_wrong_type_is_a_400_naming_it(
    admin: httpx.Client, secrets_seen: list[str], admin_gateway: ServerProcess
) -> None:
    """`"models": {}` (a field named like one of Litestar's dependencies) is a 400 whose
    `param` is `models`, when a key is created and when one is changed."""
    key_id, _ = create_key(admin_gateway.url, secrets_seen, user="models-type")
    for response in (
        admin.post("/admin/keys", json={"user": "models-type", "models": {}}),
        admin.patch(f"/admin/keys/{key_id}", json={"models": {}}),
        admin.post("/admin/keys", json={"user": "models-type", "models": "scripted"}),
    ):
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert (error["param"], error["code"]) == ("models", "invalid_value")
        assert "expected `array | null`" in error["message"]


def test_no_admin_field_of_the_wrong_type_is_a_500(
    admin: httpx.Client, secrets_seen: list[str], admin_gateway: ServerProcess
) -> None:
    """Every body field, query parameter and path parameter of every admin endpoint, given
    every type of JSON value and huge numbers: the answer is a success or a 400, never 5xx."""
    key_id, _ = create_key(admin_gateway.url, secrets_seen, user="fuzz")
    create = ("user", "team", "tier", "models", "expires_at", "expires_in_days", "limits")
    for field in _fields(create):
        for value in WRONG:
            body = _with({"user": f"fuzz-{next(_users)}"}, field, value)
            response = admin.post("/admin/keys", json=body)
            _check(response, 201, field)
            if response.status_code == 201:
                secrets_seen.append(response.json()["key"])
    for field in _fields(("team", "tier", "models", "expires_at", "limits", "user")):
        for value in WRONG:
            _check(admin.patch(f"/admin/keys/{key_id}", json=_with({}, field, value)), 200, field)
    for field in (*LIMITS, "runtime"):
        for value in WRONG:
            _check(admin.put("/admin/users/fuzz/limits", json={field: value}), 200, field)
    for value in WRONG:  # a whole body of the wrong type
        _check(admin.post("/admin/keys", json=value), 201, None)
        _check(admin.patch(f"/admin/keys/{key_id}", json=value), 200, None)
        _check(admin.put("/admin/users/fuzz/limits", json=value), 200, None)
    for raw in (b"", b"{", b"\xff\xfe", b"[" * 100_000):
        _check(admin.post("/admin/keys", content=raw), 201, None)
    now = str(int(time.time()))
    queries: dict[str, dict[str, str]] = {
        "/admin/keys": {"user": "fuzz"},
        "/admin/usage": {"user": "fuzz", "model": "scripted", "from": "", "to": "", "group_by": ""},
        "/admin/usage/records": {"since": now, "until": now, "format": "jsonl"},
    }
    for path, params in queries.items():
        for name in params:
            for text in WRONG_QUERY:
                given = {k: v for k, v in params.items() if v} | {name: text}
                _check(admin.get(path, params=given), 200, name)
            repeated = [*params.items(), (name, "again")]
            _check(admin.get(path, params=[(k, v) for k, v in repeated if v]), 200, name)
    for text in WRONG_PATH:
        for method, path in [
            ("GET", f"/admin/keys/{text}"),
            ("PATCH", f"/admin/keys/{text}"),
            ("DELETE", f"/admin/keys/{text}"),
            ("GET", f"/admin/users/{text}/limits"),
            ("PUT", f"/admin/users/{text}/limits"),
            ("DELETE", f"/admin/users/{text}/limits"),
        ]:
            response = admin.request(method, path, json={})
            assert response.status_code < 500, (method, path, response.text)
            assert response.status_code == 200 or set(response.json()["error"]) == {
                "message",
                "type",
                "param",
                "code",
            }


def test_patch_expires_at_takes_the_range_creation_takes(
    admin: httpx.Client, secrets_seen: list[str], admin_gateway: ServerProcess
) -> None:
    """An `expires_at` out of 1970..2100 is refused on PATCH as on creation, naming the field,
    and the key is left as it was."""
    expires = time.time() + 3600
    key_id, _ = create_key(admin_gateway.url, secrets_seen, user="expiry", expires_at=expires)
    for value in (1e300, -1, -1e300, 4_102_444_801):
        for response in (
            admin.post("/admin/keys", json={"user": "expiry", "expires_at": value}),
            admin.patch(f"/admin/keys/{key_id}", json={"expires_at": value}),
        ):
            assert response.status_code == 400, (value, response.text)
            assert response.json()["error"]["param"] == "expires_at"
        shown = admin.get(f"/admin/keys/{key_id}")
        assert shown.status_code == 200, shown.text
        assert shown.json()["expires_at"] == pytest.approx(expires)
        assert shown.json()["status"] == "active"


def test_a_key_that_expired_long_ago_keeps_its_record(
    admin: httpx.Client,
    secrets_seen: list[str],
    admin_gateway: ServerProcess,
    redis_server: RedisServer,
) -> None:
    """A key given an expiry far in the past (at creation or later) is expired, and its record
    stays readable for the audit period, counted from now."""
    created = admin.post("/admin/keys", json={"user": "expired", "expires_at": 5})
    assert created.status_code == 201, created.text
    secrets_seen.append(created.json()["key"])
    changed, _ = create_key(admin_gateway.url, secrets_seen, user="expired")
    assert admin.patch(f"/admin/keys/{changed}", json={"expires_at": 0}).status_code == 200
    for key_id in (created.json()["id"], changed):
        shown = admin.get(f"/admin/keys/{key_id}")
        assert shown.status_code == 200, shown.text
        assert shown.json()["status"] == "expired"
        ttl = redis_server.client().ttl(f"gw:key:{{{key_id}}}")
        assert EXPIRED_RECORD_KEPT - 60 < ttl <= EXPIRED_RECORD_KEPT


def test_a_query_parameter_error_names_the_parameter(admin: httpx.Client) -> None:
    """A required query parameter left out is a 400 whose `param` names it."""
    missing = admin.get("/admin/usage/records")
    assert missing.status_code == 400, missing.text
    error = missing.json()["error"]
    assert (error["param"], error["code"]) == ("since", "missing_required_parameter")
