"""Which deployment (provider) serves a request for a model, and how its body is adapted for it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import msgspec

from ..errors import ModelNotFound
from ..headers import FORWARDED
from ..settings import EMBEDDED, ProviderSettings, Settings

_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class Route:
    """Where one client-facing model goes."""

    model: str
    provider: str
    upstream_model: str
    path: bytes
    """Request target of the provider's /responses endpoint, e.g. `/v1/responses`."""
    fixed_headers: bytes = field(repr=False)
    """Header lines the gateway sets on every upstream request (credentials included: never
    log), encoded once."""
    forwarded: frozenset[bytes]
    """Lower-case names of the client headers sent on: `headers.FORWARDED` and the provider's
    `forward_headers` (for the embedded upstream, its steering headers too), less the names of
    `fixed_headers`."""
    drop_fields: frozenset[str]

    @property
    def rewrites(self) -> bool:
        """True when the body cannot be forwarded byte for byte."""
        return self.upstream_model != self.model or bool(self.drop_fields)

    def upstream_body(self, body: bytes) -> bytes:
        """The body to send upstream: the client's bytes unless this route must change them."""
        if not self.rewrites:
            return body
        decoded: dict[str, Any] = msgspec.json.decode(body)
        present = self.drop_fields.intersection(decoded)
        if self.upstream_model == self.model and not present:
            return body
        for name in present:
            del decoded[name]
        decoded["model"] = self.upstream_model
        return _encoder.encode(decoded)


class Router:
    """Resolves a request's `model` to the `Route` of one of its deployments."""

    def __init__(self, settings: Settings, base_urls: dict[str, str]) -> None:
        """`base_urls` gives the real URL of providers whose configured one is `embedded`."""
        self._single: dict[str, Route] = {}
        self._several: dict[str, Weighted] = {}
        for model in settings.models:
            routes = [
                _route(model.name, d.provider, d.upstream_model, settings, base_urls)
                for d in model.served_by()
            ]
            if len(routes) == 1:
                self._single[model.name] = routes[0]
            else:
                self._several[model.name] = Weighted(routes, [d.weight for d in model.deployments])

    def resolve(self, model: str) -> Route:
        """The route for `model` (the next of its deployments), or 404 `model_not_found`."""
        route = self._single.get(model)
        if route is not None:
            return route
        several = self._several.get(model)
        if several is None:
            raise ModelNotFound(model)
        return several.pick()


class Weighted:
    """Smooth weighted round robin: of every sum-of-weights picks, each route gets exactly its
    weight, spread evenly (3:1 picks A A B A, never A A A B), not a random draw."""

    __slots__ = ("_current", "_routes", "_total", "_weights")

    def __init__(self, routes: list[Route], weights: list[int]) -> None:
        self._routes, self._weights = routes, weights
        self._current = [0] * len(routes)
        self._total = sum(weights)

    def pick(self) -> Route:
        """The next route."""
        current, best = self._current, 0
        for i, weight in enumerate(self._weights):
            current[i] += weight
            if current[i] > current[best]:
                best = i
        current[best] -= self._total
        return self._routes[best]


def _route(
    model: str,
    provider_name: str,
    upstream_model: str | None,
    settings: Settings,
    base_urls: dict[str, str],
) -> Route:
    provider = settings.providers[provider_name]
    base = base_urls.get(provider_name, provider.base_url)
    fixed = _fixed_headers(provider)
    return Route(
        model=model,
        provider=provider_name,
        upstream_model=upstream_model or model,
        path=(urlsplit(base).path.rstrip("/") + "/responses").encode(),
        fixed_headers=b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in fixed.items()),
        forwarded=_forwarded(provider) - {k.encode() for k in fixed},
        drop_fields=frozenset(provider.drop_fields),
    )


def _fixed_headers(provider: ProviderSettings) -> dict[str, str]:
    headers = {k.lower(): v for k, v in provider.headers.items()}
    headers["content-type"] = "application/json"
    headers["accept-encoding"] = "identity"  # bodies pass through as sent: no re-encoding
    key = provider.api_key
    if key and provider.base_url != EMBEDDED and provider.auth != "none":
        name, template = _AUTH_HEADERS[provider.auth]
        headers[name] = template.format(key)
    return headers


_AUTH_HEADERS = {
    "bearer": ("authorization", "Bearer {}"),
    "api-key": ("api-key", "{}"),
    "x-api-key": ("x-api-key", "{}"),
}
"""The header each `providers.*.auth` style sends the provider key in, and its value."""


def _forwarded(provider: ProviderSettings) -> frozenset[bytes]:
    names = [*provider.forward_headers]
    if provider.base_url == EMBEDDED:
        from ..mock import STEERING_HEADERS  # only needed in this mode

        names += STEERING_HEADERS
    return FORWARDED | {name.lower().encode() for name in names}
