"""Which provider serves a model, and how the request body is adapted for it."""

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
    """Resolves a request's `model` to its `Route`."""

    def __init__(self, settings: Settings, base_urls: dict[str, str]) -> None:
        """`base_urls` gives the real URL of providers whose configured one is `embedded`."""
        self._routes: dict[str, Route] = {}
        for model in settings.models:
            provider = settings.providers[model.provider]
            base = base_urls.get(model.provider, provider.base_url)
            fixed = _fixed_headers(provider)
            self._routes[model.name] = Route(
                model=model.name,
                provider=model.provider,
                upstream_model=model.upstream_model or model.name,
                path=(urlsplit(base).path.rstrip("/") + "/responses").encode(),
                fixed_headers=b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in fixed.items()),
                forwarded=_forwarded(provider) - {k.encode() for k in fixed},
                drop_fields=frozenset(provider.drop_fields),
            )

    def resolve(self, model: str) -> Route:
        """The route for `model`, or 404 `model_not_found`."""
        route = self._routes.get(model)
        if route is None:
            raise ModelNotFound(model)
        return route


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
