"""Providers behind HTTPS: the lean client verifies the certificate and streams as over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import trustme

from tests.support.gateway import GatewayFactory
from tests.support.procs import ServerProcess, free_port, python_module

pytestmark = pytest.mark.processes  # an HTTPS upstream process


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """A throwaway certificate authority."""
    return trustme.CA()


@pytest.fixture(scope="module")
def tls_upstream(
    ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """The mock upstream serving HTTPS with a certificate for 127.0.0.1 signed by `ca`."""
    folder = tmp_path_factory.mktemp("tls")
    cert = ca.issue_cert("127.0.0.1")
    chain, key = folder / "chain.pem", folder / "key.pem"
    cert.private_key_pem.write_to_path(str(key))
    with chain.open("wb") as out:
        for blob in cert.cert_chain_pems:
            out.write(blob.bytes())
    ca_file = folder / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    port = free_port()
    argv = python_module(
        "gateway.mock", "--port", str(port), "--certfile", str(chain), "--keyfile", str(key)
    )
    server = ServerProcess(argv, port, ca_file=str(ca_file))
    server.start(folder / "mock.log")
    yield server
    server.stop()


def _config(upstream: ServerProcess) -> dict[str, object]:
    return {
        "providers": {"secure": {"base_url": upstream.url + "/v1", "api_key": "${PROVIDER_KEY}"}},
        "models": [{"name": "mock-gpt", "provider": "secure"}],
        "auth": {"enabled": False},
    }


def test_https_upstream_with_trusted_ca(
    gateway_factory: GatewayFactory, tls_upstream: ServerProcess, ca: trustme.CA, tmp_path: Path
) -> None:
    """With the provider's CA trusted (SSL_CERT_FILE), plain and streamed answers go through."""
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    gateway = gateway_factory(_config(tls_upstream), env={"SSL_CERT_FILE": str(ca_file)})
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0) as sdk:
        assert sdk.responses.create(model="mock-gpt", input="hello over TLS").output_text
        with sdk.responses.stream(model="mock-gpt", input="and streamed") as stream:
            assert stream.get_final_response().status == "completed"


def test_https_upstream_with_unknown_ca_is_refused(
    gateway_factory: GatewayFactory, tls_upstream: ServerProcess
) -> None:
    """A certificate the gateway cannot verify is never used: the client gets a 502."""
    gateway = gateway_factory(_config(tls_upstream))
    response = httpx.post(
        gateway.url + "/v1/responses", json={"model": "mock-gpt", "input": "x"}, timeout=10
    )
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_unavailable"
