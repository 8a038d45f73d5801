"""The usage ledger's writer: one record per request, written to Redis off the request path.

`Ledger.queue` only appends the finished request's record and its JSON (encoded once, for its
log line too: see `record.py`) to an in-memory queue: it runs at the end of every request. A
background task takes the queue every 10 ms, adds each record to its user's sums, and writes
the records in batches (`lua/ledger_append.lua`, packed in `batch.py`): a batch is one stream
entry (its field `r`: the records' JSON, one a line), written with its sums in one atomic step,
exactly once (each batch is numbered in its writer's order and Redis skips numbers already
applied). While Redis cannot take them, batches wait and are retried; the queue is bounded
(`ledger.buffer_records`), and a record that must be dropped is logged. At shutdown the queue
is written out before the process exits.

Running streams' progress is saved too (`Ledger.follow`, `Ledger.save`), so that a replica
killed mid-stream leaves its usage behind, and the records of replicas that died are adopted:
the two background rounds that do it are `recovery.py`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import time
from collections import deque
from typing import Any

from ..metrics import Metrics
from ..request_ids import RequestIds
from ..settings import LedgerSettings
from ..state import RedisKeys, RedisStore, RedisUnavailable, ScriptBatcher, ScriptRefused
from .batch import Batch, Packer
from .record import UsageRecord, encode
from .recovery import Following, Progress, adopt_orphans_forever, checkpoint_forever

BATCH = 256
"""Records per call of `lua/ledger_append.lua` at most (a quarter of `ledger.buffer_records`
if less): Redis is then busy ~0.4 ms at most."""
LINGER = 0.01
"""Seconds the writer waits after the first new record before it writes."""
RETRY_PAUSES = (0.2, 0.5, 1.0, 2.0, 5.0)


class Ledger:
    """The queue of records not yet in Redis, and the task that writes them."""

    def __init__(
        self,
        store: RedisStore,
        keys: RedisKeys,
        settings: LedgerSettings,
        log: Any,
        metrics: Metrics,
        batch: ScriptBatcher,
    ) -> None:
        """`batch`: the limiter's too, so that a write of records usually shares a round trip
        to Redis with admissions and settlements (a round trip of its own cost as much CPU as
        the rest of the ledger)."""
        self._store, self._keys, self._settings, self._log = store, keys, settings, log
        self._metrics = metrics
        self._script = store.script("ledger_append")
        self._save_script = store.script("ledger_save")
        self._orphans_script = store.script("ledger_orphans")
        self._batch = batch
        self._packer = Packer(keys, settings.retention_days)
        self._pending: list[tuple[UsageRecord, bytes | None]] = []
        """Records queued since the writer last took them, each with its JSON if encoded
        already (a request's is: its log line's)."""
        self._ids = RequestIds("rec")
        self._closed: deque[Batch] = deque()
        """Batches taken but not yet written, oldest first."""
        self._per_batch = min(BATCH, settings.buffer_records // 4)
        self._backlog = 0
        self._numbers = itertools.count(1)
        self._writer = secrets.token_hex(8)
        """This process's writer id: Redis keeps the last batch number it applied."""
        self._following: set[Following] = set()
        """Running streams."""
        self._saves: dict[str, UsageRecord] = {}
        """Running streams' usage so far, not yet saved (the latest of each)."""
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.written = 0
        self.dropped = 0

    @property
    def backlog(self) -> int:
        """Records waiting to be written."""
        return self._backlog

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._write_forever()),
            loop.create_task(
                adopt_orphans_forever(
                    self._batch,
                    self._orphans_script,
                    self._keys,
                    self._settings,
                    self._writer,
                    self.queue,
                    self._log,
                )
            ),
            loop.create_task(
                checkpoint_forever(self._following, self._settings, self._ids, self.save, self._log)
            ),
        ]

    def new_id(self) -> str:
        """A record id, unique across replicas (a request's record needs one before its JSON
        is encoded)."""
        return self._ids.new()

    def queue(self, record: UsageRecord, line: bytes | None = None) -> None:
        """Queue a record that nothing changes any more (`line`: its JSON, if encoded); never
        waits, never fails. It runs at the end of every request, so it only appends."""
        if self._backlog >= self._settings.buffer_records:
            self._make_room()
        if not self._pending:
            self._wake.set()  # the writer may be waiting for the first record
        self._pending.append((record, line))
        self._backlog += 1

    def lost(self, request_id: str, user: str | None) -> None:
        """A request's record could not be built (a bug, logged with the request's line): count
        it and say whose it was."""
        self._dropped(request_id, user, error="unbuildable")

    def _take(self) -> None:
        """Batch the records queued since the last take, each batch next in this writer's
        order (the last batch, if never sent and not full, takes more first: while Redis is
        away this runs every 0.1 s); a record gets its id here unless it has one (a
        request's, an orphan's)."""
        pending, self._pending = self._pending, []
        closed = self._closed
        if closed and not closed[-1].tried and len(closed[-1]) < self._per_batch:
            batch = closed.pop()  # keeps its number: no later one exists, Redis never saw it
        else:
            batch = Batch()
        for record, line in pending:
            if record.checkpointed:
                self._saves.pop(record.id, None)  # its end supersedes progress not yet saved
            elif not record.id:
                record.id, line = self._ids.new(), None
            try:
                batch.add(record, line)
            except Exception:  # a bug (JSON cannot encode it, a token count is not a number)
                self._backlog -= 1
                self._drop(record, error="unencodable", exc_info=True)
                continue
            if len(batch) >= self._per_batch:
                self._close(batch)
                batch = Batch()
        if batch:
            self._close(batch)

    def _close(self, batch: Batch) -> None:
        if not batch.number:
            batch.number = next(self._numbers)
        self._closed.append(batch)

    def _make_room(self) -> None:
        """The buffer is full: drop its oldest batch that was never sent (one sent may be in
        Redis already), each record logged."""
        self._take()
        victim = next((b for b in self._closed if not b.tried), None)
        if victim is None:  # only a batch already sent is held, smaller than the bound
            return
        self._closed.remove(victim)
        self._backlog -= len(victim)
        for record in victim.records():
            self._drop(record, backlog=self._backlog)

    def follow(self, progress: Progress) -> Following:
        """Save a running stream's progress every `ledger.checkpoint_seconds` until
        `unfollow` (it ended): what a replica killed mid-stream leaves behind. `progress(id)`
        is the stream's record so far, to carry `id`. Only a set entry here, on the stream's
        path: the checkpoint task does the rest (when it is due, its record id, its progress);
        a timer per stream cost 1.5 to 3 µs."""
        following = Following(progress)
        self._following.add(following)
        return following

    def unfollow(self, following: Following) -> str:
        """The stream ended: save no more. Its record id if its progress was saved (its own
        record must then carry that id: the two may race), else the empty string."""
        self._following.discard(following)
        return following.record_id

    def save(self, record: UsageRecord) -> None:
        """Keep a running stream's usage so far, to be saved in Redis by the writer."""
        self._saves[record.id] = record
        self._wake.set()

    async def close(self, deadline: float = 10.0) -> None:
        """Stop the writer and write out what is queued, for at most `deadline` seconds."""
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        until = time.monotonic() + deadline
        while time.monotonic() < until:
            self._take()  # also what came in meanwhile (a stream cut just now)
            if not self._closed:
                break
            if not await self._write_batches():
                await asyncio.sleep(0.2)
        if self._backlog:
            self._log.error("ledger_unwritten_at_shutdown", records=self._backlog)

    async def _write_forever(self) -> None:
        failures = 0
        while True:
            if not self._backlog and not self._saves:
                self._wake.clear()
                await self._wake.wait()
            if not self._closed:
                # Let more records come: a write costs about the same for 1 record as for 50,
                # and at a few thousand requests/s, writing each few at once costs more than
                # all the rest of the ledger together.
                await asyncio.sleep(LINGER)
            self._take()
            try:
                if self._saves:
                    await self._write_saves()
                written = await self._write_batches()
            except Exception:  # a bug here must not stop the ledger: say it, keep the records
                self._log.exception("ledger_writer_failed", backlog=self._backlog)
                written = False
            self._metrics.ledger_backlog.set(self._backlog)
            if written:
                failures = 0
                continue
            await self._pause(RETRY_PAUSES[min(failures, len(RETRY_PAUSES) - 1)])
            failures += 1

    async def _pause(self, seconds: float) -> None:
        """Wait before trying Redis again, batching the records of requests that end meanwhile
        (a batch holds only their JSON and sums, less than the records)."""
        until = time.monotonic() + seconds
        while (left := until - time.monotonic()) > 0:
            await asyncio.sleep(min(left, 0.1))
            self._take()

    async def _write_batches(self) -> bool:
        """Write the batches taken, oldest first; False (keeping the rest) when Redis cannot
        take them."""
        settings = self._settings
        retention_s = int(settings.retention_days * 86_400)
        head = [settings.dedupe_seconds, retention_s * 1000, retention_s + 86_400, self._writer]
        # One call at a time, awaited: Redis must apply a writer's numbers in order (it skips
        # any number not above the last applied), and calls of one pipeline may not run in
        # order (after a NOSCRIPT, the refused ones are sent again after the others ran).
        while self._closed:
            batch = self._closed[0]
            refused: str | None = None
            try:
                call = self._packer.call(head, batch)
            except Exception as exc:  # a bug: the batch would stop the ledger forever
                self._log.exception("ledger_batch_unpackable")
                call, refused = None, f"{type(exc).__name__}: {exc}"
            if call is not None:
                batch.tried = True
                try:
                    await self._batch.run_packed(self._script, call)
                except ScriptRefused as exc:  # it would be refused forever
                    refused = str(exc)
                except RedisUnavailable:
                    return False  # unreachable or slow: keep them, retry (writes count once)
                else:
                    self.written += len(batch)
                    self._metrics.ledger_written.inc(len(batch))
            if refused is not None:
                # Redis does not undo a script's writes before its error: some of these
                # may be in the stream already, though each is logged as dropped.
                for record in batch.records():
                    self._drop(record, error=refused[:200])
            # Written, found written, or dropped: only now does it leave the queue (which
            # never drops a batch that was sent: this one is still the oldest).
            self._closed.popleft()
            self._backlog -= len(batch)
        return True

    async def _write_saves(self) -> None:
        """Save running streams' progress; one that fails is not retried: the next is due."""
        saves, self._saves = self._saves, {}
        keys = [*self._keys.ledger_running(), self._keys.ledger_writers()[0]]
        await asyncio.gather(
            *(
                self._batch.run(
                    self._save_script,
                    [*keys, self._keys.ledger_seen(r.id)],  # a late save saves nothing
                    [r.id, self._writer, encode(r)],
                )
                for r in saves.values()
            ),
            return_exceptions=True,
        )

    def _drop(self, record: UsageRecord, **why: Any) -> None:
        self._dropped(record.request_id, record.user, total_tokens=record.total_tokens, **why)

    def _dropped(self, request_id: str, user: str | None, **why: Any) -> None:
        self.dropped += 1
        self._metrics.ledger_dropped.inc()
        self._log.error("ledger_record_dropped", request_id=request_id, user=user, **why)
