"""The calls to providers: one connection pool per provider, errors mapped once.

The pools are `http1.Pool`s, a lean HTTP/1.1 client: on one core it carried about 28 times
httpx's requests per second and twice aiohttp's when they were compared (`python -m
bench.clients`; the figures are in bench/README.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import BadGateway, GatewayTimeout
from ..settings import ProviderSettings
from .errors import TooLarge, UpstreamError
from .http1 import Pool
from .response import Response


class Upstreams:
    """One connection pool per provider, opened and closed by the app's lifespan."""

    def __init__(self, providers: dict[str, ProviderSettings]) -> None:
        self._providers = providers
        self._pools: dict[str, Pool] = {}

    async def open(self, base_urls: dict[str, str]) -> None:
        """Create the pools (inside the running event loop); `base_urls` resolves `embedded`."""
        for name, provider in self._providers.items():
            self._pools[name] = Pool(
                base_urls.get(name, provider.base_url),
                max_connections=provider.max_connections,
                connect_timeout=provider.connect_timeout,
                read_timeout=provider.read_timeout,
                idle_timeout=provider.idle_timeout,
                max_body_bytes=provider.max_response_bytes,
            )

    async def close(self) -> None:
        """Close every pool's idle connections."""
        pools, self._pools = self._pools, {}
        for pool in pools.values():
            pool.close()

    def settings(self, provider: str) -> ProviderSettings:
        """The configuration of one provider."""
        return self._providers[provider]

    async def post(self, provider: str, path: bytes, body: bytes, headers: bytes) -> Response:
        """Send the request and return once the response head is in."""
        with mapped_errors(provider, "did not answer in time", "could not be reached"):
            return await self._pools[provider].request(path, headers, body)


async def read_all(response: Response, provider: str) -> bytes:
    """The whole body of a non-streamed answer."""
    with mapped_errors(provider, "stopped sending its answer", "broke off its answer"):
        return await response.read()


@contextmanager
def mapped_errors(provider: str, timed_out: str, failed: str) -> Iterator[None]:
    """Client errors, translated once: a timeout is a 504, any other failure a 502."""
    try:
        yield
    except TooLarge as exc:
        raise BadGateway(
            f"The upstream provider '{provider}' sent an answer larger than the gateway relays.",
            code="upstream_response_too_large",
        ) from exc
    except TimeoutError as exc:
        raise GatewayTimeout(
            f"The upstream provider '{provider}' {timed_out}.", code="upstream_timeout"
        ) from exc
    except UpstreamError as exc:
        raise BadGateway(
            f"The upstream provider '{provider}' {failed} ({type(exc).__name__}).",
            code="upstream_unavailable",
        ) from exc
