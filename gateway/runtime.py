"""The process's resources: upstream pools, the embedded upstream, the router.

Created by `create_app`, opened and closed by the app's lifespan; nothing lives at module level.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from litestar import Litestar
from litestar.types import Receive, Scope, Send

from .errors import ServiceUnavailable
from .proxy import ResponsesEndpoint
from .request_ids import RequestIds
from .routing import Router
from .settings import EMBEDDED, Settings
from .upstream import Upstreams


class Runtime:
    """Everything a running gateway holds open."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ready = False
        self.log = structlog.get_logger("gateway")
        self.ids = RequestIds()
        self._upstreams = Upstreams(settings.providers)
        self._endpoint: ResponsesEndpoint | None = None
        self._embedded: list[Any] = []

    @asynccontextmanager
    async def lifespan(self, _app: Litestar) -> AsyncIterator[None]:
        """Open the resources for the app's lifetime, and close them all."""
        try:
            base_urls = await self._start_embedded()
            await self._upstreams.open(base_urls)
            router = Router(self.settings, base_urls)
            self._endpoint = ResponsesEndpoint(
                router, self._upstreams, self.ids, self.settings.server.max_body_bytes, self.log
            )
            self.ready = True
            yield
        finally:
            self.ready = False
            await self._upstreams.close()
            for runner in self._embedded:
                await runner.cleanup()

    async def responses(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point of POST /v1/responses."""
        endpoint = self._endpoint
        if endpoint is None:
            raise ServiceUnavailable("The gateway is starting up.")
        await endpoint(scope, receive, send)

    async def _start_embedded(self) -> dict[str, str]:
        """Start the built-in upstream for every provider configured as `embedded`."""
        base_urls: dict[str, str] = {}
        for name, provider in self.settings.providers.items():
            if provider.base_url != EMBEDDED:
                continue
            from .mock import MockSettings, start_mock_server  # only needed in this mode

            served = tuple(
                m.upstream_model or m.name for m in self.settings.models if m.provider == name
            )
            runner, url = await start_mock_server(MockSettings(models=served))
            self._embedded.append(runner)
            base_urls[name] = url
            self.log.info("embedded_upstream_started", provider=name, base_url=url)
        return base_urls
