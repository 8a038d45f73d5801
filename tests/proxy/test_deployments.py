"""A model served by several deployments, through a real gateway: each request goes to one of
them by weight, under the name that deployment knows, and its log line says which."""

from __future__ import annotations

from collections import Counter

import httpx

from tests.support.gateway import GatewayFactory, eventually, log_lines
from tests.support.procs import ServerProcess
from tests.support.scripted_upstream import STEERING_HEADERS


def test_requests_split_by_weight_and_say_where_they_went(
    gateway_factory: GatewayFactory, scripted_upstream: ServerProcess
) -> None:
    """400 requests over weights 3:1 reach the two providers 300 and 100 times, each asked
    for its own upstream model; the short form beside it keeps its one provider."""
    upstream = {
        "base_url": scripted_upstream.url + "/v1",
        "api_key": "${PROVIDER_KEY}",
        "forward_headers": list(STEERING_HEADERS),
    }
    gateway = gateway_factory(
        {
            "providers": {"east": upstream, "west": upstream},
            "models": [
                {
                    "name": "split",
                    "deployments": [
                        {"provider": "east", "upstream_model": "split-east", "weight": 3},
                        {"provider": "west", "upstream_model": "split-west"},
                    ],
                },
                {"name": "single", "provider": "west"},
            ],
            "auth": {"enabled": False},
        }
    )
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        for model in ["split"] * 400 + ["single"] * 10:
            response = client.post("/v1/responses", json={"model": model, "input": "hi"})
            assert response.status_code == 200, response.text

    def requests() -> list[dict[str, object]]:
        return [line for line in log_lines(gateway) if line.get("event") == "request"]

    eventually(lambda: len(requests()) == 410)
    served = Counter((r["model"], r["provider"], r["upstream_model"]) for r in requests())
    assert served == {
        ("split", "east", "split-east"): 300,
        ("split", "west", "split-west"): 100,
        ("single", "west", "single"): 10,
    }
