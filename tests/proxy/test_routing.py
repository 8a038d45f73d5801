"""Several deployments behind one model: each request goes to one, by weight."""

from __future__ import annotations

from collections import Counter

from gateway.proxy import Router
from gateway.settings import settings_from_dict


def _router(weights: dict[str, int]) -> Router:
    raw = {
        "providers": {name: {"base_url": f"http://{name}.test/v1"} for name in weights},
        "models": [
            {
                "name": "m",
                "deployments": [
                    {"provider": name, "upstream_model": f"m-{name}", "weight": weight}
                    for name, weight in weights.items()
                ],
            },
            {"name": "short", "provider": next(iter(weights))},
        ],
        "auth": {"enabled": False},
    }
    return Router(settings_from_dict(raw, "test"), {})


def test_weights_give_each_deployment_exactly_its_share() -> None:
    """10,000 requests over weights 3:1 land 7,500 and 2,500, each with its upstream name."""
    router = _router({"a": 3, "b": 1})
    routes = [router.resolve("m") for _ in range(10_000)]
    assert Counter(r.provider for r in routes) == {"a": 7_500, "b": 2_500}
    assert {(r.provider, r.upstream_model, r.model) for r in routes} == {
        ("a", "m-a", "m"),
        ("b", "m-b", "m"),
    }


def test_the_choice_is_spread_not_bunched() -> None:
    """Smooth: every window of 4 requests at 3:1 holds exactly one for the lighter one, and
    5:3:2 reaches each deployment within any 10."""
    router = _router({"a": 3, "b": 1})
    picks = [router.resolve("m").provider for _ in range(400)]
    assert all(picks[i : i + 4].count("b") == 1 for i in range(0, 400, 4))
    assert picks[:4] == ["a", "a", "b", "a"]
    uneven = _router({"a": 5, "b": 3, "c": 2})
    picks = [uneven.resolve("m").provider for _ in range(1_000)]
    assert all(set(picks[i : i + 10]) == {"a", "b", "c"} for i in range(0, 990))


def test_the_short_form_is_one_deployment() -> None:
    """`provider:` on the model still routes every request to that provider."""
    router = _router({"a": 3, "b": 1})
    assert {router.resolve("short").provider for _ in range(10)} == {"a"}
