"""The HTTP client toward providers: pooled connections, timeouts, errors mapped once.

aiohttp is used directly on this path: measured on this machine (see README, "Performance"),
httpx's default transport forwards about 520 requests/s from one worker and httpx over an
aiohttp transport about 1,650, where aiohttp alone carries about 4,100.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import aiohttp

from .errors import BadGateway, GatewayTimeout
from .settings import ProviderSettings


class Upstreams:
    """One connection pool per provider, opened and closed by the app's lifespan."""

    def __init__(self, providers: dict[str, ProviderSettings]) -> None:
        self._providers = providers
        self._sessions: dict[str, aiohttp.ClientSession] = {}

    async def open(self) -> None:
        """Create the pools (inside the running event loop)."""
        for name, provider in self._providers.items():
            connector = aiohttp.TCPConnector(
                limit=provider.max_connections,
                ttl_dns_cache=300,
                enable_cleanup_closed=True,
            )
            self._sessions[name] = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    sock_connect=provider.connect_timeout,
                    sock_read=provider.read_timeout,
                ),
                auto_decompress=False,  # bytes reach the client exactly as the provider sent them
                skip_auto_headers=("User-Agent",),
                cookie_jar=aiohttp.DummyCookieJar(),
            )

    async def close(self) -> None:
        """Close every pool."""
        sessions, self._sessions = self._sessions, {}
        for session in sessions.values():
            await session.close()

    async def post(
        self, provider: str, url: str, body: bytes, headers: dict[str, str]
    ) -> aiohttp.ClientResponse:
        """Send the request and return once the response headers are in."""
        with mapped_errors(provider, "did not answer in time", "could not be reached"):
            return await self._sessions[provider].post(
                url, data=body, headers=headers, allow_redirects=False
            )


async def read_all(response: aiohttp.ClientResponse, provider: str) -> bytes:
    """The whole body of a non-streamed answer."""
    with mapped_errors(provider, "stopped sending its answer", "broke off its answer"):
        return await response.read()


@contextmanager
def mapped_errors(provider: str, timed_out: str, failed: str) -> Iterator[None]:
    """Client errors, translated once: a timeout is a 504, any other failure a 502."""
    try:
        yield
    except TimeoutError as exc:
        raise GatewayTimeout(
            f"The upstream provider '{provider}' {timed_out}.", code="upstream_timeout"
        ) from exc
    except aiohttp.ClientError as exc:
        raise BadGateway(
            f"The upstream provider '{provider}' {failed} ({type(exc).__name__}).",
            code="upstream_unavailable",
        ) from exc
