"""The process's resources: Redis, upstream pools, the embedded servers, the router.

Created by `create_app`, opened and closed by the app's lifespan; nothing lives at module level.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import structlog
from litestar import Litestar
from litestar.types import Receive, Scope, Send

from .errors import ServiceUnavailable
from .identity import Authenticator, KeyHasher, KeyStore
from .ledger import Ledger, UsageReports
from .metrics import Metrics
from .proxy import ResponsesEndpoint, Router
from .quotas import Limiter
from .request_ids import RequestIds
from .server import Draining
from .settings import EMBEDDED, Settings
from .state import EmbeddedRedis, RedisKeys, RedisStore, RedisUnavailable, ScriptBatcher
from .upstream import Upstreams

OnReady = Callable[["Runtime"], Any]

MEMORY_RETRY_SECONDS = 600
"""After Redis refused `INFO memory`, wait this long before asking again (the ACL may change)."""


class Runtime:
    """Everything a running gateway holds open."""

    def __init__(
        self, settings: Settings, on_ready: OnReady | None = None, metrics_dir: str | None = None
    ) -> None:
        self.settings = settings
        self.metrics = Metrics(metrics_dir)
        self.ready = False
        self.log = structlog.get_logger("gateway")
        self.draining = Draining(self.log, settings.server.drain_seconds)
        """SIGTERM came: this replica finishes what it serves and takes nothing new."""
        self.ids = RequestIds()
        self.redis_keys = RedisKeys()
        self.store: RedisStore | None = None
        self.keystore: KeyStore | None = None
        self.auth: Authenticator | None = None
        self.limiter: Limiter | None = None
        self.ledger: Ledger | None = None
        self.reports: UsageReports | None = None
        self._on_ready = on_ready
        self._upstreams = Upstreams(settings.providers)
        self._endpoint: ResponsesEndpoint | None = None
        self._embedded: list[Any] = []
        self._redis_server: EmbeddedRedis | None = None
        self._renewing: asyncio.Task[None] | None = None
        self._memory_retry_at = 0.0
        """When to read Redis's memory again after Redis refused it (`time.monotonic()`)."""

    @property
    def fail_open(self) -> bool:
        return self.settings.redis.on_failure == "fail_open"

    @asynccontextmanager
    async def lifespan(self, _app: Litestar) -> AsyncIterator[None]:
        """Open the resources for the app's lifetime, and close them all."""
        try:
            if self.settings.auth.enabled:
                await self._open_redis()
            base_urls = await self._start_embedded()
            await self._upstreams.open(base_urls)
            router = Router(self.settings, base_urls)
            self._endpoint = ResponsesEndpoint(
                router,
                self._upstreams,
                self.ids,
                self.settings.server.max_body_bytes,
                self.log,
                auth=self.auth,
                limiter=self.limiter,
                ledger=self.ledger,
                metrics=self.metrics if self.settings.metrics.enabled else None,
                default_output_tokens=self.settings.limits.default_output_tokens,
            )
            if self._on_ready is not None:
                await self._on_ready(self)
            self.ready = True
            restore = self.draining.install()
            try:
                yield
            finally:
                restore()
        finally:
            self.ready = False
            await self._close()
            self.log.info(
                "shutdown_complete",
                ledger_written=self.ledger.written if self.ledger else 0,
                ledger_unwritten=self.ledger.backlog if self.ledger else 0,
                ledger_dropped=self.ledger.dropped if self.ledger else 0,
            )

    async def _open_redis(self) -> None:
        url = self.settings.redis.url  # None in sentinel mode: the Sentinels name the primary
        if url == EMBEDDED:
            self._redis_server = EmbeddedRedis()
            url = await self._redis_server.start()
            self.log.info("embedded_redis_started", url=url)
        self.store = RedisStore(self.settings.redis, url, self.log, self.metrics)
        self.keystore = KeyStore(self.store, self.redis_keys, KeyHasher(self.settings.auth.pepper))
        self.reports = UsageReports(self.store, self.redis_keys)
        self.auth = Authenticator(
            self.settings.auth, self.keystore, self.fail_open, self.log, self.metrics
        )
        await self.auth.open()
        # One queue of script calls for quotas and the ledger: each event-loop turn's calls
        # go to Redis together.
        scripts = ScriptBatcher(self.store, "scripts", self.log)
        self.limiter = Limiter(
            self.store,
            self.redis_keys,
            self.settings.limits,
            self.fail_open,
            self.log,
            self.metrics,
            scripts,
        )
        if self.settings.ledger.enabled:
            self.ledger = Ledger(
                self.store, self.redis_keys, self.settings.ledger, self.log, self.metrics, scripts
            )
        self._renewing = asyncio.get_running_loop().create_task(self.limiter.renew_leases())
        if not await self.store.warm():
            self.log.warning("redis_unreachable_at_start", policy=self.settings.redis.on_failure)
        if self.ledger is not None:
            self.ledger.start()

    async def _close(self) -> None:
        if self._renewing is not None:
            self._renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewing
        # Together: settlements retried while Redis is down must not eat the ledger's time.
        await asyncio.gather(
            self.limiter.drain() if self.limiter is not None else asyncio.sleep(0),
            self.ledger.close() if self.ledger is not None else asyncio.sleep(0),
        )
        if self.auth is not None:
            await self.auth.close()
        if self.store is not None:
            await self.store.close()
        if self._redis_server is not None:
            await self._redis_server.stop()
        await self._upstreams.close()
        for runner in self._embedded:
            await runner.cleanup()

    async def readiness(self) -> dict[str, Any]:
        """What /readyz reports; `ready` is False when this replica should get no traffic."""
        if self.draining.on:
            return {"ready": False, "status": "draining"}
        if not self.ready:
            return {"ready": False, "status": "starting"}
        if self.store is None:
            return {"ready": True, "status": "ready"}
        redis_ok = await self.store.ping()  # fails fast while the breaker is open
        policy = self.settings.redis.on_failure
        report: dict[str, Any] = {
            "ready": redis_ok or self.fail_open,
            "status": "ready" if redis_ok else f"redis unreachable ({policy})",
            "redis": "ok" if redis_ok else "unreachable",
            "redis_policy": policy,
            "redis_failures": self.store.failures,
            "policy_uses": self.policy_uses,
            "ledger_backlog": self.ledger.backlog if self.ledger else 0,
            "ledger_dropped": self.ledger.dropped if self.ledger else 0,
        }
        return report

    async def refresh_gauges(self) -> None:
        """Set the gauges only a scrape needs: this worker's backlog, and Redis's memory (NaN
        while Redis cannot say: its breaker is open, the read failed, or Redis refused it,
        which is then said once and not asked again for `MEMORY_RETRY_SECONDS`)."""
        if self.ledger is not None:
            self.metrics.ledger_backlog.set(self.ledger.backlog)
        store, metrics = self.store, self.metrics
        if store is None or time.monotonic() < self._memory_retry_at:
            return
        used = limit = math.nan
        if store.breaker.closed:  # a scrape never probes a Redis believed down
            try:
                used, limit = await store.memory(self.redis_keys.ledger_stream())
            except RedisUnavailable as exc:
                if exc.refused:  # an ACL without +info, a server without INFO memory
                    self._memory_retry_at = time.monotonic() + MEMORY_RETRY_SECONDS
                    self.log.warning(
                        "redis_memory_unreadable",
                        detail=str(exc.__cause__)[:200],
                        retry_seconds=MEMORY_RETRY_SECONDS,
                        hint="the ACL rule +info allows it",
                    )
        metrics.redis_memory_used.set(used)
        metrics.redis_memory_max.set(limit)

    @property
    def policy_uses(self) -> int:
        """Requests decided by the Redis failure policy, since start."""
        used = self.limiter.policy_uses if self.limiter else 0
        return used + (self.auth.policy_uses if self.auth else 0)

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
                d.upstream_model or m.name
                for m in self.settings.models
                for d in m.served_by()
                if d.provider == name
            )
            runner, url = await start_mock_server(MockSettings(models=served))
            self._embedded.append(runner)
            base_urls[name] = url
            self.log.info("embedded_upstream_started", provider=name, base_url=url)
        return base_urls
