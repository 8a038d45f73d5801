"""The usage ledger: one record per request, written to Redis off the request path.

`Ledger.queue` only appends the finished exchange to an in-memory queue: it runs at the end
of every request. A background task takes the queue every 10 ms, builds each exchange's
record, gives it its id, JSON and place in its user's sums, and writes the records in
batches (`lua/ledger_append.lua`: the stream entries and the
sums in one atomic step, exactly once: each batch is numbered in its writer's order and Redis
skips numbers already applied). While Redis cannot take them, batches wait and are retried;
the queue is bounded (`ledger.buffer_records`), and a record that must be dropped is logged.
At shutdown the queue is written out before the process exits.

A replica killed mid-stream cannot write anything: so a stream that runs longer than 3/4 of
`ledger.checkpoint_seconds` has its usage so far saved in Redis, then at that interval
(`lua/ledger_save.lua`), and every replica looks for saves older than `ledger.orphan_seconds`
(`lua/ledger_orphans.lua`) whose writer gave no sign of life for as long: their replica died,
and the last save becomes the record (``end: interrupted``, estimated usage). The stream's own
record, when it ends, removes its save.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import functools
import itertools
import secrets
import time
from collections import deque
from typing import Any

import msgspec

from .exchange import Exchange, elapsed_ms
from .limits import estimate_input_tokens
from .metrics import Metrics
from .redis_keys import RedisKeys
from .redis_store import RedisStore, RedisUnavailable
from .request_ids import RequestIds
from .script_batch import Packed, ScriptBatcher, ScriptRefused, pack
from .settings import LedgerSettings
from .sse import StreamTap
from .usage import Usage

BATCH = 256
"""Records per call of `lua/ledger_append.lua` at most (a quarter of `ledger.buffer_records`
if less): Redis is then busy ~0.4 ms at most."""
LINGER = 0.01
"""Seconds the writer waits after the first new record before it writes."""
RETRY_PAUSES = (0.2, 0.5, 1.0, 2.0, 5.0)


class UsageRecord(msgspec.Struct, omit_defaults=True, gc=False):
    """What one request used, whatever its end. (Not tracked by the garbage collector: it
    holds only text, numbers and a dict of text, never a cycle.)

    Its fields are in the order `_record` passes them."""

    id: str
    """Unique per record: the idempotency key of its write."""
    request_id: str
    time: float
    """Unix time the request arrived."""
    end: str
    """completed, incomplete, failed, rejected, error, client_disconnected or interrupted (the
    stream was cut by its replica's shutdown or death)."""
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
    usage_estimated: bool = False
    """The provider's usage is unknown (the stream was broken off): the tokens are estimated
    from the request's size and the frames streamed, as the quota charged them."""
    checkpointed: bool = False
    """The stream's progress was saved while it ran: another replica may write this record
    (from the save) if this one seems dead, so its write is also checked by id."""

    def day(self) -> str:
        """The UTC day the request arrived, ``YYYY-MM-DD``."""
        return _day(int(self.time // 86_400))


@functools.lru_cache(maxsize=8)
def _day(number: int) -> str:
    """Day `number` since the Unix epoch, ``YYYY-MM-DD`` (records come from a few days)."""
    return time.strftime("%Y-%m-%d", time.gmtime(number * 86_400))


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(UsageRecord)


def encode(record: UsageRecord) -> bytes:
    """The stream entry's `r` field."""
    return _encoder.encode(record)


class Batch:
    """Records written in one call of `lua/ledger_append.lua`, whole or not at all: each
    record's JSON, and the sums they add, summed here as records arrive (per user, day and
    model: at a few thousand requests per second, packing each record's tokens for Redis cost
    more than the rest of the ledger). A record whose progress was saved is kept apart: it
    counts only if no other writer wrote it first, which only Redis can tell."""

    __slots__ = ("lines", "number", "saved", "sums", "tried")

    def __init__(self) -> None:
        self.tried = False
        """Sent at least once: Redis may hold it (a timeout says nothing), so it is never
        dropped to make room."""
        self.number = 0
        """Its place in its writer's order, set when it is closed: Redis skips a number it
        applied already, so a call retried after a timeout counts once."""
        self.lines: list[bytes] = []
        self.sums: dict[tuple[float, str, str | None], list[int]] = {}
        """(day, user, model) -> [requests, input, cached, output, reasoning, total tokens]."""
        self.saved: list[tuple[int, UsageRecord, tuple[float, str, str | None]]] = []
        """(index in `lines`, record, its key in `sums`) of the records whose progress was
        saved."""

    def __len__(self) -> int:
        return len(self.lines)

    def add(self, record: UsageRecord) -> None:
        """Add `record`, or raise leaving the batch as it was (a record that cannot be
        encoded or summed: a bug)."""
        line = _encoder.encode(record)
        key = (record.time // 86_400, record.user or "-", record.model)
        tokens = _tokens(record)
        sum(tokens)  # raises before any change if one is not a number
        found = self.sums.get(key)
        if found is None:
            found = self.sums[key] = [0, 0, 0, 0, 0, 0]
        if record.checkpointed:
            self.saved.append((len(self.lines), record, key))
        else:
            found[0] += 1
            found[1] += tokens[0]
            found[2] += tokens[1]
            found[3] += tokens[2]
            found[4] += tokens[3]
            found[5] += tokens[4]
        self.lines.append(line)

    def records(self) -> list[UsageRecord]:
        """Its records, read back (to say which were dropped)."""
        return [_decoder.decode(line) for line in self.lines]


class Packer:
    """Packs a `Batch` for `lua/ledger_append.lua` (its header describes the layout). What
    repeats from batch to batch (a user's keys and sum fields of a day) is packed once."""

    _KEPT = 4096

    def __init__(self, keys: RedisKeys, retention_days: float) -> None:
        self._keys = keys
        self._kept = int(retention_days * 86_400) + 86_400
        self._head_keys = pack(keys.ledger())
        self._route = keys.ledger_stream()
        self._repeated: dict[tuple[float, str, str | None], tuple[bytes, bytes]] = {}

    def call(self, head: list[Any], batch: Batch) -> Packed:
        """A call's keys and arguments: `head` (`ledger_append.lua`'s ARGV[1..4]), then
        `batch`."""
        blob = b"\n".join(batch.lines)
        keys, args = [self._head_keys], [pack((*head, batch.number, blob, len(batch.sums)))]
        groups = {}
        for group, (key, sums) in enumerate(batch.sums.items(), 1):
            groups[key] = group
            group_keys, group_args = self._group(key)
            keys.append(group_keys)
            args += (group_args, pack(sums))
        for index, record, key in batch.saved:
            keys.append(pack((self._keys.ledger_seen(record.id),)))
            args.append(pack((index + 1, record.id, groups[key], *_tokens(record))))
        n_keys = 4 + 2 * len(batch.sums) + len(batch.saved)
        n_args = 7 + 9 * len(batch.sums) + 8 * len(batch.saved)
        return Packed(n_keys, n_keys + n_args, b"".join(keys) + b"".join(args), self._route)

    def _group(self, key: tuple[float, str, str | None]) -> tuple[bytes, bytes]:
        found = self._repeated.get(key)
        if found is None:
            if len(self._repeated) >= self._KEPT:
                self._repeated.clear()
            number, user, model = key
            day = _day(int(number))
            keys = pack((self._keys.ledger_users(day), self._keys.ledger_user_month(user, day[:7])))
            found = keys, pack((user, f"{day}\t{model or '-'}\t", _month_end(day) + self._kept))
            self._repeated[key] = found
        return found


def _tokens(record: UsageRecord) -> tuple[int, ...]:
    return (
        record.input_tokens,
        record.cached_input_tokens,
        record.output_tokens,
        record.reasoning_tokens,
        record.total_tokens,
    )


def _month_end(day: str) -> int:
    """Unix time of the end of the month of `day` (``YYYY-MM-DD``)."""
    year, month = int(day[:4]), int(day[5:7])
    year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return calendar.timegm((year, month, 1, 0, 0, 0, 0, 0, 0))


def record_of(ex: Exchange) -> UsageRecord:
    """The ledger record of a finished exchange (its latency and time to first token are its
    log line's: the same function of the same times)."""
    outcome = ex.outcome
    usage = outcome.usage if outcome is not None else None
    latency = elapsed_ms(ex.started, ex.ended)
    ttft = elapsed_ms(ex.started, ex.first_token_at)
    record = _record(ex, ex.end(), latency, ttft, usage or _NO_USAGE)
    if outcome is not None and usage is not None:
        record.response_id = outcome.response_id
    elif ex.partly_delivered:
        _estimate(record, ex, ex.output_estimate)
    record.checkpointed = ex.checkpointed
    return record


_NO_USAGE = Usage()


def progress_of(ex: Exchange, frames: int, first_token_at: float | None) -> UsageRecord:
    """A running stream's usage so far, as the record to write should its replica die; `ex`
    is marked as saved (its own record may then race the one written from the save)."""
    latency = elapsed_ms(ex.started, time.perf_counter())
    ttft = elapsed_ms(ex.started, first_token_at)
    record = _record(ex, "interrupted", latency, ttft, _NO_USAGE)
    _estimate(record, ex, frames)
    record.checkpointed = ex.checkpointed = True
    return record


def _record(
    ex: Exchange, end: str, latency_ms: float | None, ttft_ms: float | None, usage: Usage
) -> UsageRecord:
    # Positional: msgspec matches keyword arguments by name, ten times slower per record.
    return UsageRecord(
        ex.record_id,
        ex.request_id,
        round(ex.arrived * 1000) / 1000,  # ms: faster than round(x, 3)
        end,
        ex.status,
        ex.stream,
        ex.caller,
        ex.key_id,
        ex.team,
        ex.model if ex.provider is not None else None,  # a served model, never any text
        ex.provider,
        ex.upstream_model,
        usage.input_tokens,
        usage.cached_input_tokens,
        usage.output_tokens,
        usage.reasoning_tokens,
        usage.total_tokens,
        latency_ms,
        ttft_ms,
        ex.user,  # the request's own `user` field
        ex.metadata,
    )


def _estimate(record: UsageRecord, ex: Exchange, output_tokens: int) -> None:
    record.input_tokens = estimate_input_tokens(ex.body_size)
    record.output_tokens = output_tokens
    record.total_tokens = record.input_tokens + output_tokens
    record.usage_estimated = True


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
        self._pending: list[Exchange | UsageRecord] = []
        """Finished exchanges and records queued since the writer last took them (it builds
        each exchange's record and gives records their ids, JSON and sums: not on the
        request's path)."""
        self._built: list[UsageRecord] = []
        """Records built from `_pending` while Redis is away, not yet batched."""
        self._ids = RequestIds()
        self._closed: deque[Batch] = deque()
        """Batches taken but not yet written, oldest first."""
        self._per_batch = min(BATCH, settings.buffer_records // 4)
        self._backlog = 0
        self._numbers = itertools.count(1)
        self._writer = secrets.token_hex(8)
        """This process's writer id: Redis keeps the last batch number it applied."""
        self._following: dict[int, tuple[Exchange, StreamTap]] = {}
        """Running streams (by the id of their exchange), with what they streamed so far."""
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
            loop.create_task(self._adopt_orphans_forever()),
            loop.create_task(self._checkpoint_forever()),
        ]

    def queue(self, item: Exchange | UsageRecord) -> None:
        """Queue a finished exchange (which nothing changes any more) or a record (an
        orphan's); never waits, never fails. It runs at the end of every request, so it only
        appends: the writer builds the record (building it here cost ~2.5 µs per request in
        the running process, see README, Performance)."""
        if self._backlog >= self._settings.buffer_records:
            self._make_room()
        if not self._pending:
            self._wake.set()  # the writer may be waiting for the first record
        self._pending.append(item)
        self._backlog += 1

    def _take(self) -> None:
        """Batch the records queued since the last take, each batch next in this writer's
        order; a record gets its id here unless it has one (a stream's, an orphan's)."""
        self._build()
        records, self._built = self._built, []
        batch = Batch()
        for record in records:
            if record.id:
                self._saves.pop(record.id, None)  # its end supersedes progress not yet saved
            else:
                record.id = self._ids.new()
            try:
                batch.add(record)
            except Exception:  # a bug (a record JSON cannot encode): drop it, say so, go on
                self._backlog -= 1
                self._drop(record, error="unencodable", exc_info=True)
                continue
            if len(batch) >= self._per_batch:
                self._close(batch)
                batch = Batch()
        if batch:
            self._close(batch)

    def _build(self) -> None:
        """Build the records of the exchanges queued (an exchange holds more memory than its
        record: while Redis is away, this runs every 0.1 s and the buffer's bound holds)."""
        pending, self._pending = self._pending, []
        built = self._built
        for item in pending:
            if isinstance(item, UsageRecord):
                built.append(item)
                continue
            try:
                built.append(record_of(item))
            except Exception:  # a bug: say which request's record is lost, go on
                self._backlog -= 1
                self._unbuildable(item)

    def _close(self, batch: Batch) -> None:
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

    def follow(self, ex: Exchange, tap: StreamTap) -> None:
        """Save the stream's progress every `ledger.checkpoint_seconds` until `unfollow(ex)`
        (it ended): what a replica killed mid-stream leaves behind. Only a dict entry here,
        on the stream's path: the checkpoint task does the rest (when it is due, its record
        id, its progress); a timer per stream cost 1.5 to 3 µs."""
        self._following[id(ex)] = (ex, tap)

    def unfollow(self, ex: Exchange) -> None:
        self._following.pop(id(ex), None)

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
        """Wait before trying Redis again, building the records of requests that end
        meanwhile."""
        until = time.monotonic() + seconds
        while (left := until - time.monotonic()) > 0:
            await asyncio.sleep(min(left, 0.1))
            self._build()

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

    async def _checkpoint_forever(self) -> None:
        """Every quarter of `ledger.checkpoint_seconds`, take the progress of each stream that
        is due, for the writer to save: a stream is first due 3/4 to 4/4 of the interval after
        it started (it was first seen here within a quarter of its start), then every
        interval. A stream gets its record id at its first save (its record must carry it)."""
        every = self._settings.checkpoint_seconds
        due: dict[int, tuple[Exchange, float]] = {}
        while True:
            await asyncio.sleep(every / 4)
            now, following = time.monotonic(), self._following
            for key, (ex, _) in list(due.items()):
                if key not in following or following[key][0] is not ex:
                    del due[key]  # ended (its id may now be another exchange's)
            for key, (ex, tap) in following.items():
                seen = due.get(key)
                if seen is None:
                    due[key] = (ex, now + every * 0.75)
                    continue
                if seen[1] > now:
                    continue
                due[key] = (ex, now + every)
                try:
                    if not ex.record_id:
                        ex.record_id = self._ids.new()
                    self.save(progress_of(ex, tap.frames, tap.first_token_at))
                except Exception:  # a bug here must not stop the others' checkpoints
                    self._log.exception("ledger_checkpoint_failed")

    async def _adopt_orphans_forever(self) -> None:
        """Write the records of streams whose replica died (its saves stopped)."""
        settings = self._settings
        orphan_ms, dedupe_ms = int(settings.orphan_seconds * 1000), settings.dedupe_seconds * 1000
        args = [orphan_ms, 100, self._writer, dedupe_ms]
        keys = [
            *self._keys.ledger_running(),
            *self._keys.ledger_writers(),
            self._keys.ledger_applied(),
        ]
        while True:
            await asyncio.sleep(settings.orphan_seconds / 3)
            try:
                found = await self._batch.run(self._orphans_script, keys, args)
            except RedisUnavailable:  # logged by the store; the next round tries again
                continue
            for i in range(0, len(found), 2):
                try:
                    record = _decoder.decode(found[i + 1])
                except msgspec.DecodeError:  # not a record this version can read: say so
                    self._log.error("ledger_orphan_unreadable", id=found[i].decode())
                    continue
                self._log.warning(
                    "ledger_orphan_recorded",
                    request_id=record.request_id,
                    user=record.user,
                    output_tokens=record.output_tokens,
                )
                self.queue(record)

    def _unbuildable(self, ex: Exchange) -> None:
        self.dropped += 1
        self._metrics.ledger_dropped.inc()
        self._log.exception(
            "ledger_record_dropped", request_id=ex.request_id, user=ex.caller, error="unbuildable"
        )

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
