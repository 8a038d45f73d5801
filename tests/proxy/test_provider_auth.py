"""How the gateway presents its key to each provider (`providers.*.auth`), checked at a real
upstream: exactly one credential, the provider's own, in the header its style names."""

from __future__ import annotations

import httpx
import pytest

from tests.support.gateway import CLIENT_KEY, PROVIDER_KEY, GatewayFactory, upstream_requests
from tests.support.procs import ServerProcess
from tests.support.scripted_upstream import STEERING_HEADERS

CREDENTIAL_HEADERS = ("authorization", "api-key", "x-api-key")
STYLES = {  # auth style: the header that must carry the key, and its value
    "bearer": ("authorization", f"Bearer {PROVIDER_KEY}"),
    "api-key": ("api-key", PROVIDER_KEY),
    "x-api-key": ("x-api-key", PROVIDER_KEY),
    "none": (None, None),
}


@pytest.fixture(scope="module")
def styled(gateway_factory: GatewayFactory, scripted_upstream: ServerProcess) -> ServerProcess:
    """A gateway with one provider per auth style, all in front of the scripted upstream."""
    providers = {
        style: {
            "base_url": scripted_upstream.url + "/v1",
            "auth": style,
            "forward_headers": list(STEERING_HEADERS),
            **({} if style == "none" else {"api_key": "${PROVIDER_KEY}"}),
        }
        for style in STYLES
    }
    return gateway_factory(
        {
            "providers": providers,
            "models": [{"name": f"via-{style}", "provider": style} for style in STYLES],
            "auth": {"enabled": False},
        }
    )


@pytest.mark.parametrize("style", list(STYLES))
def test_the_key_goes_in_the_header_its_style_names(
    styled: ServerProcess, scripted_upstream: ServerProcess, style: str
) -> None:
    """The provider gets its key in one header (none for `auth: none`); the client's own
    credentials, in any of the three headers, never reach it."""
    response = httpx.post(
        f"{styled.url}/v1/responses",
        json={"model": f"via-{style}", "input": "hi"},
        headers={
            "authorization": f"Bearer {CLIENT_KEY}",
            "api-key": CLIENT_KEY,
            "x-api-key": CLIENT_KEY,
        },
        timeout=10,
    )
    assert response.status_code == 200, response.text
    sent = {k.lower(): v for k, v in upstream_requests(scripted_upstream)[-1]["headers"]}
    name, value = STYLES[style]
    credentials = {k: v for k, v in sent.items() if k in CREDENTIAL_HEADERS}
    assert credentials == ({} if name is None else {name: value})
    assert PROVIDER_KEY not in response.text
