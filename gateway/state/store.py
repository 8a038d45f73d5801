"""The connection to Redis, behind a timeout and a circuit breaker.

Every Redis call of the request path goes through `RedisStore.call`: it never takes longer than
`redis.timeout`, and after `breaker_failures` consecutive failures the breaker opens so that a
dead Redis costs a request one comparison instead of a timeout. After `breaker_cooldown` one
call (a request's or a readiness probe's) tries again; its success closes the breaker.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any, TypeVar

from redis.exceptions import RedisClusterException, RedisError, ResponseError

from ..metrics import Metrics
from ..settings import RedisSettings
from .client import Client, close, connect, memory, ready

T = TypeVar("T")


class RedisUnavailable(Exception):
    """Redis did not answer in time, refused, or the breaker is open."""

    def __init__(self, message: str, *, maybe_ran: bool = True, refused: bool = False) -> None:
        super().__init__(message)
        self.maybe_ran = maybe_ran
        """False when the command was never sent (the breaker refused it)."""
        self.refused = refused
        """Redis answered with an error (no permission, unknown command): asking again the
        same way gets the same answer."""


class Breaker:
    """Closed → (N failures) → open → (cooldown) → half-open: one probe → closed or open."""

    __slots__ = ("_clock", "_cooldown", "_failures", "_open_until", "_probing", "_threshold")

    def __init__(
        self, threshold: int, cooldown: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._threshold, self._cooldown, self._clock = threshold, cooldown, clock
        self._failures = 0
        self._open_until: float | None = None
        self._probing = False

    @property
    def closed(self) -> bool:
        """True while Redis is believed healthy."""
        return self._open_until is None

    def allow(self) -> bool:
        """May a call go to Redis now?"""
        if self._open_until is None:
            return True
        if self._probing or self._clock() < self._open_until:
            return False
        self._probing = True  # half-open: this caller probes, the others fail fast
        return True

    def release_probe(self) -> None:
        """A probe ended without a verdict (cancelled): let the next call probe instead."""
        self._probing = False

    def success(self) -> None:
        self._failures, self._open_until, self._probing = 0, None, False

    def failure(self) -> bool:
        """Count a failure; True when it opened (or re-opened) the breaker."""
        self._failures += 1
        if self._probing or self._failures >= self._threshold:
            self._probing = False
            self._open_until = self._clock() + self._cooldown
            return True
        return False


class RedisStore:
    """The Redis client, its scripts and its health."""

    def __init__(
        self, settings: RedisSettings, url: str | None, log: Any, metrics: Metrics
    ) -> None:
        self._settings = settings
        self._log = log
        self._errors = metrics.redis_errors
        self.breaker = Breaker(settings.breaker_failures, settings.breaker_cooldown)
        self.client: Client = connect(settings, url)
        self._gate: asyncio.Semaphore | None = None
        if settings.mode != "standalone":
            # Sentinel's and Cluster's pools fail at once when all connections are taken; the
            # standalone pool makes callers wait. This makes them wait too (within the timeout).
            self._gate = asyncio.Semaphore(settings.max_connections)
        self._scripts: list[Any] = []
        self.failures = 0
        """Calls that failed or were refused by the open breaker, since start."""

    def script(self, name: str) -> Any:
        """The Lua script `gateway/state/lua/<name>.lua`, run by EVALSHA (loaded on first use)."""
        source = resources.files("gateway.state").joinpath("lua", f"{name}.lua").read_text("utf-8")
        script = self.client.register_script(source)
        self._scripts.append(script)
        return script

    async def warm(self) -> bool:
        """Load the scripts and open a few connections before traffic comes; False if Redis
        is unreachable (the gateway still starts: the failure policy applies)."""

        async def load(r: Client) -> None:
            for script in self._scripts:
                await r.script_load(script.script)

        try:
            await self.call(load, "script_load")
            await asyncio.gather(*(self.call(lambda r: r.ping(), "ping") for _ in range(8)))
        except RedisUnavailable:
            return False
        return True

    async def call(
        self,
        operation: Callable[[Client], Awaitable[T]],
        what: str,
        seconds: float | None = None,
        *,
        verdict: bool = True,
    ) -> T:
        """Run `operation` with the client, within `seconds` (default `redis.timeout`);
        `RedisUnavailable` if not. `verdict=False`: a failure says nothing about Redis's
        health (a long report, a query an admin got wrong): the breaker does not count it."""
        if not self.breaker.allow():
            self.failures += 1
            self._errors(what).inc()
            raise RedisUnavailable("the circuit breaker is open", maybe_ran=False)
        try:
            async with asyncio.timeout(seconds or self._settings.timeout):
                if self._gate is None:
                    result = await operation(self.client)
                else:
                    async with self._gate:
                        await ready(self.client)  # a Cluster's slots, learnt once
                        result = await operation(self.client)
        except BaseException as exc:
            if not isinstance(exc, RedisError | RedisClusterException | OSError | TimeoutError):
                self.breaker.release_probe()  # cancelled: not a verdict on Redis
                raise
            self.failures += 1
            self._errors(what).inc()
            if verdict:
                opened = self.breaker.failure()
            else:
                opened = False
                self.breaker.release_probe()
            self._log.warning(
                "redis_error",
                operation=what,
                error=type(exc).__name__,
                detail=str(exc)[:200],
                breaker="open" if opened or not self.breaker.closed else "closed",
            )
            refused = isinstance(exc, ResponseError)
            raise RedisUnavailable(f"{what}: {type(exc).__name__}", refused=refused) from exc
        if not self.breaker.closed:
            self._log.info("redis_recovered", operation=what)
        self.breaker.success()
        return result

    async def ping(self) -> bool:
        """Probe Redis (readiness); True when it answered."""
        try:
            await self.call(lambda r: r.ping(), "ping")
        except RedisUnavailable:
            return False
        return True

    async def memory(self, key: str) -> tuple[int, int]:
        """Memory used and ``maxmemory`` (0: no limit) of the node that holds `key`, in bytes;
        a failure is not held against Redis's health (a scrape asked, not a request)."""
        return await self.call(lambda r: memory(r, key), "info_memory", verdict=False)

    async def close(self) -> None:
        await close(self.client)
