"""The usage ledger: one record per request, written to Redis off the request path.

`Ledger.record` only appends to an in-memory queue; a background task writes the queue in
batches (`lua/ledger_append.lua`: the stream entry and the day's sums in one atomic step,
idempotent by record id). While Redis cannot take them, records wait and are retried; the queue
is bounded (`ledger.buffer_records`), and a record that must be dropped is logged. At shutdown
the queue is written out before the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import deque
from typing import Any

import msgspec

from .exchange import Exchange
from .metrics import Metrics
from .redis_keys import RedisKeys
from .redis_store import RedisStore
from .script_batch import ScriptBatcher, ScriptRefused
from .settings import LedgerSettings

BATCH = 256
RETRY_PAUSES = (0.2, 0.5, 1.0, 2.0, 5.0)
_MEASURES = (
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
    "reasoning_tokens",
    "total_tokens",
)


class UsageRecord(msgspec.Struct, omit_defaults=True):
    """What one request used, whatever its end."""

    id: str
    """Unique per record: the idempotency key of its write."""
    request_id: str
    time: float
    """Unix time the request arrived."""
    end: str
    """completed, incomplete, failed, rejected, error or client_disconnected."""
    status: int
    stream: bool
    user: str | None = None
    key_id: str | None = None
    team: str | None = None
    model: str | None = None
    provider: str | None = None
    upstream_model: str | None = None
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    total_tokens: int = 0
    latency_ms: float | None = None
    ttft_ms: float | None = None
    request_user: str | None = None
    metadata: dict[str, str] | None = None
    response_id: str | None = None

    def day(self) -> str:
        return time.strftime("%Y-%m-%d", time.gmtime(self.time))

    def sums(self) -> list[str | int]:
        """The prefixes of the day's sum fields (``user TAB model TAB``) and of the user's
        month sum fields (``day TAB model TAB``), then measure, amount pairs."""
        model = self.model or "-"
        out: list[str | int] = [f"{self.user or '-'}\t{model}\t", f"{self.day()}\t{model}\t"]
        out += ["requests", 1]
        for measure in _MEASURES:
            amount = getattr(self, measure)
            if amount:
                out += [measure, amount]
        return out


_encoder = msgspec.json.Encoder()


def encode(record: UsageRecord) -> bytes:
    """The stream entry's `r` field."""
    return _encoder.encode(record)


def record_of(ex: Exchange, wall_started: float, log: dict[str, Any]) -> UsageRecord:
    """The ledger record of a finished exchange; `log`: its canonical log line's fields."""
    usage = ex.outcome.usage if ex.outcome is not None else None
    return UsageRecord(
        id=os.urandom(10).hex(),
        request_id=ex.request_id,
        time=round(wall_started, 3),
        end=ex.end(),
        status=ex.status,
        stream=ex.stream,
        user=ex.caller,
        key_id=ex.key_id,
        team=ex.team,
        model=ex.model,
        provider=ex.provider,
        upstream_model=ex.upstream_model,
        input_tokens=usage.input_tokens if usage else 0,
        cached_input_tokens=usage.cached_input_tokens if usage else 0,
        output_tokens=usage.output_tokens if usage else 0,
        reasoning_tokens=usage.reasoning_tokens if usage else 0,
        total_tokens=usage.total_tokens if usage else 0,
        latency_ms=log["latency_ms"],
        ttft_ms=log["ttft_ms"],
        request_user=ex.user,
        metadata=ex.metadata,
        response_id=ex.outcome.response_id if ex.outcome is not None else None,
    )


class Ledger:
    """The queue of records not yet in Redis, and the task that writes them."""

    def __init__(
        self,
        store: RedisStore,
        keys: RedisKeys,
        settings: LedgerSettings,
        log: Any,
        metrics: Metrics,
    ) -> None:
        self._store, self._keys, self._settings, self._log = store, keys, settings, log
        self._metrics = metrics
        self._script = store.script("ledger_append")
        self._batch = ScriptBatcher(store, "ledger", log)
        self._queue: deque[UsageRecord] = deque()
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self.written = 0
        self.dropped = 0

    @property
    def backlog(self) -> int:
        """Records waiting to be written."""
        return len(self._queue)

    def start(self) -> None:
        self._writer = asyncio.get_running_loop().create_task(self._write_forever())

    def record(self, record: UsageRecord) -> None:
        """Queue a record; never waits, never fails."""
        if len(self._queue) >= self._settings.buffer_records:
            self._drop(self._queue.popleft(), backlog=len(self._queue))
        self._queue.append(record)
        self._wake.set()

    async def close(self, deadline: float = 10.0) -> None:
        """Stop the writer and write out what is queued, for at most `deadline` seconds."""
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        until = time.monotonic() + deadline
        while self._queue and time.monotonic() < until:
            if not await self._write_batch():
                await asyncio.sleep(0.2)
        if self._queue:
            self._log.error("ledger_unwritten_at_shutdown", records=len(self._queue))

    async def _write_forever(self) -> None:
        failures = 0
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
            written = await self._write_batch()
            self._metrics.ledger_backlog.set(len(self._queue))
            if written:
                failures = 0
                continue
            await asyncio.sleep(RETRY_PAUSES[min(failures, len(RETRY_PAUSES) - 1)])
            failures += 1

    async def _write_batch(self) -> bool:
        """Write the oldest records; False (keeping them queued) when Redis cannot take them."""
        batch = [self._queue[i] for i in range(min(BATCH, len(self._queue)))]
        settings = self._settings
        retention_s = int(settings.retention_days * 86_400)
        head = (settings.dedupe_seconds, retention_s * 1000, retention_s + 86_400)
        results = await asyncio.gather(
            *(
                self._batch.run(
                    self._script,
                    self._keys.ledger(record.id, record.day(), record.user or "-"),
                    [*head, encode(record), *record.sums()],
                )
                for record in batch
            ),
            return_exceptions=True,
        )
        for record, result in zip(batch, results, strict=True):
            if isinstance(result, ScriptRefused):  # it would be refused forever
                self._drop(record, error=str(result)[:200])
            elif isinstance(result, BaseException):
                return False  # unreachable or slow: keep them all, retry (writes count once)
        # Written (or found already written): only now do they leave the queue. The queue may
        # have dropped its oldest meanwhile (full), so leave by id, not by count.
        done = {record.id for record in batch}
        while self._queue and self._queue[0].id in done:
            self._queue.popleft()
        self.written += len(batch)
        self._metrics.ledger_written.inc(len(batch))
        return True

    def _drop(self, record: UsageRecord, **why: Any) -> None:
        self.dropped += 1
        self._metrics.ledger_dropped.inc()
        self._log.error(
            "ledger_record_dropped",
            request_id=record.request_id,
            user=record.user,
            total_tokens=record.total_tokens,
            **why,
        )
