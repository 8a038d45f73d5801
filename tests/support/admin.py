"""Calls to a test gateway's admin API, and configurations of gateways with keys and quotas."""

from __future__ import annotations

from typing import Any

import httpx

from gateway.mock import STEERING_HEADERS as MOCK_STEERING
from tests.support.gateway import ADMIN_KEY
from tests.support.scripted_upstream import STEERING_HEADERS as SCRIPTED_STEERING


def admin_client(url: str) -> httpx.Client:
    """A client of `url`'s admin API, with the admin credential."""
    return httpx.Client(base_url=url, headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=10)


def create_key(url: str, secrets_seen: list[str], **fields: Any) -> tuple[str, str]:
    """Issue a key through the admin API; returns (key id, key) and registers the key as a
    secret no log may contain."""
    with admin_client(url) as client:
        response = client.post("/admin/keys", json=fields)
    assert response.status_code == 201, response.text
    body = response.json()
    secrets_seen.append(body["key"])
    return body["id"], body["key"]


def keyed_config(
    redis_url: str, upstream_url: str, limits: dict[str, Any] | None = None, **auth: Any
) -> dict[str, Any]:
    """A gateway in front of the scripted upstream, with keys and quotas in `redis_url`."""
    return {
        "providers": {
            "scripted": {
                "base_url": upstream_url + "/v1",
                "api_key": "${PROVIDER_KEY}",
                "forward_headers": list(SCRIPTED_STEERING),
            },
            "nowhere": {"base_url": "http://127.0.0.1:9/v1", "api_key": "k", "connect_timeout": 1},
        },
        "models": [
            {"name": "scripted", "provider": "scripted"},
            {"name": "other", "provider": "scripted"},
            {"name": "nowhere", "provider": "nowhere"},
        ],
        "redis": {"url": redis_url},
        "auth": {"admin_key": "${ADMIN_KEY}", **auth},
        "limits": limits or {"tiers": {"default": {}}},
    }


def mock_config(redis_url: str, mock_url: str, policy: str, cooldown: float) -> dict[str, Any]:
    """A gateway in front of the product's upstream (`mock-gpt`) and of a provider nobody
    listens for (`nowhere`), with keys and quotas in `redis_url`; no tier limits yet."""
    return {
        "providers": {
            "mock": {
                "base_url": mock_url + "/v1",
                "api_key": "${PROVIDER_KEY}",
                "forward_headers": list(MOCK_STEERING),
            },
            "nowhere": {"base_url": "http://127.0.0.1:9/v1", "api_key": "k"},
        },
        "models": [
            {"name": "mock-gpt", "provider": "mock"},
            {"name": "nowhere", "provider": "nowhere"},
        ],
        "redis": {"url": redis_url, "on_failure": policy, "breaker_cooldown": cooldown},
        "auth": {"admin_key": "${ADMIN_KEY}"},
    }
