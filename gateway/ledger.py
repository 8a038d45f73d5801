"""The usage ledger: one record per request, written to Redis off the request path.

`Ledger.record` only appends to an in-memory queue; a background task writes the queue in
batches (`lua/ledger_append.lua`: the stream entry and the sums in one atomic step, exactly
once: each record is numbered in its writer's order and Redis skips numbers already applied).
While Redis cannot take them, records wait and are retried; the queue is bounded
(`ledger.buffer_records`), and a record that must be dropped is logged. At shutdown the queue
is written out before the process exits.

A replica killed mid-stream cannot write anything: so a stream that runs longer than
`ledger.checkpoint_seconds` has its usage so far saved in Redis at that interval
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
from collections.abc import Callable
from typing import Any

import msgspec

from .exchange import Exchange, elapsed_ms
from .limits import estimate_input_tokens
from .metrics import Metrics
from .redis_keys import RedisKeys
from .redis_store import RedisStore, RedisUnavailable
from .script_batch import Packed, ScriptBatcher, ScriptRefused, pack
from .settings import LedgerSettings

BATCH = 256
PER_CALL = 32
"""Records per call of `lua/ledger_append.lua`: few replies, and Redis busy ~0.3 ms at most."""
LINGER = 0.01
"""Seconds the writer waits after the first new record before it writes."""
RETRY_PAUSES = (0.2, 0.5, 1.0, 2.0, 5.0)


class UsageRecord(msgspec.Struct, omit_defaults=True):
    """What one request used, whatever its end."""

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


class Packer:
    """Packs records for `lua/ledger_append.lua`, each as its keys — its id's marker (used
    only when its progress was saved), the users of its day, its user's sums of the month —
    and its arguments: its number in its writer's order, id, JSON, tokens (input, cached,
    output, reasoning, total: the script then need not decode the JSON), user, its sum
    fields' prefix (``day TAB model TAB``), when its month's sums expire (the month's end +
    `retention_days` + a day), and "1" when its progress was saved (else "").

    What repeats from record to record (a user's keys of a day) is packed once: at a few
    thousand requests per second, packing was most of what the ledger cost."""

    _KEPT = 4096

    def __init__(self, keys: RedisKeys, retention_days: float) -> None:
        self._keys = keys
        self._kept = int(retention_days * 86_400) + 86_400
        self._head_keys = pack(keys.ledger())
        self._route = keys.ledger_stream()
        self._no_marker = pack((keys.ledger_seen("-"),))
        """Passed in the marker's place for a record that needs none."""
        self._saved, self._not_saved = pack(("1",)), pack(("",))
        self._repeated: dict[tuple[str, str, str | None], tuple[bytes, bytes]] = {}

    def chunk(self, head: list[Any], records: list[tuple[int, UsageRecord]]) -> Packed:
        """A call's keys and arguments: `head` (`ledger_append.lua`'s ARGV[1..4]), then
        `records` with their numbers."""
        keys, args = [self._head_keys], [pack(head)]
        for number, record in records:
            user_keys, user_args = self._user(record)
            if record.checkpointed:
                marker, saved = pack((self._keys.ledger_seen(record.id),)), self._saved
            else:
                marker, saved = self._no_marker, self._not_saved
            keys += (marker, user_keys)
            tokens = (
                f"{record.input_tokens} {record.cached_input_tokens} {record.output_tokens} "
                f"{record.reasoning_tokens} {record.total_tokens}"
            )
            args += (pack((number, record.id, encode(record), tokens)), user_args, saved)
        n = len(records)
        return Packed(4 + 3 * n, 8 + 11 * n, b"".join(keys) + b"".join(args), self._route)

    def _user(self, record: UsageRecord) -> tuple[bytes, bytes]:
        day, user = record.day(), record.user or "-"
        found = self._repeated.get((day, user, record.model))
        if found is None:
            if len(self._repeated) >= self._KEPT:
                self._repeated.clear()
            keys = pack((self._keys.ledger_users(day), self._keys.ledger_user_month(user, day[:7])))
            expires = _month_end(day) + self._kept
            found = keys, pack((user, f"{day}\t{record.model or '-'}\t", expires))
            self._repeated[(day, user, record.model)] = found
        return found


def _month_end(day: str) -> int:
    """Unix time of the end of the month of `day` (``YYYY-MM-DD``)."""
    year, month = int(day[:4]), int(day[5:7])
    year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return calendar.timegm((year, month, 1, 0, 0, 0, 0, 0, 0))


def record_of(ex: Exchange, log: dict[str, Any]) -> UsageRecord:
    """The ledger record of a finished exchange; `log`: its canonical log line's fields."""
    record = _record(ex, ex.end(), log["latency_ms"], log["ttft_ms"])
    usage = ex.outcome.usage if ex.outcome is not None else None
    if usage is not None:
        record.input_tokens = usage.input_tokens
        record.cached_input_tokens = usage.cached_input_tokens
        record.output_tokens = usage.output_tokens
        record.reasoning_tokens = usage.reasoning_tokens
        record.total_tokens = usage.total_tokens
        record.response_id = ex.outcome.response_id if ex.outcome is not None else None
    elif ex.partly_delivered:
        _estimate(record, ex, ex.output_estimate)
    record.checkpointed = ex.checkpointed
    return record


def progress_of(ex: Exchange, frames: int, first_token_at: float | None) -> UsageRecord:
    """A running stream's usage so far, as the record to write should its replica die; `ex`
    is marked as saved (its own record may then race the one written from the save)."""
    latency = elapsed_ms(ex.started, time.perf_counter())
    record = _record(ex, "interrupted", latency, elapsed_ms(ex.started, first_token_at))
    _estimate(record, ex, frames)
    record.checkpointed = ex.checkpointed = True
    return record


def _record(ex: Exchange, end: str, latency_ms: float | None, ttft_ms: float | None) -> UsageRecord:
    return UsageRecord(
        id=ex.record_id,
        request_id=ex.request_id,
        time=round(ex.arrived, 3),
        end=end,
        status=ex.status,
        stream=ex.stream,
        user=ex.caller,
        key_id=ex.key_id,
        team=ex.team,
        model=ex.model if ex.provider is not None else None,  # a served model, never any text
        provider=ex.provider,
        upstream_model=ex.upstream_model,
        latency_ms=latency_ms,
        ttft_ms=ttft_ms,
        request_user=ex.user,
        metadata=ex.metadata,
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
        self._queue: deque[tuple[int, UsageRecord]] = deque()
        """Records not yet written, with their numbers in this writer's order."""
        self._numbers = itertools.count(1)
        self._writer = secrets.token_hex(8)
        """This process's writer id: Redis keeps the last record number it applied."""
        self._following: dict[str, list[Any]] = {}
        """Running streams by record id: [when their progress is next due, progress()]."""
        self._saves: dict[str, UsageRecord] = {}
        """Running streams' usage so far, not yet saved (the latest of each)."""
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.written = 0
        self.dropped = 0

    @property
    def backlog(self) -> int:
        """Records waiting to be written."""
        return len(self._queue)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._write_forever()),
            loop.create_task(self._adopt_orphans_forever()),
            loop.create_task(self._checkpoint_forever()),
        ]

    def record(self, record: UsageRecord) -> None:
        """Queue a record; never waits, never fails."""
        self._saves.pop(record.id, None)  # the end supersedes any progress not yet saved
        if len(self._queue) >= self._settings.buffer_records:
            self._drop(self._queue.popleft()[1], backlog=len(self._queue))
        self._queue.append((next(self._numbers), record))
        self._wake.set()

    def follow(self, record_id: str, progress: Callable[[], UsageRecord]) -> None:
        """Save `progress()` every `ledger.checkpoint_seconds` until `unfollow(record_id)`
        (the stream ended): what a replica killed mid-stream leaves behind. One task checks
        every stream: a timer each (uvloop's call_later + cancel) cost 1.5 to 3 µs a stream."""
        due = time.monotonic() + self._settings.checkpoint_seconds
        self._following[record_id] = [due, progress]

    def unfollow(self, record_id: str) -> None:
        self._following.pop(record_id, None)

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
        while self._queue and time.monotonic() < until:
            if not await self._write_batch():
                await asyncio.sleep(0.2)
        if self._queue:
            self._log.error("ledger_unwritten_at_shutdown", records=len(self._queue))

    async def _write_forever(self) -> None:
        failures = 0
        while True:
            if not self._queue and not self._saves:
                self._wake.clear()
                await self._wake.wait()
            if len(self._queue) < BATCH:
                # Let more records come: a write costs about the same for 1 record as for 30,
                # and at a few thousand requests/s, writing each few at once costs more than
                # all the rest of the ledger together.
                await asyncio.sleep(LINGER)
            try:
                if self._saves:
                    await self._write_saves()
                written = await self._write_batch()
            except Exception:  # a bug here must not stop the ledger: say it, keep the records
                self._log.exception("ledger_writer_failed", backlog=len(self._queue))
                written = False
            self._metrics.ledger_backlog.set(len(self._queue))
            if written:
                failures = 0
                continue
            await asyncio.sleep(RETRY_PAUSES[min(failures, len(RETRY_PAUSES) - 1)])
            failures += 1

    async def _write_batch(self) -> bool:
        """Write the oldest records; False (keeping them queued) when Redis cannot take them."""
        batch = [self._queue[i] for i in range(min(BATCH, len(self._queue)))]
        if not batch:
            return True
        settings = self._settings
        retention_s = int(settings.retention_days * 86_400)
        head = [settings.dedupe_seconds, retention_s * 1000, retention_s + 86_400, self._writer]
        # One call at a time, awaited: Redis must apply a writer's numbers in order (it skips
        # any number not above the last applied), and calls of one pipeline may not run in
        # order (after a NOSCRIPT, the refused ones are sent again after the others ran).
        for start in range(0, len(batch), PER_CALL):
            chunk = batch[start : start + PER_CALL]
            try:
                await self._batch.run_packed(self._script, self._packer.chunk(head, chunk))
            except ScriptRefused as exc:  # it would be refused forever
                for _, record in chunk:
                    self._drop(record, error=str(exc)[:200])
            except RedisUnavailable:
                return False  # unreachable or slow: keep them, retry (writes count once)
            else:
                self.written += len(chunk)
                self._metrics.ledger_written.inc(len(chunk))
            # Written, found written, or dropped: only now do they leave the queue. The queue
            # may have dropped its oldest meanwhile (full), so leave by number, not by count.
            last = chunk[-1][0]
            while self._queue and self._queue[0][0] <= last:
                self._queue.popleft()
        return True

    async def _write_saves(self) -> None:
        """Save running streams' progress; one that fails is not retried: the next is due."""
        saves, self._saves = self._saves, {}
        keys = [*self._keys.ledger_running(), self._keys.ledger_writers()[0]]
        await asyncio.gather(
            *(
                self._batch.run(self._save_script, keys, [r.id, self._writer, encode(r)])
                for r in saves.values()
            ),
            return_exceptions=True,
        )

    async def _checkpoint_forever(self) -> None:
        """Take the progress of each stream that is due (at most a quarter of the interval
        late), for the writer to save."""
        every = self._settings.checkpoint_seconds
        while True:
            await asyncio.sleep(every / 4)
            now = time.monotonic()
            for following in self._following.values():
                if following[0] <= now:
                    following[0] = now + every
                    try:
                        self.save(following[1]())
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
                self.record(record)

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
