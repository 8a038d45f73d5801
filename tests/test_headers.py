"""Which client headers reach a provider: an allowlist, extended per provider, held here.

Real gateways in front of the scripted upstream (which records every header it receives) and of
the mock, on loopback.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.headers import FORWARDED, NEVER_FORWARDED
from gateway.identity.credentials import CREDENTIAL_HEADERS
from gateway.mock import STEERING_HEADERS as MOCK_STEERING
from gateway.settings import ConfigError, load_settings
from tests.support.admin import create_key, keyed_config
from tests.support.gateway import PROVIDER_KEY, GatewayFactory, upstream_requests
from tests.support.procs import ServerProcess
from tests.support.redis_server import RedisServer

OK = {"model": "plain", "input": "hi"}

# Every client header here is one the gateway must not pass on, whatever its value.
WITHHELD = {
    "x-goog-api-key": "AIza-client-google-key",
    "anthropic-api-key": "sk-ant-client-key",
    "x-amz-security-token": "FwoGZXIvYXdzE-client-token",
    "true-client-ip": "203.0.113.7",
    "cf-connecting-ip": "203.0.113.7",
    "via": "1.1 corporate-proxy",
    "x-http-method-override": "DELETE",
    "x-original-url": "/admin/keys",
    "x-mock-fault": "status=500",
    "expect": "100-continue",
    "content-encoding": "identity",
    "cookie": "session=abc",
    "proxy-authorization": "Basic eA==",
    "forwarded": "for=10.0.0.1",
    "x-forwarded-for": "10.0.0.1",
    "x-real-ip": "10.0.0.1",
    "openai-organization": "org-chosen-by-client",
    "openai-project": "proj-chosen-by-client",
    "baggage": "user.id=ana@example.test",
    "x-stainless-lang": "python",
    "x-stainless-os": "Linux",
    "x-stainless-runtime-version": "3.11.7",
    "x-stainless-retry-count": "0",
    "x-tenant-hint": "blue",
    "keep-alive": "timeout=5",
}
ALLOWED = {
    "accept": "application/json",
    "user-agent": "OpenAI/Python 3.60.0",
    "openai-beta": "responses=v1",
    "idempotency-key": "retry-7c1e",
    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "tracestate": "congo=t61rcWkgMzE",
}


@pytest.fixture(scope="module")
def allowlist_gateway(gateway_factory: GatewayFactory, scripted_upstream: ServerProcess) -> Any:
    """A gateway whose `plain` provider adds nothing to the allowlist and whose `extended` one
    adds `x-tenant-hint`; both in front of the scripted upstream, without auth."""
    url = scripted_upstream.url + "/v1"
    return gateway_factory(
        {
            "providers": {
                "plain": {"base_url": url, "api_key": "${PROVIDER_KEY}"},
                "extended": {
                    "base_url": url,
                    "api_key": "${PROVIDER_KEY}",
                    "forward_headers": ["X-Tenant-Hint"],
                },
            },
            "models": [
                {"name": "plain", "provider": "plain"},
                {"name": "extended", "provider": "extended"},
            ],
            "auth": {"enabled": False},
        }
    )


def _sent(upstream: ServerProcess) -> dict[str, str]:
    """The headers of the last request the scripted upstream received (names in lower case)."""
    return {k.lower(): v for k, v in upstream_requests(upstream)[-1]["headers"]}


def test_the_allowlist_is_this_table() -> None:
    """The headers every provider gets are these six, and none is one the gateway withholds."""
    assert {
        b"accept",
        b"user-agent",
        b"openai-beta",
        b"idempotency-key",
        b"traceparent",
        b"tracestate",
    } == FORWARDED
    assert not FORWARDED & NEVER_FORWARDED
    assert CREDENTIAL_HEADERS <= NEVER_FORWARDED


def test_exactly_the_allowlist_reaches_the_upstream(
    allowlist_gateway: ServerProcess, scripted_upstream: ServerProcess
) -> None:
    """Of all the client's headers only the allowlisted ones arrive, beside the gateway's own."""
    headers = {
        **WITHHELD,
        **ALLOWED,
        "authorization": "Bearer sk-client-not-forwarded",
        "content-type": "application/json",
        "accept-encoding": "gzip",
        "x-request-id": "client-id-123",
    }
    response = httpx.post(
        allowlist_gateway.url + "/v1/responses", json=OK, headers=headers, timeout=10
    )
    assert response.status_code == 200, response.text
    sent = _sent(scripted_upstream)
    gateways_own = {"host", "content-length", "content-type", "accept-encoding", "authorization"}
    assert set(sent) == gateways_own | {"x-request-id"} | set(ALLOWED)
    assert sent["authorization"] == f"Bearer {PROVIDER_KEY}"
    assert sent["content-type"] == "application/json"
    assert sent["accept-encoding"] == "identity"
    assert sent["x-request-id"] == response.headers["x-request-id"]
    for name in set(ALLOWED) - {"idempotency-key"}:
        assert sent[name] == ALLOWED[name], name


def test_a_huge_header_not_on_the_list_never_reaches_the_upstream(
    allowlist_gateway: ServerProcess, scripted_upstream: ServerProcess
) -> None:
    """An 8 MiB header the allowlist does not name is not sent on (whether or not the front
    door takes it at all)."""
    before = len(upstream_requests(scripted_upstream))
    try:
        response = httpx.post(
            allowlist_gateway.url + "/v1/responses",
            json=OK,
            headers={"x-padding": "x" * (8 * 1024 * 1024)},
            timeout=30,
        )
    except httpx.TransportError:  # a front door may cut such a request short
        response = None
    received = upstream_requests(scripted_upstream)[before:]
    if response is not None and response.status_code == 200:
        assert len(received) == 1
        assert "x-padding" not in {k.lower() for k, _ in received[0]["headers"]}
    else:  # refused at the front door: by the gateway, not by an upstream that saw it
        assert received == []
        if response is not None and response.headers.get("content-type") == "application/json":
            assert not response.json()["error"]["code"].startswith("upstream_"), response.text


def test_a_provider_extends_the_allowlist_for_itself_only(
    allowlist_gateway: ServerProcess, scripted_upstream: ServerProcess
) -> None:
    """`forward_headers` adds a header to its own provider's requests, not to another's."""
    url = allowlist_gateway.url + "/v1/responses"
    hint = {"x-tenant-hint": "blue"}
    assert httpx.post(url, json={**OK, "model": "extended"}, headers=hint).status_code == 200
    assert _sent(scripted_upstream)["x-tenant-hint"] == "blue"
    assert httpx.post(url, json=OK, headers=hint).status_code == 200
    assert "x-tenant-hint" not in _sent(scripted_upstream)


def test_the_mock_is_steered_only_where_its_headers_are_forwarded(
    gateway_factory: GatewayFactory, mock_upstream: ServerProcess
) -> None:
    """The embedded upstream gets `x-mock-*`; the same mock elsewhere only if listed."""
    gateway = gateway_factory(
        {
            "providers": {
                "embedded": {"base_url": "embedded"},
                "elsewhere": {"base_url": mock_upstream.url + "/v1", "api_key": "k"},
                "listed": {
                    "base_url": mock_upstream.url + "/v1",
                    "api_key": "k",
                    "forward_headers": list(MOCK_STEERING),
                },
            },
            "models": [
                {"name": "mock-gpt", "provider": "embedded"},
                {"name": "remote", "provider": "elsewhere", "upstream_model": "mock-gpt"},
                {"name": "remote-listed", "provider": "listed", "upstream_model": "mock-gpt"},
            ],
            "auth": {"enabled": False},
        }
    )
    fault = {"x-mock-fault": "status=503"}

    def status(model: str) -> int:
        body = {"model": model, "input": "hi"}
        return httpx.post(gateway.url + "/v1/responses", json=body, headers=fault).status_code

    assert status("mock-gpt") == 503
    assert status("remote-listed") == 503
    assert status("remote") == 200


def test_idempotency_keys_are_scoped_to_the_caller(
    gateway_factory: GatewayFactory,
    redis_server: RedisServer,
    scripted_upstream: ServerProcess,
    secrets_seen: list[str],
) -> None:
    """One caller's retries carry one idempotency key upstream; two callers never share one."""
    gateway = gateway_factory(keyed_config(redis_server.url, scripted_upstream.url))
    _, ana = create_key(gateway.url, secrets_seen, user="idem-ana")
    _, bo = create_key(gateway.url, secrets_seen, user="idem-bo")
    seen = []
    for key in (ana, ana, bo):
        response = httpx.post(
            gateway.url + "/v1/responses",
            json={"model": "scripted", "input": "hi"},
            headers={"authorization": f"Bearer {key}", "idempotency-key": "retry-1"},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        seen.append(_sent(scripted_upstream)["idempotency-key"])
    assert seen[0] == seen[1]
    assert seen[2] != seen[0]
    assert "retry-1" not in seen
    assert all(len(value) == len(hashlib.sha256().hexdigest()) for value in seen)


CONFIG = """
providers:
  p:
    base_url: https://api.example.test/v1
    headers: {{X-Fixed: v}}
    forward_headers: [{names}]
models:
  - {{name: m, provider: p}}
auth: {{enabled: false}}
"""


@pytest.mark.parametrize(
    ("names", "fragment"),
    [
        ("authorization", "never forwarded"),
        ("X-API-Key", "never forwarded"),
        ("cookie", "never forwarded"),
        ("x-forwarded-for", "never forwarded"),
        ("content-length", "never forwarded"),
        ("x-fixed", "also set in providers.p.headers"),
        ("'bad name'", "expected a header name"),
    ],
)
def test_forward_headers_refuses_what_the_gateway_owns(
    tmp_path: Path, names: str, fragment: str
) -> None:
    """A provider cannot forward credentials, cookies, framing or a header it sets itself."""
    path = tmp_path / "gateway.yaml"
    path.write_text(CONFIG.format(names=names))
    with pytest.raises(ConfigError) as refused:
        load_settings(path, environ={})
    assert "providers.p.forward_headers[0]" in str(refused.value)
    assert fragment in str(refused.value)


def test_forward_headers_takes_header_names(tmp_path: Path) -> None:
    """Header names of any case load as the provider's extension."""
    path = tmp_path / "gateway.yaml"
    path.write_text(CONFIG.format(names="Anthropic-Version, x-tenant-hint"))
    provider = load_settings(path, environ={}).providers["p"]
    assert provider.forward_headers == ("Anthropic-Version", "x-tenant-hint")
